"""The stack (deploy/compose.yaml) on a real two-node Docker Swarm on this
machine: `make stack` deploys two releases' images in turn, behind the edge,
on a swarm of the project's own (deploy/swarm/nodes: a manager dockerd, and a
worker dockerd in a network namespace of its own). Under a wrk load through
the edge, a rolling update to a new release, a rollback, a replica killed and
the worker node's death must each fail no request; an update whose model
fails its check must never reach the edge's rotation, and roll back by
itself.

The swarm gets addresses, interfaces and ports apart from a `make stack` of
the user's (SWARM_NET, SWARM_IF, SWARM_PORT, SWARM_DATA_PORT). Images come
from the tests' podman store (tests/containers.py). The figures measured
(requests, p99) are printed (pytest -s)."""

import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import requests

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.settings import APP_NAME
from tests.conftest import FAST_PARAMS, PROJECT, make, needs
from tests.containers import build_lock, engine_environment
from tests.processes import free_port
from tests.wrk import run_wrk, write_wrk_script

pytestmark = [pytest.mark.model, pytest.mark.container]

NODES = PROJECT / "deploy" / "swarm" / "nodes"
STACK = "diabetes-test"
IMAGE = f"{APP_NAME}-stack-test"
WORKER = "stackworker"
SWARM_SETTINGS = {"SWARM_NET": "10.233", "SWARM_IF": "dstest", "SWARM_PORT": "2387", "SWARM_DATA_PORT": "4799"}
# wrk's connections through the edge: enough to keep every replica busy.
CONNECTIONS = 8
FIGURES = {}


def swarm_environment(swarm_dir: Path, **settings) -> dict:
    return engine_environment(SWARM_DIR=str(swarm_dir), **SWARM_SETTINGS, **settings)


def nodes(swarm_dir: Path, *arguments, timeout=300) -> str:
    result = subprocess.run(
        [str(NODES), str(swarm_dir), *arguments],
        env=swarm_environment(swarm_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        pytest.fail(
            f"deploy/swarm/nodes {' '.join(arguments)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result.stdout


def docker(stack, *arguments, check=True, timeout=120) -> str:
    result = subprocess.run(
        ["docker", *arguments],
        env={**swarm_environment(stack["swarm_dir"]), "DOCKER_HOST": stack["docker_host"]},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(f"docker {' '.join(arguments)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


@pytest.fixture(scope="module")
@needs("container")
def swarm():
    """The manager and one worker node; everything of theirs gone on the way out."""
    swarm_dir = Path(tempfile.mkdtemp(prefix="swarm-", dir="/tmp"))
    try:
        started = time.monotonic()
        docker_host = nodes(swarm_dir, "up").strip().splitlines()[-1].removeprefix("DOCKER_HOST=")
        nodes(swarm_dir, "add", WORKER)
        FIGURES["two-node swarm up (s)"] = round(time.monotonic() - started, 1)
        yield {"swarm_dir": swarm_dir, "docker_host": docker_host}
    finally:
        subprocess.run([str(NODES), str(swarm_dir), "down"], env=swarm_environment(swarm_dir), timeout=300)
        shutil.rmtree(swarm_dir, ignore_errors=True)
        print("\nstack figures:", json.dumps(FIGURES))


@pytest.fixture(scope="module")
def stack_workspace(trained, tmp_path_factory) -> Path:
    """A copy of the fast run's models, with releases of their own beside them."""
    workspace = tmp_path_factory.mktemp("stack")
    shutil.copytree(trained["models_dir"], workspace / "models", symlinks=True)
    return workspace


def make_variables(workspace: Path, port: int, replicas: int, train_params: str = FAST_PARAMS) -> list[str]:
    return [
        f"MODELS_DIR={workspace / 'models'}",
        f"RUNS_DIR={workspace / 'runs'}",
        f"SCRIPTS_DIR={workspace / 'scripts'}",
        f"PM2_HOME={workspace / 'pm2'}",
        f"TRAIN_PARAMS={train_params}",
        f"IMAGE={IMAGE}",
        f"STACK={STACK}",
        f"STACK_PORT={port}",
        f"REPLICAS={replicas}",
    ]


def make_stack(swarm, workspace, port, train_params=FAST_PARAMS, replicas=2) -> float:
    """`make stack` on the tests' swarm; its seconds."""
    started = time.monotonic()
    with build_lock():
        make(
            "stack",
            *make_variables(workspace, port, replicas, train_params),
            f"SWARM_DIR={swarm['swarm_dir']}",
            env=swarm_environment(swarm["swarm_dir"]),
            timeout=900,
        )
    return time.monotonic() - started


def current_release(workspace: Path) -> str:
    return (workspace / "releases" / "current").resolve().name


def model_of(workspace: Path, release: str) -> str:
    return json.loads((workspace / "releases" / release / "manifest.json").read_text())["model_version"]


@pytest.fixture(scope="module")
def stack(swarm, stack_workspace):
    """The first release's image as a stack of two replicas, one per node."""
    port = free_port()
    FIGURES["make stack, first (s)"] = round(make_stack(swarm, stack_workspace, port), 1)
    release = current_release(stack_workspace)
    yield {
        **swarm,
        "workspace": stack_workspace,
        "port": port,
        "url": f"http://127.0.0.1:{port}",
        "releases": [release],
    }


def replicas(stack) -> list[dict]:
    listing = docker(
        stack,
        "service",
        "ps",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        "--format",
        "{{json .}}",
        f"{STACK}_api",
    )
    return [json.loads(line) for line in listing.splitlines()]


# How long the load goes on once the action is over: the stack as the action
# left it answers too.
LOAD_AFTER_ACTION_SECONDS = 5


def load_during(stack, tmp_path, figure: str, action, seconds: int) -> dict:
    """A wrk load of the article's call through the edge, with `action` run
    two seconds in, until a few seconds after it is over; the action must be
    over within `seconds`, the longest the load lasts."""
    script = write_wrk_script(tmp_path / "article.lua", ARTICLE_BODY)
    outcome = {}
    action_over = threading.Event()

    def act():
        time.sleep(2)
        started = time.monotonic()
        try:
            outcome["result"] = action()
        except BaseException as error:  # reported below, in the test's thread
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started
        time.sleep(LOAD_AFTER_ACTION_SECONDS)
        action_over.set()

    acting = threading.Thread(target=act)
    acting.start()
    result = run_wrk(stack["url"] + ARTICLE_PATH, script, connections=CONNECTIONS, seconds=seconds, until=action_over)
    acting.join(timeout=60)
    if "error" in outcome:
        raise outcome["error"]
    assert "seconds" in outcome and outcome["seconds"] < seconds - 2 - LOAD_AFTER_ACTION_SECONDS, (
        f"{figure} outlasted the load: {outcome}"
    )
    FIGURES[figure] = {
        "requests": result["requests"],
        "errors": sum(result["errors"].values()),
        "p99_ms": round(result["p99_ms"], 1),
        "action_s": round(outcome["seconds"], 1),
    }
    return result


def test_the_replicas_run_on_both_nodes_and_answer_through_the_edge(stack):
    running = replicas(stack)
    assert len(running) == 2
    assert len({replica["Node"] for replica in running}) == 2, running
    answer = requests.post(stack["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Model-Version"] == model_of(stack["workspace"], stack["releases"][0])


def test_make_stack_status_names_each_replica_its_node_release_and_model(stack):
    output = make(
        "stack-status",
        f"STACK={STACK}",
        env={**swarm_environment(stack["swarm_dir"]), "DOCKER_HOST": stack["docker_host"]},
    ).stdout
    release = stack["releases"][0]
    lines = [line for line in output.splitlines() if line.startswith(f"{STACK}_api.")]
    assert len(lines) == 2, output
    assert all(release in line and model_of(stack["workspace"], release) in line for line in lines), output
    assert len([line for line in output.splitlines() if line.startswith("edge sees replica") and "UP" in line]) == 2


def edge_view(stack) -> list[dict]:
    """The edge's replicas: address, status, last check (deploy/stack.py edge)."""
    listing = subprocess.run(
        [str(PROJECT / ".venv" / "bin" / "python"), str(PROJECT / "deploy" / "stack.py"), "edge", STACK],
        env={**swarm_environment(stack["swarm_dir"]), "DOCKER_HOST": stack["docker_host"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [json.loads(line) for line in listing.splitlines()]


def test_a_stopping_replica_leaves_the_edges_rotation_on_its_readiness_503_while_it_still_answers(stack):
    [replica] = [replica for replica in wait_for_replicas(stack, 2) if replica["Node"] != WORKER][:1]
    container = f"{replica['Name']}.{replica['ID']}"
    address = docker(
        stack, "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", container
    ).split()
    stopping = threading.Thread(target=lambda: docker(stack, "stop", "--time", "30", container, timeout=60))
    stopping.start()
    seen = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and stopping.is_alive():
        seen += [server for server in edge_view(stack) if server["address"].split(":")[0] in address]
        if any(server["status"] == "DOWN" and server["code"] == "503" for server in seen):
            break
    stopping.join(timeout=60)
    assert any(server["status"] == "DOWN" and server["code"] == "503" for server in seen), seen
    wait_for_replicas(stack, 2)


def test_a_rolling_update_to_a_new_release_fails_no_request(stack, tmp_path):
    # The new release: a model trained with another seed, its release and image.
    params = stack["workspace"] / "other-seed.yaml"
    params.write_text("seed: 1\n")
    train_params = f"{FAST_PARAMS} {params}"
    started = time.monotonic()
    with build_lock():
        make(
            "image",
            *make_variables(stack["workspace"], stack["port"], 2, train_params),
            env=swarm_environment(stack["swarm_dir"]),
            timeout=900,
        )
    FIGURES["new release and its image (s)"] = round(time.monotonic() - started, 1)
    result = load_during(
        stack,
        tmp_path,
        "rolling update under load",
        lambda: make_stack(stack, stack["workspace"], stack["port"], train_params),
        seconds=100,
    )
    new_release = current_release(stack["workspace"])
    assert new_release != stack["releases"][0]
    stack["releases"].append(new_release)
    assert result["requests"] > 500 and not any(result["errors"].values()), result
    versions = {
        requests.post(stack["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10).headers["X-Model-Version"]
        for _ in range(20)
    }
    assert versions == {model_of(stack["workspace"], new_release)}


def test_a_rollback_fails_no_request(stack, tmp_path):
    result = load_during(
        stack,
        tmp_path,
        "rollback under load",
        lambda: docker(stack, "service", "rollback", f"{STACK}_api", timeout=300),
        seconds=70,
    )
    assert result["requests"] > 500 and not any(result["errors"].values()), result
    versions = {
        requests.post(stack["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10).headers["X-Model-Version"]
        for _ in range(20)
    }
    assert versions == {model_of(stack["workspace"], stack["releases"][0])}


def wait_for_replicas(stack, count: int, timeout: float = 120, gone=lambda replica: False) -> list[dict]:
    """The running replicas, once there are `count` and none of them is `gone`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [replica for replica in replicas(stack) if replica["CurrentState"].startswith("Running")]
        if len(running) == count and not any(gone(replica) for replica in running):
            return running
        time.sleep(1)
    pytest.fail(f"not {count} replicas running, as wanted, within {timeout} s: {replicas(stack)}")


def test_a_replica_killed_under_load_fails_no_request_and_is_replaced(stack, tmp_path):
    replica = wait_for_replicas(stack, 2)[0]
    # `docker kill` on the node that runs it.
    on_node = {**stack, "docker_host": stack["docker_host"]}
    if replica["Node"] == WORKER:
        on_node["docker_host"] = nodes(stack["swarm_dir"], "host", WORKER).strip()
    container = f"{replica['Name']}.{replica['ID']}"

    def kill_it_and_wait_for_its_replacement():
        docker(on_node, "kill", container)
        return wait_for_replicas(stack, 2, gone=lambda running: running["ID"] == replica["ID"])

    result = load_during(
        stack, tmp_path, "docker kill of a replica under load", kill_it_and_wait_for_its_replacement, seconds=130
    )
    assert result["requests"] > 500 and not any(result["errors"].values()), result
    assert replica["ID"] not in {replica["ID"] for replica in wait_for_replicas(stack, 2)}


def update_rolled_back(stack, *changes: str, timeout: float = 300) -> str:
    """`docker service update` of the replicas, then its state once Swarm is
    done with it: its rollback over, or whatever it stopped in otherwise."""
    docker(stack, "service", "update", *changes, f"{STACK}_api", check=False, timeout=400)
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(docker(stack, "service", "inspect", f"{STACK}_api"))[0].get("UpdateStatus", {}).get("State")
        if state not in ("updating", "rollback_started") or time.monotonic() > deadline:
            return state
        time.sleep(1)


def test_an_update_whose_model_fails_its_check_never_serves_and_rolls_back_by_itself(stack, tmp_path):
    before = {replica["ID"] for replica in wait_for_replicas(stack, 2)}
    result = load_during(
        stack,
        tmp_path,
        "update to a failing model under load",
        lambda: update_rolled_back(stack, "--env-add", "DIABETES_MODEL_DIR=/app/no-such-model"),
        seconds=130,
    )
    assert result["requests"] > 500 and not any(result["errors"].values()), result
    inspected = json.loads(docker(stack, "service", "inspect", f"{STACK}_api"))[0]
    assert inspected["UpdateStatus"]["State"] == "rollback_completed", inspected["UpdateStatus"]
    environment = inspected["Spec"]["TaskTemplate"]["ContainerSpec"].get("Env", [])
    assert not any(variable.startswith("DIABETES_MODEL_DIR=") for variable in environment)
    assert {replica["ID"] for replica in wait_for_replicas(stack, 2)} == before


def test_the_worker_nodes_death_under_load_fails_no_request_and_its_replica_moves(stack, tmp_path):
    on_worker = [replica for replica in wait_for_replicas(stack, 2) if replica["Node"] == WORKER]
    assert on_worker, "no replica on the worker node"

    def kill_the_worker_and_wait_for_its_replica_to_move():
        nodes(stack["swarm_dir"], "kill", WORKER)
        return wait_for_replicas(stack, 2, timeout=180, gone=lambda replica: replica["Node"] == WORKER)

    result = load_during(
        stack, tmp_path, "worker node killed under load", kill_the_worker_and_wait_for_its_replica_to_move, seconds=200
    )
    assert result["requests"] > 500 and not any(result["errors"].values()), result
    assert WORKER not in {replica["Node"] for replica in wait_for_replicas(stack, 2)}


def test_the_same_compose_file_runs_with_docker_compose_on_one_host(stack):
    """docker-compose (no swarm): the same file, the replicas scaled by hand,
    the edge in front of them on a port of the host."""
    port = free_port()
    image = f"{IMAGE}:{stack['releases'][0]}"
    environment = {
        **swarm_environment(stack["swarm_dir"]),
        "DOCKER_HOST": stack["docker_host"],
        "IMAGE": image,
        "EDGE_IMAGE": image,
        "PORT": str(port),
    }
    compose = ["docker-compose", "--project-name", "composetest", "--file", str(PROJECT / "deploy" / "compose.yaml")]

    def run(*arguments, timeout=180):
        result = subprocess.run(
            [*compose, *arguments], env=environment, capture_output=True, text=True, timeout=timeout
        )
        assert result.returncode == 0, f"docker-compose {' '.join(arguments)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    try:
        run("up", "--detach", "--scale", "api=2")
        deadline = time.monotonic() + 90
        versions = set()
        while time.monotonic() < deadline and len(versions) == 0:
            try:
                answer = requests.post(f"http://127.0.0.1:{port}{ARTICLE_PATH}", json=ARTICLE_BODY, timeout=5)
                if answer.status_code == 200:
                    versions.add(answer.headers["X-Model-Version"])
            except requests.RequestException:
                pass
            time.sleep(0.5)
        assert versions == {model_of(stack["workspace"], stack["releases"][0])}
        assert len(run("ps", "--quiet", "api").split()) == 2
    finally:
        run("down", "--timeout", "30")

"""The container image, built and run for real with podman: the base image
made from Debian's own packages (once, then cached under build/), `make
image` on it from the release the fast model's `make serve` would check, and
a container on the host's network, called from the host; its logs, a killed
worker, a stop with a request in flight; a model version mounted by `make
run-image` in place of the release's own.

The tests keep their images and containers in a podman store of their own
(tests/containers.py). With the
base and the layers cached the module takes about a minute; on a fresh
machine the base (debootstrap) and a cold build add a few minutes. The
figures measured are printed (pytest -s)."""

import json
import shutil
import subprocess
import threading
import time
import uuid

import pytest
import requests

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.settings import APP_NAME
from tests.conftest import PROJECT, make
from tests.containers import build_lock, engine, engine_environment
from tests.processes import free_port
from tests.slow_clients import slow_article_call

IMAGE = f"localhost/{APP_NAME}-test"
# The image `make image IMAGE_WITH_TRAINING_ROWS=1` builds, with the model version's training record.
IMAGE_WITH_ROWS = f"localhost/{APP_NAME}-test-rows"
# What a model version keeps besides what serving needs: its rows, test predictions, executed notebook.
TRAINING_RECORD = ("data.csv", "predictions.csv", "cv_predictions.csv", "train.ipynb", "train.html")
# The service's user in the image, and another one.
SERVICE_UID, OTHER_UID = 10001, 10002
# The engine's default stop timeout: a container not gone by then is killed.
STOP_TIMEOUT = 10
FIGURES = {}


def timed_make(figure: str, *arguments, timeout: float):
    started = time.monotonic()
    make(*arguments, env=engine_environment(), timeout=timeout)
    FIGURES[figure] = round(time.monotonic() - started, 1)


def tags_of(image: str) -> set[str]:
    listed = engine("images", "--format", "{{.Repository}}:{{.Tag}}", image).stdout.split()
    return {tag for tag in listed if tag.split(":")[0] == image}


def url_of(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def wait_until_ready(port: int, name: str, timeout: float = 90) -> float:
    """Seconds until the readiness probe answers 200; fails with the
    container's logs when it does not within `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if requests.get(url_of(port) + "/v2/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - started
        except requests.RequestException:
            pass
        time.sleep(0.2)
    logs = engine("logs", name, check=False)
    pytest.fail(f"container {name} not ready within {timeout} s:\n{logs.stdout[-3000:]}\n{logs.stderr[-3000:]}")


def logs_of(name: str) -> tuple[list[str], list[str]]:
    """The container's stdout and stderr lines, each on its own stream."""
    logs = engine("logs", name)
    return logs.stdout.splitlines(), logs.stderr.splitlines()


def gunicorn_processes(name: str) -> tuple[int, list[int]]:
    """The gunicorn master's pid inside the container, and its workers' pids."""
    listing = engine("exec", name, "ps", "-eo", "pid=,ppid=,args=").stdout
    processes = {}
    for line in listing.splitlines():
        pid, ppid, args = line.split(None, 2)
        processes[int(pid)] = (int(ppid), args)
    gunicorn = {pid for pid, (_, args) in processes.items() if "-m gunicorn" in args}
    masters = [pid for pid in gunicorn if processes[pid][0] not in gunicorn]
    assert len(masters) == 1, listing
    return masters[0], sorted(pid for pid in gunicorn if processes[pid][0] == masters[0])


def article_call(port: int) -> requests.Response:
    return requests.post(url_of(port) + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10)


@pytest.fixture(scope="module")
def model_version(trained) -> str:
    return (trained["models_dir"] / "latest").resolve().name


@pytest.fixture(scope="module")
def image_variables(trained, tmp_path_factory) -> list[str]:
    """Where `make image` finds (or makes) its release: the fast run's models,
    releases beside them, a PM2 home of the tests' own."""
    return [
        *[f"{name}={value}" for name, value in trained["variables"].items()],
        f"PM2_HOME={tmp_path_factory.mktemp('image-pm2')}",
    ]


@pytest.fixture(scope="module")
def release(trained) -> str:
    return (trained["models_dir"].parent / "releases" / "current").resolve().name


@pytest.fixture(scope="module")
def image(image_variables):
    """`make base-image` (a no-op once the base is in the store) and `make
    image` from the release of the fast model (made first, as `make serve`
    would). On the way out, the release tags of this run are removed and what
    they alone held is pruned; `latest` keeps the layers cached for the next run."""
    with build_lock():
        timed_make("base image (s)", "base-image", timeout=1200)
        timed_make("image build (s)", "image", f"IMAGE={IMAGE}", *image_variables, timeout=1200)
    FIGURES["image size (MB)"] = round(int(engine("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout) / 1e6)
    yield IMAGE
    with build_lock():
        for tag in tags_of(IMAGE):
            if not tag.endswith(":latest"):
                engine("rmi", tag, check=False)
        engine("image", "prune", "--force", check=False)
    print("\nimage figures:", json.dumps(FIGURES))


@pytest.fixture(scope="module")
def container(image):
    """The image run as the issue's machines run containers: on the host's
    network (no port mapping), on a free port."""
    port = free_port()
    name = f"{APP_NAME}-test-{port}"
    # On the host's network, gunicorn's port behind the edge must be free too:
    # a service of the host's on the default one would take its requests.
    engine(
        "run", "--detach", "--name", name, "--network", "host",
        "--env", f"DIABETES_PORT={port}", "--env", f"DIABETES_WORKERS_PORT={free_port()}", image,
    )  # fmt: skip
    try:
        FIGURES["start to ready (s)"] = round(wait_until_ready(port, name), 1)
        yield {"name": name, "port": port}
    finally:
        engine("rm", "--force", "--time", "0", name, check=False)


def test_every_package_the_image_installs_is_pinned_in_requirements_txt():
    def normalized(name):
        return name.lower().replace("_", "-").replace(".", "-")

    pinned = {
        normalized(line.split("==")[0])
        for line in (PROJECT / "requirements.txt").read_text().splitlines()
        if "==" in line
    }
    wanted = [
        line.strip()
        for line in (PROJECT / "container" / "requirements.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [name for name in wanted if normalized(name) not in pinned] == []


@pytest.mark.model
@pytest.mark.container
def test_the_image_is_labelled_with_its_release_runs_as_a_non_root_user_and_checks_its_readiness(
    image, model_version, release
):
    inspected = json.loads(engine("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    assert config["User"] == "10001"
    assert "5000/tcp" in config["ExposedPorts"]
    # podman shows the HEALTHCHECK beside the image's Config, docker in it.
    healthcheck = inspected.get("Healthcheck") or config["Healthcheck"]
    assert "/app/container/healthcheck.py" in " ".join(healthcheck["Test"])
    assert config["Labels"]["diabetes.model.version"] == model_version
    assert config["Labels"]["diabetes.release"] == release
    assert config["Labels"]["diabetes.training-rows"] == "none"
    assert f"{IMAGE}:{release}" in tags_of(IMAGE)
    assert "DIABETES_HOST=0.0.0.0" in config["Env"]


@pytest.mark.model
@pytest.mark.container
def test_the_image_carries_the_release_as_sealed(container, trained, release):
    """The same files as the release `make serve` checked, hash for hash, and
    nothing else: the release check passes in the image."""
    manifest = json.loads((trained["models_dir"].parent / "releases" / release / "manifest.json").read_text())
    paths = [f"/app/releases/current/{name}" for name in manifest["files"]]
    listing = engine("exec", container["name"], "sha256sum", *paths).stdout.splitlines()
    in_image = {path.removeprefix("/app/releases/current/"): sha for sha, path in map(str.split, listing)}
    assert in_image == manifest["files"]
    assert manifest["links"] == {}
    check = engine(
        "exec",
        container["name"],
        "/app/.venv/bin/python",
        "-I",
        "/app/releases/current/package/diabetes/serving.py",
        "exec",
        "/app/releases/current",
        "/bin/echo",
        "checked",
        check=False,
    )
    assert (check.returncode, check.stdout) == (0, "checked\n"), check.stderr


def entries_in(name: str, *folders: str) -> dict[str, tuple[str, str, str, str]]:
    """Each entry under `folders` in the container: (owner, group, octal mode, type)."""
    listing = engine("exec", name, "find", *folders, "-printf", "%p %u %g %m %y\\n").stdout
    return {path: tuple(rest) for path, *rest in map(str.split, listing.splitlines())}


@pytest.mark.model
@pytest.mark.container
def test_the_image_holds_none_of_the_training_rows_and_its_release_is_roots_and_read_only(container, release):
    """What serving needs of the model, and nothing of its training record:
    no rows anywhere in the app, and the release's files 0444, folders 0555,
    root's (the service runs as another user, which reads them)."""
    found = engine(
        "exec",
        container["name"],
        "find",
        "/app",
        "(",
        "-path",
        "/app/.venv",
        "-o",
        "-path",
        "/app/node_modules",
        ")",
        "-prune",
        "-o",
        "(",
        *" -o ".join(f"-name {name}" for name in TRAINING_RECORD).split(),
        ")",
        "-print",
    ).stdout.split()
    assert found == []
    entries = entries_in(container["name"], f"/app/releases/{release}", "/app/training")
    assert {path for path in entries if path.startswith(f"/app/releases/{release}/model/")} == {
        f"/app/releases/{release}/model/metadata.json",
        f"/app/releases/{release}/model/model.ubj",
    }
    assert entries.pop("/app/training")[3] == "d" and not [path for path in entries if "/app/training" in path]
    wrong = {
        path: entry
        for path, entry in entries.items()
        if entry != ("root", "root", "555" if entry[3] == "d" else "444", entry[3]) or entry[3] not in "fd"
    }
    assert wrong == {}


@pytest.mark.model
@pytest.mark.container
def test_the_services_user_can_change_nothing_in_its_release(container):
    attempts = {
        "add a file": "touch /app/releases/current/package/flask.py",
        "plant a link": "ln -s /tmp /app/releases/current/package/sitecustomize",
        "change a file": "echo >> /app/releases/current/serve.py",
        "make it writable": "chmod u+w /app/releases/current/serve.py",
    }
    for what, command in attempts.items():
        attempt = engine("exec", "--user", str(SERVICE_UID), container["name"], "sh", "-c", command, check=False)
        assert attempt.returncode != 0, f"the service's user could {what}"


@pytest.mark.model
@pytest.mark.container
def test_the_articles_call_and_a_v2_call_answer_from_the_host(container, model_version):
    article = article_call(container["port"])
    assert article.status_code == 200, article.text
    assert article.headers["X-Model-Version"] == model_version
    assert 0 < article.json()["prediction"] < 1

    rows = [[1, 106, 70, 28, 135, 34.2, 0.142, 22], [6, 148, 72, 35, 0, 33.6, 0.627, 50]]
    v2 = requests.post(
        url_of(container["port"]) + "/v2/models/diabetes/infer",
        timeout=10,
        json={"inputs": [{"name": "features", "datatype": "FP64", "shape": [2, 8], "data": rows}]},
    )
    assert v2.status_code == 200, v2.text
    assert v2.json()["model_version"] == model_version
    outputs = {output["name"]: output for output in v2.json()["outputs"]}
    assert outputs["probability"]["shape"] == [2]
    assert outputs["probability"]["data"][0] == pytest.approx(article.json()["prediction"], abs=1e-6)


@pytest.mark.model
@pytest.mark.container
def test_the_images_healthcheck_finds_the_service_healthy(container):
    assert engine("healthcheck", "run", container["name"], check=False).returncode == 0


def is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@pytest.mark.model
@pytest.mark.container
def test_the_access_log_is_json_lines_on_stdout_and_pm2_and_gunicorn_write_to_stderr(container):
    request_ids = [f"image-test-{uuid.uuid4().hex}" for _ in range(3)]
    for request_id in request_ids:
        assert (
            requests.post(
                url_of(container["port"]) + ARTICLE_PATH,
                json=ARTICLE_BODY,
                timeout=10,
                headers={"X-Request-ID": request_id},
            ).status_code
            == 200
        )
    deadline = time.monotonic() + 15
    while True:
        stdout, stderr = logs_of(container["name"])
        logged = [line for line in stdout if any(request_id in line for request_id in request_ids)]
        if len(logged) == len(request_ids) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    records = [json.loads(line) for line in logged]
    assert sorted(record["request_id"] for record in records) == sorted(request_ids)
    assert {(record["route"], record["status"]) for record in records} == {(ARTICLE_PATH, 200)}
    assert not any(request_id in line for line in stderr for request_id in request_ids)
    # Every line on stdout is JSON: the service prints nothing else there.
    assert [line for line in stdout if not is_json_object(line)] == []
    assert any("PM2" in line for line in stderr)
    assert any("Booting worker" in line for line in stderr)


@pytest.mark.model
@pytest.mark.container
def test_a_gunicorn_worker_killed_inside_the_container_is_replaced(container):
    master, workers = gunicorn_processes(container["name"])
    killed_at = time.monotonic()
    engine("exec", container["name"], "kill", "-9", str(workers[0]))
    while True:
        now_master, now_workers = gunicorn_processes(container["name"])
        if len(now_workers) == len(workers) and workers[0] not in now_workers:
            break
        assert time.monotonic() - killed_at < 30, f"workers {workers} became {now_workers}"
        time.sleep(0.2)
    FIGURES["worker replaced in (s)"] = round(time.monotonic() - killed_at, 1)
    assert now_master == master
    assert article_call(container["port"]).status_code == 200


@pytest.mark.model
@pytest.mark.container
def test_podman_stop_lets_a_request_in_flight_finish_and_the_container_exits_0(container):
    answer = {}
    in_flight = threading.Thread(target=lambda: answer.update(status=slow_article_call(container["port"], 2)))
    in_flight.start()
    time.sleep(0.5)
    stopping = time.monotonic()
    engine("stop", "--time", str(STOP_TIMEOUT), container["name"], timeout=STOP_TIMEOUT + 30)
    stop_seconds = time.monotonic() - stopping
    in_flight.join(timeout=30)
    state = json.loads(engine("inspect", container["name"]).stdout)[0]["State"]
    FIGURES["stop with 2 s request in flight (s)"] = round(stop_seconds, 1)
    FIGURES["stop: in-flight answer, exit code"] = [answer.get("status"), state["ExitCode"]]
    assert answer.get("status") == "HTTP/1.1 200 OK"
    assert state["ExitCode"] == 0
    assert stop_seconds < STOP_TIMEOUT


@pytest.mark.model
@pytest.mark.container
def test_a_model_version_mounted_by_make_run_image_is_served_in_place_of_the_releases(
    image, trained, model_version, tmp_path
):
    models = tmp_path / "models"
    shutil.copytree(trained["models_dir"] / model_version, models / model_version)
    (models / "current").symlink_to(model_version)
    port = free_port()
    name = IMAGE.rsplit("/", 1)[1]
    output = open(tmp_path / "run-image.log", "w")
    running = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(PROJECT),
            "run-image",
            f"IMAGE={IMAGE}",
            "IMAGE_NETWORK=host",
            f"IMAGE_PORT={port}",
            f"IMAGE_MODELS={models}",
        ],
        env=engine_environment(DIABETES_WORKERS_PORT=str(free_port())),
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_ready(port, name)
        answer = article_call(port)
        assert answer.status_code == 200
        assert answer.headers["X-Model-Version"] == model_version
        master, _ = gunicorn_processes(name)
        environment = engine("exec", name, "cat", f"/proc/{master}/environ").stdout.split("\0")
        assert "DIABETES_MODEL_DIR=/app/models/current" in environment
        engine("stop", name, timeout=STOP_TIMEOUT + 30)
        assert running.wait(timeout=30) == 0, (tmp_path / "run-image.log").read_text()[-3000:]
    finally:
        if running.poll() is None:
            engine("rm", "--force", "--time", "0", name, check=False)
            running.wait(timeout=30)
        output.close()


@pytest.mark.model
@pytest.mark.container
def test_make_image_with_training_rows_carries_them_for_the_services_user_alone(
    image, image_variables, model_version, release
):
    """Asked for explicitly, the model version's training record goes into
    /app/training/<version>/, readable by the service's user only; the
    release is the same."""
    try:
        with build_lock():
            timed_make(
                "image build with rows (s)",
                "image",
                f"IMAGE={IMAGE_WITH_ROWS}",
                "IMAGE_WITH_TRAINING_ROWS=1",
                *image_variables,
                timeout=1200,
            )
        config = json.loads(engine("image", "inspect", IMAGE_WITH_ROWS).stdout)[0]["Config"]
        assert config["Labels"]["diabetes.training-rows"] == "included"
        assert config["Labels"]["diabetes.release"] == release

        def run(user: int, *command: str) -> subprocess.CompletedProcess:
            return engine(
                "run", "--rm", "--network", "host", "--user", str(user), "--entrypoint", command[0],
                IMAGE_WITH_ROWS, *command[1:], check=False,
            )  # fmt: skip

        record = f"/app/training/{model_version}"
        listing = run(SERVICE_UID, "find", record, "-printf", "%p %U %m %y\\n").stdout.splitlines()
        entries = {path: tuple(rest) for path, *rest in map(str.split, listing)}
        assert {f"{record}/{name}" for name in TRAINING_RECORD} <= set(entries)
        wrong = {
            path: entry
            for path, entry in entries.items()
            if entry != (str(SERVICE_UID), "500" if entry[2] == "d" else "400", entry[2])
        }
        assert wrong == {}
        assert run(SERVICE_UID, "head", "-c", "1", f"{record}/data.csv").returncode == 0
        assert run(OTHER_UID, "head", "-c", "1", f"{record}/data.csv").returncode != 0
        in_release = run(SERVICE_UID, "ls", f"/app/releases/{release}/model").stdout.split()
        assert sorted(in_release) == ["metadata.json", "model.ubj"]
    finally:
        with build_lock():
            for tag in tags_of(IMAGE_WITH_ROWS):
                engine("rmi", tag, check=False)

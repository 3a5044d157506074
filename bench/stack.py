"""The stack beside the one-host service: `make stack` (deploy/compose.yaml on
Docker Swarm) with 2 replicas, on a two-node swarm of the benchmark's own.

    python -m bench.stack [--quick] [--output-dir DIR] [--models-dir DIR]

runs only the service (`make serve`) and the stack's two variants, in the
rounds and loads of `make bench`, and writes stack.json and stack.md (the
stack's section of results.md) to build/bench/; `make bench` runs the same
servers among the others (bench.run).

The swarm is deploy/swarm/nodes': the manager (a dockerd in this host's
network namespace) and one worker node (a dockerd in the network namespace
`benchworker`), on addresses, interfaces and ports of its own
(SWARM_SETTINGS), its state in a folder of /tmp; `nodes down` removes it
when the benchmark ends, interrupted or not. The image is the release the
service serves, built with podman in the tests' store (build/container-store,
one build at a time) and loaded into both dockerds by `make stack`.

A request to the stack goes wrk -> docker-proxy (the published port: this
swarm's manager runs without iptables) -> the stack's edge (HAProxy, in a
container on the manager) -> a replica's own edge (HAProxy) -> its gunicorn.
Two variants of the same stack, the same image and replicas:

- `stack`: one replica per node (the spread preference), so that the requests
  sent to the worker's replica cross the overlay network (VXLAN between the
  namespaces);
- `stack_one_node`: both replicas on the manager (the worker drained): the
  extra hop without VXLAN.

Between its turns the stack is scaled to 0 (replicas and edge), so that it
takes no CPU while the other servers are loaded; each turn scales it up again
and waits until the edge sees every replica ready.
"""

import argparse
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from bench.servers import PROJECT, Server, ServerFailed, ServiceUnderPM2
from diabetes.settings import APP_NAME
from tests.processes import clean_environment, cpu_seconds, process_tree, pss_mib, run_bounded, wait_until
from tests.wrk import run_wrk

# Apart from a user's `make stack` (10.231, dswarm, 2377, 4789) and the tests' (10.233, dstest, 2387, 4799).
SWARM_SETTINGS = {"SWARM_NET": "10.234", "SWARM_IF": "dsbench", "SWARM_PORT": "2397", "SWARM_DATA_PORT": "4809"}
# The worker node: its network namespace and its name in `docker node ls`.
WORKER = "benchworker"
STACK = "diabetes-bench"
# An image name of the benchmark's own: `make image` also tags it `latest`.
IMAGE = f"{APP_NAME}-bench"
REPLICAS = 2
# The tests' podman store (tests/containers.py): its layers are cached there, and
# its lock keeps one `make image` at a time in build/image/.
CONTAINER_STORE = PROJECT / "build" / "container-store"
NODES = PROJECT / "deploy" / "swarm" / "nodes"
STACK_TOOL = PROJECT / "deploy" / "stack.py"
# What deploy/swarm/nodes runs (Debian: docker.io, iproute2, iptables).
TOOLS = ("docker", "dockerd", "containerd", "ip", "iptables")
# Bounds, in seconds.
MAKE_STACK_TIMEOUT = 900
CONVERGE_TIMEOUT = 180
SCALED_DOWN_TIMEOUT = 90
# The processes of a replica that are PM2 (pm2-runtime under tini), counted apart as the service's PM2 is.
PM2_COMMANDS = ("tini", "node")


def log(message: str):
    print(message, file=sys.stderr, flush=True)


def why_not_here() -> str | None:
    """Why the stack cannot run on this machine, if it cannot."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"{' and '.join(missing)} not installed (the stack runs on a swarm of Docker's own daemons: "
            "apt-get install docker.io)"
        )
    if os.geteuid() != 0:
        return "needs root (deploy/swarm/nodes makes network namespaces and bridges, and runs dockerd)"
    return None


def _tail(result: subprocess.CompletedProcess, characters: int = 1500) -> str:
    return (result.stdout[-characters:] + "\n" + result.stderr[-characters:]).strip()


class Swarm:
    """deploy/swarm/nodes with the benchmark's settings and a state folder of
    its own in /tmp (unix socket paths must stay short)."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-swarm-", dir="/tmp"))
        self.hosts = {}  # node name -> DOCKER_HOST

    def environment(self, **settings) -> dict:
        """Ours, without any docker or swarm setting of the user's, with the benchmark's."""
        kept = {
            name: value
            for name, value in clean_environment().items()
            if not name.startswith(("DOCKER_", "SWARM_", "CONTAINER_"))
        }
        return {
            **kept,
            **SWARM_SETTINGS,
            "SWARM_DIR": str(self.dir),
            "CONTAINER_ENGINE": "podman",
            "CONTAINER_STORE": str(CONTAINER_STORE),
            **settings,
        }

    def nodes(self, *arguments: str, timeout: float = 120) -> str:
        result = run_bounded([str(NODES), str(self.dir), *arguments], timeout=timeout, env=self.environment())
        if result.returncode != 0:
            raise ServerFailed(f"deploy/swarm/nodes {' '.join(arguments)} failed:\n{_tail(result)}")
        return result.stdout

    def up(self):
        log(f"the stack's swarm: manager and worker {WORKER} ({self.dir}, SWARM_NET={SWARM_SETTINGS['SWARM_NET']})")
        self.hosts["manager"] = self.nodes("up").strip().splitlines()[-1].removeprefix("DOCKER_HOST=")
        self.nodes("add", WORKER)
        self.hosts[WORKER] = self.nodes("host", WORKER).strip()

    def down(self):
        """Everything of the swarm's gone: daemons, containers, namespace,
        bridges; its folder too, once nothing is mounted in it."""
        try:
            self.nodes("down", timeout=300)
        except (ServerFailed, subprocess.TimeoutExpired) as error:
            log(f"the stack's swarm did not go down cleanly: {error}\n  by hand: {NODES} {self.dir} down")
            return
        shutil.rmtree(self.dir, ignore_errors=True)

    def docker(self, *arguments: str, node: str = "manager", check: bool = True, timeout: float = 60) -> str:
        result = run_bounded(
            ["docker", *arguments], timeout=timeout, env=self.environment(DOCKER_HOST=self.hosts[node])
        )
        if check and result.returncode != 0:
            raise ServerFailed(f"docker {' '.join(arguments)} on {node} failed:\n{_tail(result)}")
        return result.stdout


@contextmanager
def build_lock():
    """One `make image` at a time in this checkout (tests/containers.py takes the same lock)."""
    CONTAINER_STORE.mkdir(parents=True, exist_ok=True)
    with open(CONTAINER_STORE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _cgroup_cpu_seconds(pid: int) -> float | None:
    """The CPU time of the cgroup that `pid` is in (its container's: every
    process in it, health checks included), cgroup v1's cpuacct or v2's cpu.stat."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            for mount in (controllers, "cpuacct", "cpu,cpuacct"):
                usage = Path("/sys/fs/cgroup", mount, path.lstrip("/"), "cpuacct.usage")
                if usage.exists():
                    return int(usage.read_text()) / 1e9
    for line in lines:
        if line.startswith("0::"):
            stat = Path("/sys/fs/cgroup", line[3:].lstrip("/"), "cpu.stat")
            try:
                usage = next(row for row in stat.read_text().splitlines() if row.startswith("usage_usec"))
            except (OSError, StopIteration):
                return None
            return int(usage.split()[1]) / 1e6
    return None


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _parent(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class StackDeployment:
    """The stack on the benchmark's swarm: deployed once by `make stack` (the
    release the service serves), then scaled up and down for each turn."""

    def __init__(self, swarm: Swarm, service: ServiceUnderPM2, port: int):
        self.swarm = swarm
        self.service = service
        self.port = port
        self.release = None
        self.setup_seconds = {}

    def deploy(self):
        """`make stack` with the service's models, releases and PM2 home: the
        image carries the release the service serves (deployed here if the
        service has not run yet)."""
        started = time.monotonic()
        self.swarm.up()
        self.setup_seconds["swarm_up"] = time.monotonic() - started
        log(f"make stack: the release's image (podman, {CONTAINER_STORE.relative_to(PROJECT)}), {REPLICAS} replicas")
        started = time.monotonic()
        with build_lock():
            self.setup_seconds["waited_for_build_lock"] = time.monotonic() - started
            result = run_bounded(
                ["make", "--no-print-directory", "-C", str(PROJECT), *self.service.make_options(), "stack",
                 *self.service.make_variables(), f"IMAGE={IMAGE}", f"STACK={STACK}", f"STACK_PORT={self.port}",
                 f"REPLICAS={REPLICAS}", f"SWARM_DIR={self.swarm.dir}"],
                timeout=MAKE_STACK_TIMEOUT,
                env=self.swarm.environment(),
            )  # fmt: skip
        self.setup_seconds["make_stack"] = time.monotonic() - started
        if result.returncode != 0:
            # Its last words (make's own line, and the error before it) first: the reason in the report.
            last = [line.strip() for line in (result.stdout + result.stderr).splitlines() if line.strip()][-2:]
            raise ServerFailed(f"make stack failed ({result.returncode}): {' / '.join(last)}\n{_tail(result)}")
        self.release = (self.service.releases_dir / "current").resolve().name
        log(f"  the stack runs {IMAGE}:{self.release} after {self.setup_seconds['make_stack']:.0f} s")

    @property
    def image(self) -> str:
        return f"{IMAGE}:{self.release}"

    def scale(self, replicas: int, one_node: bool = False):
        """Replicas and edge up (each replica ready behind the edge, on the
        nodes wanted) or down (no container of the stack left on any node)."""
        if replicas:
            self.swarm.docker("node", "update", "--availability", "drain" if one_node else "active", WORKER)
        self.swarm.docker(
            "service", "scale", "--detach", f"{STACK}_api={replicas}", f"{STACK}_edge={1 if replicas else 0}"
        )
        if replicas:
            result = run_bounded(
                [sys.executable, str(STACK_TOOL), "wait", STACK, self.release, str(CONVERGE_TIMEOUT)],
                timeout=CONVERGE_TIMEOUT + 60,
                env=self.swarm.environment(DOCKER_HOST=self.swarm.hosts["manager"]),
            )
            if result.returncode != 0:
                raise ServerFailed(f"the stack did not come up: {_tail(result)}")
        elif not wait_until(lambda: not self.containers(), timeout=SCALED_DOWN_TIMEOUT, interval=0.5):
            log(f"  the stack's containers still run {SCALED_DOWN_TIMEOUT} s after scaling it to 0")

    def placement(self) -> list[str]:
        """The node of each replica that should be running: `manager`, or the worker's name."""
        listing = self.swarm.docker(
            "service", "ps", "--filter", "desired-state=running", "--format", "{{.Node}}", f"{STACK}_api"
        )
        # The swarm has two nodes: the worker, and the manager (named after this host).
        return sorted(node if node == WORKER else "manager" for node in listing.split())

    def containers(self) -> list[dict]:
        """The stack's containers on every node: service, node, id, and the host's pid of its process 1."""
        found = []
        for node in self.swarm.hosts:
            listing = self.swarm.docker(
                "ps", "--filter", f"label=com.docker.stack.namespace={STACK}",
                "--format", '{{.ID}} {{.Label "com.docker.swarm.service.name"}}',
                node=node, check=False,
            )  # fmt: skip
            for line in listing.splitlines():
                container, service = line.split()
                pid = self.swarm.docker("inspect", "--format", "{{.State.Pid}}", container, node=node, check=False)
                if pid.strip().isdigit() and int(pid) > 0:
                    found.append({"service": service, "node": node, "id": container, "pid": int(pid)})
        return found

    def daemons(self) -> list[int]:
        """dockerd and containerd of every node."""
        pids = []
        for node in self.swarm.hosts:
            for daemon in ("dockerd", "containerd"):
                try:
                    pids.append(int((self.swarm.dir / node / f"{daemon}.pid").read_text()))
                except (OSError, ValueError):
                    pass
        return pids


class StackServer(Server):
    """One variant of the stack, as a server of the benchmark: started by
    scaling it up with its replicas where the variant wants them, stopped by
    scaling it down to 0."""

    # The stack's daemons and helpers, beside it as PM2 is beside the service.
    supervisor = "PM2, health checks, Docker"

    def __init__(self, deployment: StackDeployment, one_node: bool):
        super().__init__(deployment.service.workdir)
        self.deployment = deployment
        self.one_node = one_node
        if one_node:
            self.key = "stack_one_node"
            self.label = f"the stack, both replicas on the manager (the extra hop, no VXLAN; {REPLICAS} replicas)"
        else:
            self.key = "stack"
            self.label = f"the stack: make stack, {REPLICAS} replicas on two swarm nodes (the extra hop and VXLAN)"
        self.placements = []  # the replicas' nodes, at each start

    def start(self):
        self.deployment.scale(REPLICAS, one_node=self.one_node)
        nodes = self.deployment.placement()
        wanted = len(set(nodes)) == 1 and WORKER not in nodes if self.one_node else len(set(nodes)) == REPLICAS
        if len(nodes) != REPLICAS or not wanted:
            raise ServerFailed(f"{self.key}: the replicas run on {nodes}, not as this variant wants them")
        self.placements.append(nodes)
        self.port = self.deployment.port
        self.answer = self.wait_until_answering(30)

    def stop(self):
        if self.port is None:
            return
        self.port = None
        try:
            self.deployment.scale(0)
        except (ServerFailed, subprocess.TimeoutExpired) as error:
            log(f"could not scale the stack down: {error}")

    def _processes(self) -> dict:
        """pid -> (part, container) of every process of the stack's containers
        that PM2 or the serving runs, the docker-proxy of its port, and
        Docker's daemons with the containers' shims."""
        parts = {}
        containers = self.deployment.containers()
        for container in containers:
            edge = container["service"].endswith("_edge")
            for pid in process_tree(container["pid"]):
                if edge:
                    part = "stack_edge"
                else:
                    part = "pm2" if _command(pid) in PM2_COMMANDS else "replicas"
                parts[pid] = (part, container["id"])
            shim = _parent(container["pid"])
            if shim:
                parts[shim] = ("docker", None)
        for daemon in self.deployment.daemons():
            parts[daemon] = ("docker", None)
            for pid in process_tree(daemon)[1:]:
                if _command(pid) == "docker-proxy" and f"-host-port\0{self.port}\0" in _command_line(pid):
                    parts[pid] = ("docker_proxy", None)
        return {"parts": parts, "containers": containers}

    def measure(self, url: str, script: Path, connections: int, seconds: int) -> dict:
        """wrk's figures, and what each part of the stack spent on the load:
        the stack's edge (with docker-proxy) and the replicas (their edges
        and gunicorn), as the service's edge and gunicorn are counted; apart,
        PM2 in each replica, the containers' health checks (what their
        cgroups spent outside the processes above) and Docker's daemons."""
        before = self._processes()
        cpu_before = {pid: cpu_seconds([pid]) for pid in before["parts"]}
        cgroup_before = {container["id"]: _cgroup_cpu_seconds(container["pid"]) for container in before["containers"]}
        load = run_wrk(url, script, connections, seconds)
        after = self._processes()
        requests = max(load["requests"], 1)
        spent = dict.fromkeys(("stack_edge", "docker_proxy", "replicas", "pm2", "healthchecks", "docker"), 0.0)
        in_container = {}
        for pid, (part, container) in after["parts"].items():
            seconds_spent = max(cpu_seconds([pid]) - cpu_before.get(pid, 0.0), 0.0)
            spent[part] += seconds_spent
            if container:
                in_container[container] = in_container.get(container, 0.0) + seconds_spent
        for container in after["containers"]:
            total_before, total = cgroup_before.get(container["id"]), _cgroup_cpu_seconds(container["pid"])
            if total_before is not None and total is not None:
                spent["healthchecks"] += max(total - total_before - in_container.get(container["id"], 0.0), 0.0)
        per_request = {part: value * 1000 / requests for part, value in spent.items()}
        load["cpu_parts_ms_per_request"] = per_request
        load["cpu_ms_per_request"] = sum(per_request[part] for part in ("stack_edge", "docker_proxy", "replicas"))
        load["edge_cpu_ms_per_request"] = per_request["stack_edge"] + per_request["docker_proxy"]
        load["supervisor_cpu_ms_per_request"] = sum(per_request[part] for part in ("pm2", "healthchecks", "docker"))
        load["pss_mib"] = self._memory(after)
        load["nodes"] = self.deployment.placement()
        return load

    def _memory(self, processes: dict) -> dict:
        """PSS after the load: each replica (its edge, gunicorn's master and
        workers; PM2 apart) as a `worker`, the stack's edge (with
        docker-proxy) as the `edge`."""
        replicas, edge, pm2 = {}, 0.0, 0.0
        for pid, (part, container) in processes["parts"].items():
            size = pss_mib(pid) or 0.0
            if part == "replicas":
                replicas[container] = replicas.get(container, 0.0) + size
            elif part in ("stack_edge", "docker_proxy"):
                edge += size
            elif part == "pm2":
                pm2 += size
        workers = list(replicas.values())
        return {"master": None, "workers": workers, "edge": edge, "total": sum(workers) + edge, "pm2": pm2}


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


@contextmanager
def stack_servers(service: ServiceUnderPM2, port: int, skipped: list[str], record: dict, wanted: bool = True):
    """The stack's two variants, deployed on a swarm of the benchmark's own
    that is removed on the way out, whatever happened; none when it is not
    `wanted`, cannot run here or does not come up (`skipped` says why).
    `record` gets what was set up, and where each variant's replicas ran."""
    reason = why_not_here() if wanted else "left out (--no-stack)"
    if reason:
        skipped.append(f"stack: {reason}")
        log(f"skipped the stack: {reason}")
        yield []
        return
    swarm = Swarm()
    deployment = StackDeployment(swarm, service, port)
    servers = []
    record.update({"swarm": {**SWARM_SETTINGS, "worker": WORKER}, "replicas": REPLICAS, "stack": STACK})
    try:
        try:
            deployment.deploy()
            deployment.scale(0)
        except (ServerFailed, subprocess.TimeoutExpired) as error:
            reason = str(error).strip()
            skipped.append(f"stack: it did not come up ({reason.splitlines()[0][:300]})")
            log(f"skipped the stack: {reason}")
        else:
            servers = [StackServer(deployment, one_node=True), StackServer(deployment, one_node=False)]
            record.update({"image": deployment.image, "release": deployment.release})
        yield servers
    finally:
        record["setup_seconds"] = deployment.setup_seconds
        record["placements"] = {server.key: server.placements for server in servers}
        log("the stack's swarm: down")
        swarm.down()


def main(argv=None) -> int:
    # The benchmark's own pieces, imported here: bench.run imports this module.
    from bench.report import ratios, server_results, stack_costs, stack_markdown
    from bench.run import NORMAL, QUICK, WRK_MISSING, load_single_rows, models_to_serve, stop_cleanly_on_signals
    from bench.servers import running
    from diabetes.api_examples import ARTICLE_BODY
    from tests.processes import free_port
    from tests.wrk import write_wrk_script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke run, not figures to compare")
    parser.add_argument("--output-dir", type=Path, default=PROJECT / "build" / "bench")
    parser.add_argument("--models-dir", type=Path, default=PROJECT / "build" / "models")
    arguments = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        log(WRK_MISSING)
        return 2
    stop_cleanly_on_signals()
    plan = QUICK if arguments.quick else NORMAL
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    skipped, record, runs, answers = [], {}, [], {}
    try:
        models = models_to_serve(workdir, arguments.models_dir.resolve())
        service = ServiceUnderPM2(workdir, models)
        script = write_wrk_script(workdir / "article.lua", ARTICLE_BODY)
        with stack_servers(service, free_port(), skipped, record) as stack:
            servers = [service, *stack]
            for round_ in range(plan.rounds):
                for server in servers:
                    log(f"round {round_ + 1}/{plan.rounds}: starting {server.label}")
                    with running(server):
                        answers.setdefault(server.key, server.answer)
                        run_wrk(server.url, script, plan.connection_counts[0], plan.warmup_seconds)
                        runs += load_single_rows(plan, server.key, server.url, script, server, round_)
    except (ServerFailed, RuntimeError, subprocess.TimeoutExpired) as error:
        log(f"benchmark failed: {error}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: every server was stopped and the swarm removed, nothing was written")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    about = {
        server.key: {"label": server.label, "path": server.path, "supervisor": server.supervisor} for server in servers
    }
    results = {
        "plan": asdict(plan),
        "servers": server_results(about, runs, answers, plan.connection_counts),
        "ratios": ratios(runs, plan.connection_counts),
        "skipped": skipped,
    }
    results["stack"] = {**record, "costs": stack_costs(results["servers"])}
    table = stack_markdown(results)
    arguments.output_dir.mkdir(parents=True, exist_ok=True)
    (arguments.output_dir / "stack.json").write_text(json.dumps(results, indent=2) + "\n")
    (arguments.output_dir / "stack.md").write_text(table)
    print(table)
    log(f"wrote {arguments.output_dir}/stack.json and stack.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

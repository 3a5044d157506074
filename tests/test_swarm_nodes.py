"""A Docker Swarm of two real nodes on this machine, made by
deploy/swarm/nodes: the manager (a dockerd of its own in the host's network
namespace) and a worker (a dockerd in a network namespace of its own); an
overlay network across both, a service of two tasks spread over them with
--endpoint-mode dnsrr (no IPVS here for Swarm's routing mesh), reached from a
container on the manager by the name tasks.SERVICE; then the worker killed:
Down for the swarm, its task run again on the manager.

The swarm is a test's own (build/swarm-test, addresses 10.232.0.0/16,
interfaces dswt*, ports 2378 and 4790, a heartbeat of 1 s): a swarm of
build/swarm keeps running beside it. Its image is a busybox rootfs imported
into the manager and loaded into the worker (no registry here). Needs root,
docker.io and busybox-static: without them the tests fail and say what is
missing. About 15 s; the figures measured are printed (pytest -s)."""

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT, needs
from tests.processes import clean_environment

pytestmark = pytest.mark.container

NODES = PROJECT / "deploy" / "swarm" / "nodes"
STATE = PROJECT / "build" / "swarm-test"
SETTINGS = {
    "SWARM_DIR": str(STATE),
    "SWARM_NET": "10.232",
    "SWARM_IF": "dswt",
    "SWARM_PORT": "2378",
    "SWARM_DATA_PORT": "4790",
    # A dead node is Down after 3 missed heartbeats: 3 s instead of 15.
    "SWARM_HEARTBEAT": "1s",
}
WORKER = "swt-w1"
WORKER_ADDRESS = "10.232.0.2"
IMAGE = "swarm-test-busybox:latest"
BUSYBOX = Path("/bin/busybox")
# The applets the test's containers run, as links to busybox.
APPLETS = ("sh", "awk", "cat", "hostname", "httpd", "nslookup", "seq", "sleep", "timeout", "wget")
SERVICE = "web"
NETWORK = "swarm-test"
PORT = 8000
FIGURES = {}


def missing_tools() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, bridges, dockerd)")
    for tool, package in (("dockerd", "docker.io"), ("containerd", "containerd"), ("docker", "docker.io")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    if not BUSYBOX.exists() or not is_static(BUSYBOX):
        missing.append(f"a static {BUSYBOX} (apt-get install busybox-static)")
    return missing


def is_static(path: Path) -> bool:
    """Whether an ELF64 executable has no program interpreter (PT_INTERP)."""
    head = path.read_bytes()[:8192]
    offset, size, count = (int.from_bytes(head[a:b], "little") for a, b in ((32, 40), (54, 56), (56, 58)))
    types = [int.from_bytes(head[offset + i * size : offset + i * size + 4], "little") for i in range(count)]
    return head[:4] == b"\x7fELF" and 3 not in types


def run(arguments: list, timeout: float, check=True, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """A command with the test swarm's settings; its output as text."""
    result = subprocess.run(
        arguments, env=clean_environment(**SETTINGS), input=stdin, capture_output=True, timeout=timeout
    )
    result.stdout, result.stderr = (output.decode(errors="replace") for output in (result.stdout, result.stderr))
    if check and result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, arguments))} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def nodes(*arguments, timeout=90, check=True) -> subprocess.CompletedProcess:
    return run([str(NODES), *arguments], timeout, check)


def docker(*arguments, node="manager", timeout=30, check=True, stdin=b"") -> subprocess.CompletedProcess:
    return run(["docker", "-H", f"unix://{STATE}/{node}.sock", *arguments], timeout, check, stdin)


def timed(figure: str, action):
    started = time.monotonic()
    result = action()
    FIGURES[figure] = round(time.monotonic() - started, 1)
    return result


def wait_for(condition, timeout: float, what: str, interval=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        time.sleep(interval)


def busybox_rootfs() -> bytes:
    """A tar of / with /bin/busybox, its applets as links, /tmp and /www."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp", "www", "etc"):
            entry = tarfile.TarInfo(folder)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(entry)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in APPLETS:
            entry = tarfile.TarInfo(f"bin/{applet}")
            entry.type, entry.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(entry)
    return buffer.getvalue()


@pytest.fixture(scope="module")
@needs("container")
def swarm():
    missing = missing_tools()
    if missing:
        pytest.fail("deploy/swarm/nodes needs: " + "; ".join(missing))
    nodes("down")
    try:
        timed("up (s)", lambda: nodes("up"))
        timed("add (s)", lambda: nodes("add", WORKER))
        docker("import", "--change", 'CMD ["/bin/sh"]', "-", IMAGE, stdin=busybox_rootfs())
        timed("load (s)", lambda: nodes("load", IMAGE))
        yield
    finally:
        timed("down (s)", lambda: nodes("down"))
        print("\nswarm figures:", json.dumps(FIGURES))


def running_tasks() -> list[str]:
    """The nodes of the service's running tasks, one a task."""
    listed = docker("service", "ps", SERVICE, "-f", "desired-state=running", "--format", "{{.Node}} {{.CurrentState}}")
    return sorted(line.split()[0] for line in listed.stdout.splitlines() if line.split()[1:2] == ["Running"])


def task_containers(node: str) -> set[str]:
    label = f"label=com.docker.swarm.service.name={SERVICE}"
    listed = docker("ps", "--filter", label, "--format", "{{.ID}}", node=node)
    return set(listed.stdout.split())


def answers_over_the_overlay(wait=5, tries=8) -> tuple[dict, list]:
    """From a container on the manager: what each address of tasks.SERVICE
    answers (within `wait` seconds), and what the name answers, `tries` times."""
    script = (
        f"for ip in $(nslookup tasks.{SERVICE} 127.0.0.11 | awk '/^Address: / && !/:53$/ {{ print $2 }}'); do"
        f'  echo "$ip $(timeout {wait} wget -q -O- http://$ip:{PORT}/)"; done; echo --;'
        f"for i in $(seq {tries}); do timeout {wait} wget -q -O- http://tasks.{SERVICE}:{PORT}/; done"
    )
    output = docker("run", "--rm", "--network", NETWORK, IMAGE, "sh", "-c", script, timeout=60).stdout
    by_address, by_name = output.split("--\n")
    return dict(line.split(" ", 1) for line in by_address.splitlines()), by_name.split()


@pytest.fixture(scope="module")
def service(swarm):
    docker("network", "create", "--driver", "overlay", "--attachable", NETWORK)
    docker(
        "service", "create", "--detach", "--no-resolve-image", "--name", SERVICE, "--network", NETWORK,
        "--endpoint-mode", "dnsrr", "--replicas", "2", "--placement-pref", "spread=node.id",
        "--restart-delay", "0s", IMAGE,
        "sh", "-c", f"hostname > /www/index.html && exec httpd -f -p {PORT} -h /www",
    )  # fmt: skip
    spread = lambda: len(set(running_tasks())) == 2
    timed("service running on both nodes (s)", lambda: wait_for(spread, 30, "two running tasks on two nodes"))
    return SERVICE


def test_the_manager_and_the_worker_are_ready(swarm):
    listed = docker("node", "ls", "--format", "{{.Hostname}} {{.Status}} {{.ManagerStatus}}").stdout
    rows = [line.split() for line in listed.splitlines()]
    assert len(rows) == 2, listed
    assert all(row[1] == "Ready" for row in rows), listed
    assert [row[:2] for row in rows if row[0] == WORKER] == [[WORKER, "Ready"]], listed
    assert [row[2:] for row in rows if row[0] != WORKER] == [["Leader"]], listed


def test_a_dnsrr_service_spread_over_both_nodes_answers_over_the_overlay_from_the_manager(service):
    on_worker, on_manager = task_containers(WORKER), task_containers("manager")
    assert len(on_worker) == 1 and len(on_manager) == 1
    by_address, by_name = answers_over_the_overlay()
    assert sorted(by_address.values()) == sorted(on_worker | on_manager), by_address
    assert len(by_name) == 8 and set(by_name) <= on_worker | on_manager, by_name


def test_a_killed_worker_is_down_and_its_task_runs_again_on_the_manager(service):
    killed = nodes("kill", WORKER).stdout
    killed_at = time.monotonic()
    commands = {line.split()[1] for line in killed.splitlines()}
    assert {"dockerd", "containerd", "httpd"} <= commands, killed
    assert run(["ip", "netns", "pids", WORKER], 10).stdout == ""
    # The node's network stays up: a peer is refused at once, not left waiting.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((WORKER_ADDRESS, int(SETTINGS["SWARM_PORT"])), timeout=5)
    node_state = lambda: docker("node", "inspect", WORKER, "--format", "{{.Status.State}}").stdout.strip()
    wait_for(lambda: node_state() == "down", 30, "the worker Down for the swarm")
    FIGURES["kill to Down (s)"] = round(time.monotonic() - killed_at, 1)
    manager = docker("info", "--format", "{{.Name}}").stdout.strip()
    wait_for(lambda: running_tasks() == [manager, manager], 30, "both tasks running on the manager")
    FIGURES["kill to both tasks on the manager (s)"] = round(time.monotonic() - killed_at, 1)
    # The dead task's address leaves tasks.SERVICE when the gossip between
    # the nodes, slower than the heartbeat, drops what the worker announced.
    alive = sorted(task_containers("manager"))
    wait_for(
        lambda: sorted(answers_over_the_overlay(wait=2, tries=0)[0].values()) == alive, 60, f"tasks.{SERVICE}: {alive}"
    )
    FIGURES[f"kill to tasks.{SERVICE} without the dead task (s)"] = round(time.monotonic() - killed_at, 1)

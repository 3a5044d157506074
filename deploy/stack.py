"""The stack on Docker Swarm (deploy/compose.yaml), as the Makefile drives it:

    python deploy/stack.py wait   STACK RELEASE TIMEOUT   until every replica runs RELEASE, healthy
    python deploy/stack.py status STACK                   each replica's state, node, release and model
    python deploy/stack.py edge   STACK                   the edge's view of each replica, as JSON lines

Both talk to the swarm through the docker command line (DOCKER_HOST names
it). A replica's release and model version are its image's labels, which
`make image` writes from the release's manifest; the edge's own view of the
replicas (up, down, leaving) comes from its stats socket, through
`docker exec` on the node that runs it.
"""

import csv
import io
import json
import subprocess
import sys
import time

API_SERVICE = "api"
EDGE_SERVICE = "edge"
EDGE_RUN_DIR = "/tmp/edge"  # deploy/compose.yaml
RELEASE_LABEL = "diabetes.release"
MODEL_LABEL = "diabetes.model.version"


def docker(*arguments: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *arguments], capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise SystemExit(f"docker {' '.join(arguments)}: {result.stderr.strip()}")
    return result.stdout


def tasks(stack: str, service: str) -> list[dict]:
    """The service's tasks that should be running, as `docker service ps` lists them."""
    listing = docker(
        "service", "ps", "--no-trunc", "--filter", "desired-state=running", "--format", "{{json .}}",
        f"{stack}_{service}", check=False,
    )  # fmt: skip
    return [json.loads(line) for line in listing.splitlines() if line.strip()]


def labels_of(image: str, cache: dict) -> dict:
    if image not in cache:
        inspected = docker("image", "inspect", "--format", "{{json .Config.Labels}}", image, check=False)
        cache[image] = json.loads(inspected or "null") or {}
    return cache[image]


def image_of(task: dict) -> str:
    # Swarm may pin a digest after the tag: the local image is found by the tag.
    return task["Image"].split("@")[0]


def edge_view(stack: str) -> list[dict]:
    """The edge's replicas as it sees them: address, status (UP, DOWN, ...)
    and its last check (e.g. L7STS 503: the replica's readiness answered 503);
    empty if the edge cannot be asked."""
    containers = docker("ps", "--quiet", "--filter", f"label=com.docker.swarm.service.name={stack}_{EDGE_SERVICE}")
    if not containers.split():
        return []
    command = (
        "import socket; s = socket.socket(socket.AF_UNIX); "
        f"s.connect('{EDGE_RUN_DIR}/edge.sock'); s.sendall(b'show stat\\n'); "
        "print(b''.join(iter(lambda: s.recv(65536), b'')).decode())"
    )
    stat = docker("exec", containers.split()[0], "/app/.venv/bin/python", "-c", command, check=False)
    return [
        {"address": row["addr"], "status": row["status"], "check": row["check_status"], "code": row["check_code"]}
        for row in csv.DictReader(io.StringIO(stat.lstrip("# ")))
        if row["pxname"] == "workers" and row["svname"].startswith("replica") and row.get("addr")
    ]


def edge_servers(stack: str) -> list[str]:
    """`address status` of each replica the edge knows."""
    return [f"{server['address']} {server['status']}" for server in edge_view(stack)]


def wait(stack: str, release: str, timeout: float):
    """Until every replica wanted runs `release` and is healthy, and the
    edge answers; fails saying what it saw last."""
    deadline = time.monotonic() + timeout
    cache = {}
    seen = ""
    while time.monotonic() < deadline:
        wanted = docker(
            "service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas}}", f"{stack}_{API_SERVICE}"
        )
        running = tasks(stack, API_SERVICE)
        healthy = [
            task
            for task in running
            if task["CurrentState"].startswith("Running")
            and labels_of(image_of(task), cache).get(RELEASE_LABEL) == release
        ]
        containers = docker(
            "ps", "--filter", f"label=com.docker.swarm.service.name={stack}_{API_SERVICE}",
            "--filter", "health=healthy", "--quiet", check=False,
        )  # fmt: skip
        seen = f"{len(healthy)} of {wanted.strip()} replicas run {release}; healthy here: {len(containers.split())}"
        if len(healthy) == int(wanted) and len(running) == int(wanted) and edge_servers(stack):
            up = [line for line in edge_servers(stack) if line.endswith(" UP")]
            if len(up) >= int(wanted):
                print(f"stack {stack}: {seen}; the edge sees {len(up)} up")
                return
        time.sleep(1)
    raise SystemExit(f"stack {stack} did not converge within {timeout:.0f} s: {seen}")


def status(stack: str):
    cache = {}
    print(f"{'replica':<24} {'node':<12} {'state':<28} {'release':<28} model")
    for task in sorted(tasks(stack, API_SERVICE), key=lambda task: task["Name"]):
        labels = labels_of(image_of(task), cache)
        print(
            f"{task['Name']:<24} {task['Node']:<12} {task['CurrentState']:<28} "
            f"{labels.get(RELEASE_LABEL, '?'):<28} {labels.get(MODEL_LABEL, '?')}"
        )
    for task in tasks(stack, EDGE_SERVICE):
        print(f"edge: {task['Name']} on {task['Node']}, {task['CurrentState']}")
    for line in edge_servers(stack):
        print(f"edge sees replica {line}")


def main(argv: list[str]):
    if len(argv) == 4 and argv[0] == "wait":
        wait(argv[1], argv[2], float(argv[3]))
    elif len(argv) == 2 and argv[0] == "status":
        status(argv[1])
    elif len(argv) == 2 and argv[0] == "edge":
        for server in edge_view(argv[1]):
            print(json.dumps(server))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

"""The service's edge: HAProxy in front of gunicorn, started and watched by PM2.

    python -m diabetes.edge run     RELEASE_DIR   write the config, check it, run HAProxy (PM2 runs this)
    python -m diabetes.edge run     RELEASE_DIR --replicas NAME:PORT
                                                  the same edge in front of a stack's replicas (deploy/compose.yaml)
    python -m diabetes.edge status  RUN_DIR       the edge's sessions, queue, retries and health check

The edge listens where the service listens (`host`:`port`); gunicorn listens
behind it on 127.0.0.1:`workers_port` (when `BEHIND_EDGE_VARIABLE` is set,
as ecosystem.config.js does for both apps). A TCP port rather than a unix
socket: HAProxy waits a second before it tries a refused TCP connection again,
so its retries cover a restart of gunicorn, where a refused unix socket is
tried again at once and the retries are spent in a millisecond.
`diabetes/haproxy.cfg` is the configuration; this module gives it its values
from the service's settings, as environment variables that HAProxy reads, and
writes the edge's own refusals in the app's JSON envelope to the run folder
(`RUN_DIR_VARIABLE`, with HAProxy's stats socket), which only the service's
user can open.

`run` stays HAProxy's parent: PM2 stops an app with SIGINT, which HAProxy
takes as a hard stop that drops the requests in flight; this process passes
it on as SIGUSR1, HAProxy's graceful stop (stop listening, finish what is in
flight). It also reports the edge's figures to `pm2 monit` once a second.
With the `leave_rotation_seconds` setting, a stop first turns the readiness
probe to 503 for that long, still serving everything else, so that a load
balancer in front (a stack's edge, Kubernetes) takes this replica out of its
rotation before it stops listening.

With `--replicas NAME:PORT` the edge stands in front of a stack's replicas
instead of gunicorn: the addresses NAME resolves to, as Docker's DNS gives
them (a Swarm service in `dnsrr` mode, or a compose service), each checked on
its readiness probe every second; a request whose replica failed is sent
again to another one.
"""

import csv
import ctypes
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path

import orjson

from diabetes.errors import ErrorCode, InvalidRequest
from diabetes.release_layout import SETTINGS_FILE
from diabetes.settings import override_from_environment

HAPROXY = os.environ.get("HAPROXY", "haproxy")
CONFIG = Path(__file__).with_name("haproxy.cfg")
# Set for both apps by ecosystem.config.js (a test checks that the names agree).
BEHIND_EDGE_VARIABLE = "WORKERS_BEHIND_EDGE"
RUN_DIR_VARIABLE = "EDGE_RUN_DIR"
WORKERS_HOST = "127.0.0.1"
STATS_SOCKET = "edge.sock"
# Present while the edge finishes what it holds on a stop: gunicorn waits for
# it to go before it stops itself (diabetes/gunicorn_config.py), so that a
# request the edge holds still finds a worker.
DRAINING_FILE = "draining"
ERRORS_DIR = "errors"
# A map file HAProxy reads (and the launcher writes through the stats socket):
# its key LEAVING_KEY, while present, turns the readiness probe to 503.
STATE_MAP = "state.map"
LEAVING_KEY = "leaving"
LEAVING_MESSAGE = "the service is stopping: this replica takes no new requests"
# Every status the edge may answer by itself (diabetes/haproxy.cfg's http-errors).
REFUSALS = (400, 403, 408, 413, 414, 500, 501, 502, 503, 504)
# Statuses HAProxy has no error file for: their body alone, which the config returns.
RETURNED_REFUSALS = (414,)
REFUSAL_MESSAGES = {
    400: "the request could not be read: a malformed request line or header, a head over the edge's "
    "buffer, or an HTTP/1.1 request without a Host header",
    403: "the request was refused",
    408: "the request (head and body) did not arrive in time",
    413: "the body is larger than the most this service accepts: split it",
    414: "the request line is too long",
    500: "internal error: the request could not be handled",
    501: "the request uses a feature this service does not implement",
    502: "the service's workers gave no valid answer: try again",
    503: "the service is busy or restarting: try again shortly",
    504: "the service's workers did not answer in time",
}

# The edge's settings, from the service's (notebook parameters, overridable by
# DIABETES_* variables) and these fixed choices.
REQUEST_SECONDS = 10
KEEPALIVE_SECONDS = 5
CLIENT_SECONDS = 30
# Longer than gunicorn's own timeout (a silent worker is killed and replaced there).
SERVER_SECONDS = 35
QUEUE_SECONDS = 10
# A failed connection is tried again a second later: this many cover a restart of gunicorn.
RETRIES = 10
STOP_SECONDS = 25
BUFFER_BYTES = 16384
# What of a body the edge holds before the request goes on: a buffer less
# HAProxy's room to rewrite headers, and the head itself.
HELD_BODY_BYTES = 8192
# Requests each gunicorn worker is handed at once, and bodies too large to hold.
CONNECTIONS_PER_WORKER = 4
LARGE_BODY_CONNECTIONS_PER_WORKER = 2
MAX_URL_BYTES = 4094  # gunicorn_config.limit_request_line
# In front of replicas: server slots for the addresses the replicas' name
# resolves to (more replicas than this are not used), and Docker's DNS.
MAX_REPLICAS = 16
REPLICAS_RESOLVER = "127.0.0.11:53"


def edge_environment(settings: dict, run_dir: Path, replicas: str = "") -> dict:
    """The variables diabetes/haproxy.cfg reads, from the service's settings;
    in front of `replicas` (NAME:PORT) rather than gunicorn when given."""
    host = settings["host"]
    bind = f"[{host}]:{settings['port']}" if ":" in host else f"{host or '0.0.0.0'}:{settings['port']}"
    values = {
        "BIND": bind,
        "RUN_DIR": run_dir.resolve(),
        "WORKERS": f"{WORKERS_HOST}:{settings['workers_port']}",
        "THREADS": settings["edge_threads"],
        "MAX_CONNECTIONS": settings["max_connections"],
        "MAX_CONNECTIONS_PER_CLIENT": settings["max_connections_per_client"],
        "BUFFER_BYTES": BUFFER_BYTES,
        "HELD_BODY_BYTES": HELD_BODY_BYTES,
        "MAX_URL_BYTES": MAX_URL_BYTES,
        "WORKER_CONNECTIONS": CONNECTIONS_PER_WORKER * settings["workers"],
        "LARGE_BODY_CONNECTIONS": LARGE_BODY_CONNECTIONS_PER_WORKER * settings["workers"],
        "REQUEST_SECONDS": REQUEST_SECONDS,
        "KEEPALIVE_SECONDS": KEEPALIVE_SECONDS,
        "CLIENT_SECONDS": CLIENT_SECONDS,
        "SERVER_SECONDS": SERVER_SECONDS,
        "QUEUE_SECONDS": QUEUE_SECONDS,
        "RETRIES": RETRIES,
        "STOP_SECONDS": STOP_SECONDS,
    }
    if replicas:
        values |= {"REPLICAS": replicas, "MAX_REPLICAS": MAX_REPLICAS, "REPLICAS_RESOLVER": REPLICAS_RESOLVER}
    return {f"EDGE_{name}": str(value) for name, value in values.items()}


def write_run_files(run_dir: Path):
    """What HAProxy reads from the run folder: the edge's own answers, one raw
    HTTP response per status, in the app's envelope with the app's code for
    that status; and the state map, empty (in the rotation)."""
    (run_dir / STATE_MAP).write_text("")
    errors = run_dir / ERRORS_DIR
    errors.mkdir(parents=True, exist_ok=True)
    for status in REFUSALS:
        body = orjson.dumps(InvalidRequest(REFUSAL_MESSAGES[status], ErrorCode.of_status(status), status).envelope())
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: application/json\r\n"
            f"Cache-Control: no-cache\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        if status in RETURNED_REFUSALS:
            (errors / f"{status}.json").write_bytes(body)
        else:
            (errors / f"{status}.http").write_bytes(head.encode("latin-1") + body)
    leaving = InvalidRequest(LEAVING_MESSAGE, ErrorCode.of_status(503), 503)
    (errors / f"{LEAVING_KEY}.json").write_bytes(orjson.dumps(leaving.envelope()))


def release_settings(release_dir: Path) -> dict:
    """The settings the release was built with, and the environment's overrides now."""
    with open(release_dir / SETTINGS_FILE, encoding="utf-8") as file:
        return override_from_environment(json.load(file))


def check_config(environment: dict):
    """HAProxy's own check of the file with these values; raises with its message."""
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(CONFIG)], env=environment, capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise SystemExit(f"the edge's configuration is refused: {result.stdout}{result.stderr}")


def run(release_dir: Path, replicas: str = ""):
    settings = release_settings(release_dir)
    run_dir = Path(os.environ[RUN_DIR_VARIABLE])
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_run_files(run_dir)
    environment = {**os.environ, **edge_environment(settings, run_dir, replicas)}
    check_config(environment)
    haproxy = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(CONFIG)], env=environment, preexec_fn=_die_with_parent, stdin=subprocess.DEVNULL
    )

    draining = run_dir / DRAINING_FILE
    draining.unlink(missing_ok=True)

    leave_seconds = settings.get("leave_rotation_seconds", 0)
    stopping = threading.Event()

    def stop_gracefully():
        # gunicorn, stopped at the same time, waits while this file is there.
        draining.touch()
        if leave_seconds > 0:
            leave_rotation(run_dir)
            time.sleep(leave_seconds)
        haproxy.send_signal(signal.SIGUSR1)

    def on_stop(signum, frame):
        # Once: the stop is under way (PM2 may send its signal more than once).
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=stop_gracefully, daemon=True).start()

    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGTERM, on_stop)
    threading.Thread(target=report_to_pm2, args=(run_dir,), daemon=True).start()
    status = haproxy.wait()
    draining.unlink(missing_ok=True)
    sys.exit(status)


def leave_rotation(run_dir: Path):
    """Turn the readiness probe to 503 (HAProxy's state map), all else served as before."""
    try:
        answer = command(run_dir, f"add map {run_dir.resolve() / STATE_MAP} {LEAVING_KEY} 1")
    except OSError as error:
        answer = str(error)
    if answer.strip():
        print(f"the edge could not turn its readiness to 503: {answer.strip()}", file=sys.stderr)


def wait_while_draining(run_dir: Path, appear_seconds: float, drain_seconds: float):
    """Wait until the edge has finished what it holds, if it is stopping:
    for its draining file to appear (the edge and gunicorn get PM2's stop at
    about the same time), then to go (at most `drain_seconds`)."""
    draining = run_dir / DRAINING_FILE
    deadline = time.monotonic() + appear_seconds
    while not draining.exists():
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    deadline = time.monotonic() + drain_seconds
    while draining.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _die_with_parent():
    # HAProxy leaves with its launcher (kill -9 of it), never holding the port alone.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def command(run_dir: Path, line: str) -> str:
    """One command on HAProxy's stats socket; its answer."""
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(2)
        connection.connect(str(run_dir / STATS_SOCKET))
        connection.sendall(line.encode() + b"\n")
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    return data.decode()


def stats(run_dir: Path) -> list[dict]:
    """HAProxy's `show stat`: one row per frontend, backend and server."""
    return list(csv.DictReader(io.StringIO(command(run_dir, "show stat").lstrip("# "))))


def summary(rows: list[dict]) -> dict:
    """What `pm2 monit` and `make status` show of the edge."""

    def number(row, name):
        return int(row.get(name) or 0)

    frontends = [row for row in rows if row["svname"] == "FRONTEND"]
    backends = [row for row in rows if row["svname"] == "BACKEND"]
    [checked] = [row for row in rows if row["pxname"] == "readiness" and row["svname"] == "gunicorn"] or [{}]
    return {
        "edge sessions": sum(number(row, "scur") for row in frontends),
        "edge queue": sum(number(row, "qcur") for row in backends),
        "edge retries": sum(number(row, "wretr") for row in backends),
        "edge refused": sum(number(row, "dreq") + number(row, "ereq") for row in frontends),
        "edge 5xx": sum(number(row, "hrsp_5xx") for row in frontends),
        "workers check": checked.get("status", "unknown"),
    }


def report_to_pm2(run_dir: Path):
    from diabetes.pm2_metrics import Pm2Channel

    channel = Pm2Channel.from_environment()
    if channel is None:
        return
    while True:
        time.sleep(1)
        try:
            figures = summary(stats(run_dir))
        except (OSError, ValueError):
            continue
        if not channel.send({name: {"value": value} for name, value in figures.items()}):
            return


def main(argv):
    replicas = ""
    if len(argv) == 4 and argv[0] == "run" and argv[2] == "--replicas":
        argv, replicas = argv[:2], argv[3]
    if len(argv) != 2 or argv[0] not in ("run", "status"):
        raise SystemExit(__doc__)
    if argv[0] == "run":
        run(Path(argv[1]).resolve(), replicas)
    else:
        try:
            figures = summary(stats(Path(argv[1])))
        except OSError as error:
            raise SystemExit(f"the edge is not running ({error})") from None
        print("  ".join(f"{name}: {value}" for name, value in figures.items()))


if __name__ == "__main__":
    main(sys.argv[1:])

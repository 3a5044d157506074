"""Start a generated endpoint script under gunicorn, the production WSGI server."""

import builtins
import os
import sys
from http import HTTPStatus

import orjson

# A release's copy of the project's package, beside its script (diabetes/releases.py).
RELEASE_PACKAGE_DIR = "package"


def running_in_notebook() -> bool:
    """True inside Jupyter, papermill or any IPython kernel, where
    `__name__ == "__main__"` holds too but a server must not start."""
    return hasattr(builtins, "__IPYTHON__")


def exec_gunicorn(script_path: str, app_name: str, host: str, port: int, workers: int, workers_port: int = 0):
    """Replace this process with a gunicorn master serving `app_name` from the
    script at `script_path`, with `workers` processes on host:port, or behind
    the edge on 127.0.0.1:`workers_port` (see `bind_address`).

    The master is a fresh process that never loads the model: each worker
    imports the script itself. XGBoost's OpenMP thread pool does not survive
    a fork (a worker forked from a process that has predicted hangs on its
    first prediction), and a worker that starts later, after a crash or a
    reload, loads the script and the model as they are on disk then. The
    process keeps its pid, so PM2 keeps supervising it.

    Run from a release (build/releases/current/serve.py, see
    diabetes/releases.py), the release's own package and the script's folder
    go first on the workers' path, named through the `current` link: a worker
    that starts after a reload imports the release `current` names, never the
    working tree. gunicorn puts its working directory (the project, where
    diabetes/ is) on the path too, and `--pythonpath` entries ahead of it only
    if they are not on the path already: so they are taken out of the
    PYTHONPATH this process passes on. (A hooks file that imports the package
    at its top would still get the working tree's: gunicorn reads it first.)"""
    script_dir, script_file = os.path.split(os.path.abspath(script_path))
    module = os.path.splitext(script_file)[0]
    release_package = os.path.join(script_dir, RELEASE_PACKAGE_DIR)
    # gunicorn puts each of these first on the path in turn: the last one ends up first.
    python_path = [script_dir, *([release_package] if os.path.isdir(release_package) else [])]
    inherited_path = [
        entry
        for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if entry and os.path.abspath(entry) not in python_path
    ]
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    if inherited_path:
        environment["PYTHONPATH"] = os.pathsep.join(inherited_path)
    os.execve(
        sys.executable,
        [
            sys.executable,
            "-m",
            "gunicorn",
            f"{module}:{app_name}",
            # A file, not a module: gunicorn reads it again on a reload (SIGHUP).
            "--config",
            os.path.join(os.path.dirname(__file__), "gunicorn_config.py"),
            "--pythonpath",
            ",".join(python_path),
            "--bind",
            bind_address(host, port, workers_port),
            "--workers",
            str(workers),
            "--name",
            module,
        ],
        environment,
    )


def bind_address(host: str, port: int, workers_port: int) -> str:
    """Where gunicorn listens: behind the edge (diabetes/edge.py, which PM2
    runs beside it), on the loopback interface at `workers_port`; run on its
    own, at `host`:`port`."""
    from diabetes.edge import BEHIND_EDGE_VARIABLE, WORKERS_HOST

    if os.environ.get(BEHIND_EDGE_VARIABLE):
        return f"{WORKERS_HOST}:{workers_port}"
    return f"{host}:{port}"


def write_server_refusal(sock, status: int, reason: str, message: str):
    """Answer a request that gunicorn itself refused (a malformed request
    line, a head over its limits, an unknown transfer coding) in the project's
    JSON error envelope, and count and log it; gunicorn calls this in place of
    its HTML page (see gunicorn_config.post_fork)."""
    from gunicorn.util import write_nonblock

    from diabetes.contract import ErrorCode, InvalidRequest
    from diabetes.observability import record_server_refusal

    if reason == "Bad Request" and status != 400:
        # gunicorn keeps this reason for some other statuses (501).
        reason = HTTPStatus(status).phrase
    code = ErrorCode.of_status(status)
    body = orjson.dumps(
        InvalidRequest(f"the server could not read the request: {message[:200]}", code, status).envelope()
    )
    try:
        peer = sock.getpeername()[0]
    except (OSError, IndexError, TypeError):
        peer = None
    record_server_refusal(status, code, peer)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    write_nonblock(sock, head.encode("latin-1") + body)

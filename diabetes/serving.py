"""Start a generated endpoint script under gunicorn, the production WSGI server."""

import builtins
import os
import sys

import orjson


def running_in_notebook() -> bool:
    """True inside Jupyter, papermill or any IPython kernel, where
    `__name__ == "__main__"` holds too but a server must not start."""
    return hasattr(builtins, "__IPYTHON__")


def exec_gunicorn(script_path: str, app_name: str, host: str, port: int, workers: int):
    """Replace this process with a gunicorn master serving `app_name` from the
    script at `script_path`, with `workers` processes on host:port.

    The master is a fresh process that never loads the model: each worker
    imports the script itself. XGBoost's OpenMP thread pool does not survive
    a fork (a worker forked from a process that has predicted hangs on its
    first prediction), and a worker that starts later, after a crash or a
    reload, loads the script and the model as they are on disk then. The
    process keeps its pid, so PM2 keeps supervising it."""
    script_dir, script_file = os.path.split(os.path.abspath(script_path))
    module = os.path.splitext(script_file)[0]
    os.execv(sys.executable, [
        sys.executable, "-m", "gunicorn", f"{module}:{app_name}",
        # A file, not a module: gunicorn reads it again on a reload (SIGHUP).
        "--config", os.path.join(os.path.dirname(__file__), "gunicorn_config.py"),
        "--pythonpath", script_dir,
        "--bind", f"{host}:{port}",
        "--workers", str(workers),
        "--name", module,
    ])


def discard_unread_body(environ: dict, most_bytes: int = 64 * 1024 * 1024):
    """Read and drop what the client is still sending of a refused body.

    Answering 413 before a large body has arrived and then closing the
    connection makes the client fail on a broken pipe before it can read the
    answer; reading the rest first (without keeping it, and never more than
    `most_bytes`) lets it get the JSON error."""
    stream = environ.get("wsgi.input")
    remaining = most_bytes
    while stream is not None and remaining > 0:
        chunk = stream.read(min(65536, remaining))
        if not chunk:
            break
        remaining -= len(chunk)



def write_server_refusal(sock, status: int, reason: str, message: str):
    """Answer a request that gunicorn itself refused (a malformed request
    line, a head over its limits, an unknown transfer coding) in the project's
    JSON error envelope, and count and log it; gunicorn calls this in place of
    its HTML page (see gunicorn_config.post_fork)."""
    from gunicorn.util import write_nonblock

    from diabetes.contract import InvalidRequest
    from diabetes.observability import record_server_refusal

    code = reason.lower().replace(" ", "_")
    body = orjson.dumps(InvalidRequest(f"the server could not read the request: {message[:200]}", code,
                                       status).envelope())
    try:
        peer = sock.getpeername()[0]
    except (OSError, IndexError, TypeError):
        peer = None
    record_server_refusal(status, code, peer)
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    write_nonblock(sock, head.encode("latin-1") + body)

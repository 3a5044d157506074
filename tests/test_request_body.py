"""Reading a request's body (diabetes/request_body.py): the time limit held
for the whole body. The real app under real gunicorn with the project's
gevent worker, as the service runs it, trickled a body."""

import json
import select
import signal
import socket
import subprocess
import time

import pytest
import requests
from conftest import PROJECT

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from tests.processes import clean_environment, free_port, kill_process_group

# ---- the real app under real gunicorn, with the project's gevent worker -------------------------
BODY_SECONDS = 2
# The app module gunicorn's worker imports: the service's generated script, with
# the body's deadline shortened before it serves. Set as the module constant it
# is, where the worker reads it: the test needs no setting that operators would
# then see, and the worker runs exactly the service's code otherwise.
APP_MODULE = f"""
from diabetes import request_body

request_body.BODY_SECONDS = {BODY_SECONDS}

from serve import app  # noqa: E402, F401
"""


@pytest.fixture(scope="module")
def server(scripts, trained, tmp_path_factory):
    """gunicorn with the service's config (the gevent worker, its hooks), one
    worker serving the generated script's app; stopped on the way out."""
    folder = tmp_path_factory.mktemp("short-body-deadline")
    (folder / "short_body_deadline.py").write_text(APP_MODULE)
    port = free_port()
    env = clean_environment(DIABETES_MODEL_DIR=str(trained["models_dir"] / "latest"))
    env.pop("NODE_CHANNEL_FD", None)
    log = folder / "gunicorn.log"
    with open(log, "wb") as log_file:
        master = subprocess.Popen(
            [
                str(PROJECT / ".venv/bin/python"),
                "-m",
                "gunicorn",
                "short_body_deadline:app",
                "--config",
                str(PROJECT / "diabetes" / "gunicorn_config.py"),
                "--pythonpath",
                f"{folder},{scripts}",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
            ],
            cwd=PROJECT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert master.poll() is None, f"gunicorn exited with {master.returncode}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "gunicorn did not serve within 60 s"
                time.sleep(0.2)
        yield {"port": port, "url": f"http://127.0.0.1:{port}", "master": master, "log": log}
    finally:
        master.send_signal(signal.SIGTERM)
        try:
            master.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        kill_process_group(master.pid)


def trickled(port: int, head: bytes, first: bytes, pieces: list, interval: float) -> tuple[float, int, dict]:
    """Send the head and `first` at once, then each of `pieces` `interval`
    seconds after the last, until the server answers: when it answered
    (seconds after the head), its status and its JSON."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        started = time.monotonic()
        connection.sendall(head + first)
        pending = list(pieces)
        while True:
            readable, _, _ = select.select([connection], [], [], interval if pending else 30)
            if readable:
                break
            if not pending:
                raise AssertionError("no answer within 30 s of the whole body")
            try:
                connection.sendall(pending.pop(0))
            except OSError:  # the server answered and closed while we sent
                break
        answered = time.monotonic() - started
        received = b""
        while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < content_length(received):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
    head_text, _, body = received.partition(b"\r\n\r\n")
    return answered, int(head_text.split()[1]), json.loads(body)


def content_length(received: bytes) -> int:
    for line in received.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


ARTICLE_JSON = json.dumps(ARTICLE_BODY).encode()
CSV_ROWS = b"1,106,70,28,135,34.2,0.142,22\n" * 4


def request_head(path: str, content_type: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n").encode()


def one_byte_each(data: bytes) -> list:
    return [data[index : index + 1] for index in range(len(data))]


def one_byte_chunks(data: bytes) -> list:
    return [b"1\r\n" + data[index : index + 1] + b"\r\n" for index in range(len(data))] + [b"0\r\n\r\n"]


TRICKLES = {
    # The article's call, its body read in one read: the last 17 bytes a byte every 0.5 s.
    "a small body of known length": (
        request_head(ARTICLE_PATH, "application/json", len(ARTICLE_JSON)),
        ARTICLE_JSON[:-17],
        one_byte_each(ARTICLE_JSON[-17:]),
    ),
    "a chunked body": (
        request_head(ARTICLE_PATH, "application/json", None),
        b"",
        one_byte_chunks(ARTICLE_JSON),
    ),
    "a CSV body, read as lines": (
        request_head("/predict", "text/csv", len(CSV_ROWS)),
        CSV_ROWS[:-17],
        one_byte_each(CSV_ROWS[-17:]),
    ),
}


@pytest.mark.parametrize("head, first, pieces", TRICKLES.values(), ids=TRICKLES.keys())
def test_a_body_trickled_past_the_deadline_gets_408_at_the_deadline(server, head, first, pieces):
    """Each byte comes well within the deadline of the one before: only a
    deadline for the whole body stops it. Trickled to its end, it would take
    8.5 s or more, over four times the deadline."""
    answered, status, envelope = trickled(server["port"], head, first, pieces, interval=0.5)
    assert (status, envelope["code"], envelope["status"]) == (408, "request_timeout", 408)
    assert envelope["error"] == f"the body did not arrive within {BODY_SECONDS} s"
    assert BODY_SECONDS - 0.2 < answered < BODY_SECONDS + 1.5


def test_a_body_sent_at_once_is_answered_as_usual(server):
    response = requests.post(server["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10)
    assert response.status_code == 200 and 0 < response.json()["prediction"] < 1

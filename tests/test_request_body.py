"""Reading a request's body (diabetes/request_body.py): compressed bodies
decompressed a chunk at a time within the size limit, and the time limit
held for the whole body. First the reader on its own, given the body as a
stream; then the real app under real gunicorn with the project's gevent
worker, as the service runs it, trickled a body and sent a zip bomb."""

import gzip
import io
import json
import random
import select
import signal
import socket
import subprocess
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
import requests

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.errors import InvalidRequest
from diabetes.request_body import body_text_lines, read_body
from tests.compressed import CODINGS, ZIP_BOMB_EXPANDS_TO, compressed, small_zip_bomb, zip_bomb
from tests.conftest import PROJECT, needs
from tests.processes import clean_environment, free_port, kill_process_group, process_tree

LIMIT = 4 * 1024 * 1024
# About 300 KB of rows, about 130 KB compressed: several chunks either way.
_DRAWN = random.Random(7)
BODY = json.dumps({"instances": [[round(_DRAWN.uniform(0, 200), 3) for _ in range(8)] for _ in range(5000)]}).encode()


def environ_of(body: bytes, coding: str | None, chunked: bool = False) -> dict:
    """What a WSGI server gives the app: the body's stream, its length unless chunked, its coding."""
    environ = {"wsgi.input": io.BytesIO(body)}
    if not chunked:
        environ["CONTENT_LENGTH"] = str(len(body))
    if coding is not None:
        environ["HTTP_CONTENT_ENCODING"] = coding
    return environ


def refused(environ, limit=LIMIT) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as error:
        read_body(environ, limit)
    return error.value


# ---- the reader on its own ---------------------------------------------------------------------
@pytest.mark.parametrize("header, coding", CODINGS.values(), ids=CODINGS.keys())
@pytest.mark.parametrize("body", [b'{"data": "1,106,70,28,135,34.2,0.142,22"}', BODY], ids=["small", "300 KB"])
@pytest.mark.parametrize("chunked", [False, True], ids=["with a length", "chunked"])
def test_a_compressed_body_reads_as_the_body_it_compresses(header, coding, body, chunked):
    assert read_body(environ_of(compressed(body, coding), header, chunked), LIMIT) == body


@pytest.mark.parametrize("header, coding", CODINGS.values(), ids=CODINGS.keys())
def test_a_compressed_csv_body_reads_as_the_lines_it_compresses(header, coding):
    text = "\ufeffglucose,age\r\n" + "106,22\r\n" * 20000
    lines = body_text_lines(environ_of(compressed(text.encode(), coding), header), LIMIT)
    assert lines.read() == text[1:]


def test_a_gzip_body_of_several_members_reads_as_all_of_them():
    body = gzip.compress(b'{"data": ') + gzip.compress(b'"1,106,70,28,135,34.2,0.142,22"}')
    assert read_body(environ_of(body, "gzip"), LIMIT) == b'{"data": "1,106,70,28,135,34.2,0.142,22"}'


@pytest.mark.parametrize("coding", [None, "identity", "Identity "])
def test_a_body_without_a_coding_is_read_as_it_is(coding):
    assert read_body(environ_of(BODY, coding), LIMIT) == BODY


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, gzip", "deflate, gzip", "gzip;q=1", "*"])
def test_a_body_in_another_coding_or_several_is_refused_with_415_before_it_is_read(coding):
    environ = environ_of(compressed(BODY, "gzip"), coding)
    error = refused(environ)
    assert (error.status, error.code, error.field) == (415, "unsupported_media_type", None)
    assert f"Content-Encoding {coding} is not supported" in error.message and "gzip, deflate" in error.message
    assert environ["wsgi.input"].tell() == 0


NOT_WHAT_ITS_CODING_SAYS = {
    "not gzip at all": ("gzip", BODY, "incorrect header check"),
    "gzip cut short": ("gzip", compressed(BODY, "gzip")[:-100], "it ends before its compressed data does"),
    "gzip cut in its first chunk": ("gzip", compressed(BODY, "gzip")[:5000], "it ends before its compressed data does"),
    "garbage after gzip": ("gzip", compressed(BODY, "gzip") + b"trailing", "incorrect header check"),
    "bytes after deflate": (
        "deflate",
        zlib.compress(BODY) + b"trailing",
        "bytes follow the end of its compressed data",
    ),
    "a zlib header before garbage": ("deflate", b"\x78\x9c" + b"\xff" * 100, "invalid block type"),
    "deflate cut short": ("deflate", zlib.compress(BODY)[:-10], "it ends before its compressed data does"),
}


@pytest.mark.parametrize("header, body, why", NOT_WHAT_ITS_CODING_SAYS.values(), ids=NOT_WHAT_ITS_CODING_SAYS.keys())
def test_a_body_that_is_not_what_its_coding_says_is_refused_with_400_saying_why(header, body, why):
    error = refused(environ_of(body, header))
    assert (error.status, error.code, error.field, error.row) == (400, "invalid_body", None, None)
    assert error.message.startswith(f"the body is not valid {header} data, as its Content-Encoding says: ")
    assert why in error.message


@pytest.mark.parametrize("chunked", [False, True], ids=["with a length", "chunked"])
def test_a_zip_bomb_is_refused_with_413_as_it_passes_the_limit_without_expanding_in_memory(chunked):
    bomb = zip_bomb()
    assert len(bomb) < LIMIT / 3
    tracemalloc.start()
    try:
        started = time.monotonic()
        error = refused(environ_of(bomb, "gzip", chunked))
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (error.status, error.code) == (413, "request_entity_too_large")
    assert error.message == f"the body decompresses to more than {LIMIT} bytes, the most this service accepts: split it"
    # What was read of it (1 MB), the limit's worth of decompressed bytes, and a chunk or two.
    assert peak < 2 * LIMIT
    assert took < 2


def test_the_tests_zip_bomb_is_a_gzip_of_one_gib():
    decompressor, total, data = zlib.decompressobj(31), 0, zip_bomb()
    while data:
        total += len(decompressor.decompress(data, 1024 * 1024))
        data = decompressor.unconsumed_tail
    assert decompressor.eof and total == ZIP_BOMB_EXPANDS_TO


def test_a_few_kilobytes_that_expand_past_the_limit_are_refused_with_413():
    bomb = small_zip_bomb(LIMIT)
    assert len(bomb) < 8 * 1024
    error = refused(environ_of(bomb, "gzip"))
    assert (error.status, error.code) == (413, "request_entity_too_large")
    csv = body_text_lines(environ_of(bomb, "gzip"), LIMIT)
    with pytest.raises(InvalidRequest) as streamed:
        csv.read()
    assert (streamed.value.status, streamed.value.code) == (413, "request_entity_too_large")


def test_a_compressed_body_over_the_limit_before_decompression_is_refused_before_it_is_read():
    body = zlib.compress(bytes(range(256)) * 100, 0)  # stored: larger than what it holds
    environ = environ_of(body, "deflate")
    error = refused(environ, limit=len(body) - 1)
    assert (error.status, error.code) == (413, "request_entity_too_large")
    assert error.message.startswith("the body is larger than")
    assert environ["wsgi.input"].tell() == 0


def test_a_compressed_body_that_decompresses_to_exactly_the_limit_is_read():
    body = bytes(LIMIT)
    assert read_body(environ_of(gzip.compress(body), "gzip", chunked=True), LIMIT) == body


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
@needs("server")
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


def the_worker(server) -> int:
    [worker] = process_tree(server["master"].pid)[1:]
    return worker


def peak_resident_mib(pid: int) -> float:
    """The most memory the process has held in RAM since it started (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


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


@pytest.mark.model
@pytest.mark.server
@pytest.mark.parametrize("head, first, pieces", TRICKLES.values(), ids=TRICKLES.keys())
def test_a_body_trickled_past_the_deadline_gets_408_at_the_deadline(server, head, first, pieces):
    """Each byte comes well within the deadline of the one before: only a
    deadline for the whole body stops it. Trickled to its end, it would take
    8.5 s or more, over four times the deadline."""
    answered, status, envelope = trickled(server["port"], head, first, pieces, interval=0.5)
    assert (status, envelope["code"], envelope["status"]) == (408, "request_timeout", 408)
    assert envelope["error"] == f"the body did not arrive within {BODY_SECONDS} s"
    assert BODY_SECONDS - 0.2 < answered < BODY_SECONDS + 1.5


@pytest.mark.model
@pytest.mark.server
def test_a_body_sent_at_once_is_answered_as_usual(server):
    response = requests.post(server["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10)
    assert response.status_code == 200 and 0 < response.json()["prediction"] < 1


@pytest.mark.model
@pytest.mark.server
def test_a_zip_bomb_gets_413_at_once_and_the_worker_holds_no_more_memory(server):
    worker = the_worker(server)
    requests.post(server["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10).raise_for_status()
    before = peak_resident_mib(worker)
    started = time.monotonic()
    response = requests.post(
        server["url"] + "/predict",
        data=zip_bomb(),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=30,
    )
    took = time.monotonic() - started
    assert response.status_code == 413
    assert response.json() == {
        "error": f"the body decompresses to more than {LIMIT} bytes, the most this service accepts: split it",
        "code": "request_entity_too_large",
        "status": 413,
        "field": None,
        "row": None,
    }
    assert took < 1.5
    assert the_worker(server) == worker, "the worker was replaced"
    # 1 GiB decompressed would be 1,024 MiB more; the body and the limit's worth of it, a few.
    assert peak_resident_mib(worker) - before < 32


@pytest.mark.model
@pytest.mark.server
def test_a_corrupt_gzip_body_gets_400_saying_so(server):
    response = requests.post(
        server["url"] + ARTICLE_PATH,
        data=gzip.compress(ARTICLE_JSON)[:-8],
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=10,
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "the body is not valid gzip data, as its Content-Encoding says: "
        "it ends before its compressed data does",
        "code": "invalid_body",
        "status": 400,
        "field": None,
        "row": None,
    }

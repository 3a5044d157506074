"""Reading a request's body within its size limit and its time limit,
whatever its transfer encoding.

A body sent with Content-Length over the limit is refused before it is read. A
chunked body has no length to check: it is read here chunk by chunk and
refused with 413 as soon as it passes the limit, never cut at the limit and
answered as if it were whole. CSV is read as a stream of lines, so that its
row limit can stop it early. A body that has not fully arrived within
`BODY_SECONDS` is refused with 408: a client that sends its body a byte at a
time holds a connection only that long, however it spaces its bytes.
"""

import io
import sys
import time

from diabetes.contract import ErrorCode, InvalidRequest

# The most a body may take to arrive, all of it. A module constant rather
# than a setting: no deployment has needed another value, and a test that
# needs a shorter one sets it in the worker before the app serves.
BODY_SECONDS = 30
_CHUNK_BYTES = 64 * 1024
# What is read and dropped of a refused body, so that the client, still
# sending, can read the answer (see `discard_unread_body`).
_DISCARD_BYTES = 64 * 1024 * 1024
_DISCARD_SECONDS = 5


class LimitedBody(io.RawIOBase):
    """The request's stream, refusing to yield more than `limit` bytes or to
    wait for them past `seconds`. The deadline is kept by the connection's
    socket (gunicorn's `gunicorn.socket` in the WSGI environ), whose timeout
    each read sets to the time left."""

    def __init__(self, environ: dict, limit: int, seconds: float | None = None):
        if declared_length(environ) > limit:
            raise body_too_large(limit)
        self.stream, self.socket = environ["wsgi.input"], environ.get("gunicorn.socket")
        self.limit, self.seen = limit, 0
        self.deadline = time.monotonic() + (BODY_SECONDS if seconds is None else seconds)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise body_too_slow()
        chunk = _read_within(self.stream, self.socket, min(len(buffer), _CHUNK_BYTES), left)
        self.seen += len(chunk)
        if self.seen > self.limit:
            raise body_too_large(self.limit)
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _read_within(stream, socket, size: int, seconds: float) -> bytes:
    """Up to `size` bytes of the body (fewer only at its end), or 408 when
    they take longer than `seconds` to arrive, all of them.

    The server's `read(size)` waits for the socket as many times as the bytes
    take to come, so a socket's timeout would bound each wait, not the read: a
    byte every few seconds would never time out. In a gevent worker, whose
    sockets yield to gevent's loop while they wait, a gevent Timeout bounds the
    whole read. Elsewhere (a test, another server) the socket's timeout is
    the bound there is."""
    timeout = _gevent_timeout()
    if timeout is not None:
        timer = timeout(seconds)
        timer.start()
        try:
            return stream.read(size)
        except timeout as error:
            if error is not timer:
                raise
            raise body_too_slow() from None
        finally:
            timer.close()
    try:
        if socket is not None:
            socket.settimeout(seconds)
        return stream.read(size)
    except TimeoutError:
        raise body_too_slow() from None
    finally:
        if socket is not None:
            socket.settimeout(None)


def _gevent_timeout():
    """gevent's Timeout when this process's sockets are gevent's (a gunicorn
    gevent worker patched them before it loaded the app), else None. gevent
    is never imported here: a notebook's kernel must not load it."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return None
    return sys.modules["gevent"].Timeout


def declared_length(environ: dict) -> int:
    """The body's Content-Length, 0 when it has none (a chunked body)."""
    declared = environ.get("CONTENT_LENGTH") or "0"
    return int(declared) if declared.isdigit() else 0


def body_too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"the body is larger than {limit} bytes, the most this service accepts: split it",
        ErrorCode.REQUEST_ENTITY_TOO_LARGE,
        413,
    )


def body_too_slow() -> InvalidRequest:
    return InvalidRequest(f"the body did not arrive within {BODY_SECONDS} s", ErrorCode.REQUEST_TIMEOUT, 408)


def read_body(environ: dict, limit: int) -> bytes:
    """All of the body, or an `InvalidRequest`: 413 past `limit` bytes, 408
    past the time limit."""
    length = declared_length(environ)
    if 0 < length <= min(limit, _CHUNK_BYTES):
        # Most requests: a small body of known length, in one read (the
        # server never gives more than the length).
        return _read_within(environ["wsgi.input"], environ.get("gunicorn.socket"), length, BODY_SECONDS)
    body = LimitedBody(environ, limit)
    chunks = []
    while chunk := body.read(_CHUNK_BYTES):
        chunks.append(chunk)
    return b"".join(chunks)


def body_text_lines(environ: dict, limit: int):
    """The body as lines of UTF-8 text (a leading byte-order mark, as Excel
    writes it, is dropped), read as they arrive."""
    return io.TextIOWrapper(
        io.BufferedReader(LimitedBody(environ, limit), _CHUNK_BYTES), encoding="utf-8-sig", errors="strict", newline=""
    )


def discard_unread_body(environ: dict):
    """Read and drop what the client is still sending of a refused body.

    Answering 413 before a large body has arrived and then closing the
    connection makes the client fail on a broken pipe before it can read the
    answer; reading the rest first (without keeping it) lets it get the JSON
    error. Never more than a bounded amount or time: a body declared larger
    than that is not read at all (the server closes the connection when its
    keep-alive timeout passes without a next request)."""
    if declared_length(environ) > _DISCARD_BYTES:
        return
    body = LimitedBody(environ, _DISCARD_BYTES, _DISCARD_SECONDS)
    try:
        while body.read(_CHUNK_BYTES):
            pass
    except (InvalidRequest, OSError):
        pass

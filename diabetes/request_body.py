"""Reading a request's body within its size limit and its time limit,
whatever its transfer encoding and its content coding.

A body sent with Content-Length over the limit is refused before it is read. A
chunked body has no length to check: it is read here chunk by chunk and
refused with 413 as soon as it passes the limit, never cut at the limit and
answered as if it were whole. CSV is read as a stream of lines, so that its
row limit can stop it early. A body that has not fully arrived within
`BODY_SECONDS` is refused with 408: a client that sends its body a byte at a
time holds a connection only that long, however it spaces its bytes.

A body may be compressed (`Content-Encoding: gzip` or `deflate`, as
tritonclient's `request_compression_algorithm` sends it). It is decompressed
as it is read, a chunk at a time, and the limit holds for the compressed
bytes and for the decompressed ones alike: a small body that would expand to
gigabytes (a zip bomb) is refused with 413 once it has expanded past the
limit, never expanded in memory.
"""

import io
import sys
import time
import zlib

from diabetes.errors import ErrorCode, InvalidRequest

# The most a body may take to arrive, all of it. A module constant rather
# than a setting: no deployment has needed another value, and a test that
# needs a shorter one sets it in the worker before the app serves.
BODY_SECONDS = 30
_CHUNK_BYTES = 64 * 1024
# The content codings read (RFC 9110 8.4.1; x-gzip is gzip), by how zlib reads
# each: gzip's header and trailer (31), and deflate's zlib wrapper (15), or no
# wrapper at all (-15), which some clients send as deflate all the same.
_GZIP, _ZLIB, _RAW_DEFLATE = 31, 15, -15
CODINGS = ("gzip", "deflate")
_CODING_NAMES = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
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


def body_too_large(limit: int, decompressed: bool = False) -> InvalidRequest:
    what = "decompresses to more" if decompressed else "is larger"
    return InvalidRequest(
        f"the body {what} than {limit} bytes, the most this service accepts: split it",
        ErrorCode.REQUEST_ENTITY_TOO_LARGE,
        413,
    )


def body_too_slow() -> InvalidRequest:
    return InvalidRequest(f"the body did not arrive within {BODY_SECONDS} s", ErrorCode.REQUEST_TIMEOUT, 408)


def content_coding(environ: dict) -> str | None:
    """The body's content coding, gzip or deflate; None when it is sent as it
    is (no Content-Encoding, or identity); 415 for any other, or several."""
    header = environ.get("HTTP_CONTENT_ENCODING")
    if header is None:
        return None
    coding = header.strip(" \t").lower()
    if coding in ("", "identity"):
        return None
    if coding in _CODING_NAMES:
        return _CODING_NAMES[coding]
    raise InvalidRequest(
        f"Content-Encoding {header[:40]} is not supported: send the body uncompressed, or with one of "
        f"{', '.join(CODINGS)}",
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        415,
    )


def read_body(environ: dict, limit: int) -> bytes:
    """All of the body, decompressed, or an `InvalidRequest`: 413 past `limit`
    bytes (compressed or not), 408 past the time limit, 415 for a content
    coding other than gzip and deflate, 400 for a compressed body that does
    not decompress."""
    coding = content_coding(environ)
    length = declared_length(environ)
    if coding is None and 0 < length <= min(limit, _CHUNK_BYTES):
        # Most requests: a small body of known length, in one read (the
        # server never gives more than the length).
        return _read_within(environ["wsgi.input"], environ.get("gunicorn.socket"), length, BODY_SECONDS)
    body = LimitedBody(environ, limit)
    if coding is not None:
        return b"".join(decompressed_chunks(body, coding, limit))
    chunks = []
    while chunk := body.read(_CHUNK_BYTES):
        chunks.append(chunk)
    return b"".join(chunks)


def body_text_lines(environ: dict, limit: int):
    """The body as lines of UTF-8 text (a leading byte-order mark, as Excel
    writes it, is dropped), read (and decompressed) as they arrive."""
    coding = content_coding(environ)
    body = LimitedBody(environ, limit)
    if coding is not None:
        body = DecompressedBody(body, coding, limit)
    return io.TextIOWrapper(io.BufferedReader(body, _CHUNK_BYTES), encoding="utf-8-sig", errors="strict", newline="")


def decompressed_chunks(compressed: io.RawIOBase, coding: str, limit: int):
    """The body that `compressed` gives, decompressed a chunk of at most
    64 KiB at a time: nothing is expanded further than the chunk in hand, and
    413 as soon as the decompressed bytes pass `limit`. 400 when the body is
    not what its coding says, or ends before its compressed data does. A gzip
    body may hold several members, one after the other (RFC 1952), as
    `gzip.decompress` reads them."""
    decompressor, seen, started = None, 0, False
    data = b""  # compressed bytes read and not yet decompressed
    while True:
        if not data:
            data = compressed.read(_CHUNK_BYTES)
            if not data:
                break
        if decompressor is None:
            if started and coding != "gzip":
                raise _not_compressed(coding, f"{len(data)} or more bytes follow the end of its compressed data")
            decompressor, started = zlib.decompressobj(_wbits(coding, data)), True
        try:
            chunk = decompressor.decompress(data, _CHUNK_BYTES)
        except zlib.error as error:
            raise _not_compressed(coding, str(error).rpartition(": ")[2]) from None
        seen += len(chunk)
        if seen > limit:
            raise body_too_large(limit, decompressed=True)
        if chunk:
            yield chunk
        if decompressor.eof:
            data, decompressor = decompressor.unused_data, None
        else:
            data = decompressor.unconsumed_tail
    # All of the compressed bytes are in: what the decompressor still holds.
    while decompressor is not None and not decompressor.eof:
        try:
            chunk = decompressor.decompress(b"", _CHUNK_BYTES)
        except zlib.error as error:
            raise _not_compressed(coding, str(error).rpartition(": ")[2]) from None
        if not chunk:
            raise _not_compressed(coding, "it ends before its compressed data does")
        seen += len(chunk)
        if seen > limit:
            raise body_too_large(limit, decompressed=True)
        yield chunk


def _wbits(coding: str, first_bytes: bytes) -> int:
    """How zlib is to read a body of `coding` that starts with `first_bytes`:
    deflate is zlib-wrapped when its first two bytes are a zlib header (RFC
    1950: compression method 8, a window of at most 32 KiB, a multiple of 31),
    raw deflate otherwise."""
    if coding == "gzip":
        return _GZIP
    if len(first_bytes) >= 2 and first_bytes[0] & 0x0F == 8 and first_bytes[0] >> 4 <= 7:
        if (first_bytes[0] << 8 | first_bytes[1]) % 31 == 0:
            return _ZLIB
    return _RAW_DEFLATE


def _not_compressed(coding: str, why: str) -> InvalidRequest:
    return InvalidRequest(
        f"the body is not valid {coding} data, as its Content-Encoding says: {why}", ErrorCode.INVALID_BODY
    )


class DecompressedBody(io.RawIOBase):
    """A compressed body as a stream of its decompressed bytes (see `decompressed_chunks`)."""

    def __init__(self, compressed: io.RawIOBase, coding: str, limit: int):
        self.chunks = decompressed_chunks(compressed, coding, limit)
        self.left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.left:
            chunk = next(self.chunks, None)
            if chunk is None:
                return 0
            self.left = memoryview(chunk)
        size = min(len(buffer), len(self.left))
        buffer[:size] = self.left[:size]
        self.left = self.left[size:]
        return size


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

"""Reading a request's body within its size limit, whatever its transfer
encoding.

A body sent with Content-Length over the limit is refused before it is read
(Flask's MAX_CONTENT_LENGTH). A chunked body has no length to check: it is
read here chunk by chunk and refused with 413 as soon as it passes the limit,
never cut at the limit and answered as if it were whole. CSV is read as a
stream of lines, so that its row limit can stop it early.
"""

import io

from diabetes.contract import ErrorCode, InvalidRequest

_CHUNK_BYTES = 64 * 1024


class LimitedBody(io.RawIOBase):
    """The request's stream, refusing to yield more than `limit` bytes."""

    def __init__(self, stream, limit: int):
        self.stream, self.limit, self.seen = stream, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.stream.read(min(len(buffer), _CHUNK_BYTES))
        self.seen += len(chunk)
        if self.seen > self.limit:
            raise body_too_large(self.limit)
        buffer[:len(chunk)] = chunk
        return len(chunk)


def body_too_large(limit: int) -> InvalidRequest:
    return InvalidRequest(f"the body is larger than {limit} bytes, the most this service accepts: split it",
                          ErrorCode.REQUEST_ENTITY_TOO_LARGE, 413)


def read_body(stream, limit: int) -> bytes:
    """All of the body, or a 413 `InvalidRequest` past `limit` bytes."""
    body = LimitedBody(stream, limit)
    chunks = []
    while chunk := body.read(_CHUNK_BYTES):
        chunks.append(chunk)
    return b"".join(chunks)


def body_text_lines(stream, limit: int):
    """The body as lines of UTF-8 text (a leading byte-order mark, as Excel
    writes it, is dropped), read as they arrive."""
    return io.TextIOWrapper(io.BufferedReader(LimitedBody(stream, limit), _CHUNK_BYTES), encoding="utf-8-sig",
                            errors="strict", newline="")

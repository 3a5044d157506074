"""The worker's answers as gunicorn writes them (diabetes/gevent_worker.py): a
small answer leaves in one send, and every answer still reads as HTTP says,
whatever its body: small, large, none (HEAD, 304), chunked, cut at its
Content-Length. Real gunicorn parses each request from a socket and writes
the answer into it; a client reads it from the other end."""

import email.utils
import http.client
import socket
import time

import pytest
from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from diabetes.gevent_worker import HeadWithBodyResponse, HttpDateOfThisSecond

LARGE = b"x" * (200 * 1024)


class CountedSocket(socket.socket):
    """A real socket that counts the sends of what it is given."""

    sends = 0

    def sendall(self, data, *flags):
        self.sends += 1
        return super().sendall(data, *flags)


def answer(monkeypatch, method, status, headers, body_parts):
    """gunicorn's exchange of one request on a connection: what the client reads, and the server's sends."""
    monkeypatch.setattr(wsgi, "Response", HeadWithBodyResponse)
    server_end, client_end = socket.socketpair()
    server = CountedSocket(fileno=server_end.detach())
    client_end.sendall(f"{method} /katana-ml HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    config = Config()
    request = next(iter(RequestParser(config, server, ("127.0.0.1", 40000))))
    response, _ = wsgi.create(request, server, ("127.0.0.1", 40000), ("127.0.0.1", 5000), config)
    response.start_response(status, headers)
    for part in body_parts:
        response.write(part)
    response.close()
    server.shutdown(socket.SHUT_WR)
    read = http.client.HTTPResponse(client_end, method=method)
    read.begin()
    body = read.read()
    client_end.close()
    server.close()
    return read, body, server.sends


def test_a_small_answer_leaves_in_one_send(monkeypatch):
    read, body, sends = answer(
        monkeypatch,
        "POST",
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", "16")],
        [b'{"prediction":1}'],
    )
    assert (read.status, read.getheader("Content-Type"), body, sends) == (
        200,
        "application/json",
        b'{"prediction":1}',
        1,
    )


def test_an_answer_to_head_is_its_head_alone(monkeypatch):
    read, body, sends = answer(
        monkeypatch,
        "HEAD",
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", "16")],
        [b'{"prediction":1}'],
    )
    assert (read.status, read.getheader("Content-Length"), body, sends) == (200, "16", b"", 1)


def test_an_answer_without_a_body_is_its_head(monkeypatch):
    read, body, sends = answer(monkeypatch, "GET", "304 Not Modified", [], [])
    assert (read.status, body, sends) == (304, b"", 1)


def test_a_large_body_follows_its_head(monkeypatch):
    read, body, sends = answer(monkeypatch, "GET", "200 OK", [("Content-Length", str(len(LARGE)))], [LARGE])
    assert (read.status, body, sends) == (200, LARGE, 2)


@pytest.mark.parametrize("parts", [[b"ab", b"cd"], [b"abcd"], [b"", b"abcd"]])
def test_a_body_of_unknown_length_is_chunked_as_gunicorn_chunks_it(monkeypatch, parts):
    read, body, _ = answer(monkeypatch, "GET", "200 OK", [("Content-Type", "text/plain")], parts)
    assert (read.status, read.getheader("Transfer-Encoding"), body) == (200, "chunked", b"abcd")


def test_a_body_longer_than_its_content_length_is_cut_there(monkeypatch):
    read, body, sends = answer(monkeypatch, "GET", "200 OK", [("Content-Length", "3")], [b"abcdef", b"gh"])
    assert (read.status, body, sends) == (200, b"abc", 1)


def test_the_date_is_the_current_second_as_gunicorn_writes_it():
    date = HttpDateOfThisSecond()
    before, text, after = int(time.time()), date(), int(time.time())
    assert text in {util.http_date(before), util.http_date(after)}
    assert abs(email.utils.parsedate_to_datetime(text).timestamp() - time.time()) < 2
    assert date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"

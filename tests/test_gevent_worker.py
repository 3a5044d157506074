"""The worker's answers as gunicorn writes them (diabetes/gevent_worker.py): a
small answer leaves in one send, and every answer still reads as HTTP says,
whatever its body: small, large, none (HEAD, 304), chunked, cut at its
Content-Length. Real gunicorn parses each request from a socket and writes
the answer into it; a client reads it from the other end."""

import email.utils
import http.client
import ipaddress
import socket
import time

import pytest
from gunicorn import glogging, util
from gunicorn.config import Config
from gunicorn.http import message, wsgi
from gunicorn.http.parser import RequestParser

from diabetes.gevent_worker import (
    HeadWithBodyResponse,
    HttpDateOfThisSecond,
    OneErrorLogStream,
    PeerCheckedOnce,
    send_all,
    settle,
)

LARGE = b"x" * (200 * 1024)


class CountedSocket(socket.socket):
    """A real socket that counts the sends of what it is given."""

    sends = 0

    def send(self, data, *flags):
        self.sends += 1
        return super().send(data, *flags)

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


class TricklingSocket(socket.socket):
    """A real socket each of whose sends takes 1,000 bytes at most."""

    def send(self, data, *flags):
        return super().send(bytes(data[:1000]), *flags)


def test_what_a_first_send_leaves_is_sent_after_it():
    server_end, client_end = socket.socketpair()
    server = TricklingSocket(fileno=server_end.detach())
    data = bytes(range(256)) * 40
    send_all(server, data)
    server.close()
    received = b"".join(iter(lambda: client_end.recv(65536), b""))
    client_end.close()
    assert received == data


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


@pytest.mark.parametrize("allow_list", [["127.0.0.1", "::1"], ["*"], ["10.0.0.0/8", "fd00::/8"], []])
@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "::1", "fd00::7", "192.168.1.1", "not an address"])
def test_a_peer_is_checked_as_gunicorn_checks_it_once_per_address(allow_list, address):
    networks = [ipaddress.ip_network(allowed) for allowed in allow_list if allowed != "*"]
    checks = []

    def gunicorns_check(*arguments):
        checks.append(arguments)
        return message._ip_in_allow_list(*arguments)

    checked_once = PeerCheckedOnce(gunicorns_check)
    expected = message._ip_in_allow_list(address, allow_list, networks)
    assert [checked_once(address, allow_list, networks) for _ in range(3)] == [expected] * 3
    assert len(checks) == 1
    assert checked_once(address, ["192.168.0.0/16"], [ipaddress.ip_network("192.168.0.0/16")]) == (
        address == "192.168.1.1"
    )


def test_the_peers_checked_once_are_bounded():
    checked_once = PeerCheckedOnce()
    for number in range(PeerCheckedOnce.MAX_ADDRESSES + 10):
        checked_once(str(ipaddress.ip_address(number)), ["127.0.0.1"], [ipaddress.ip_network("127.0.0.1")])
    assert len(checked_once.answers) <= PeerCheckedOnce.MAX_ADDRESSES


def test_a_workers_requests_share_one_error_stream_that_follows_the_reopened_log(monkeypatch, tmp_path):
    error_log = tmp_path / "error.log"
    config = Config()
    config.set("errorlog", str(error_log))
    logger = glogging.Logger(config)
    try:
        monkeypatch.setattr(wsgi, "WSGIErrorsWrapper", OneErrorLogStream())
        first, second = (wsgi.base_environ(config)["wsgi.errors"] for _ in range(2))
        assert first is second
        first.write("before the rotation\n")
        # As a log rotation does: the file moved away, then the log reopened (gunicorn's USR1).
        error_log.rename(tmp_path / "error.log.1")
        logger.reopen_files()
        second.write("after the rotation\n")
        assert "before the rotation" in (tmp_path / "error.log.1").read_text()
        assert error_log.read_text() == "after the rotation\n"
    finally:
        for handler in logger.error_log.handlers + logger.access_log.handlers:
            handler.close()
        logger.error_log.handlers.clear()
        logger.access_log.handlers.clear()


def test_a_settled_config_gives_every_setting_as_before_without_looking_it_up(monkeypatch):
    config = Config()
    config.set("keepalive", 7)
    config.set("forwarded_allow_ips", "10.0.0.0/8")
    before = {name: getattr(config, name) for name in config.settings}
    settle(config)
    looked_up = []
    monkeypatch.setattr(Config, "__getattr__", lambda self, name: looked_up.append(name))
    assert {name: getattr(config, name) for name in config.settings} == before
    assert looked_up == []
    assert config.keepalive == 7

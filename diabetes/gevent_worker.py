"""gunicorn's gevent worker, made fair to every connection.

Asynchronous workers hold a body that streams in slowly (one larger than the
edge holds, diabetes/edge.py) in a greenlet instead of blocking a whole
worker on it (gunicorn_config.py); a worker yields after each request, so
that one busy connection does not delay the others; each small answer is sent
in one piece, with a Date formatted once per second; and what gunicorn would
work out anew for each request from what does not change (its settings, the
peer's standing against an allow list, the error log's stream) is worked out
once. (A fairness patch of gunicorn's accepting, which let a burst of new
client connections queue ahead of a probe, went with the edge: the workers
see only the edge's few reused connections, and probes have a lane of their
own there.)
Imported by gunicorn's processes only: gevent must not load into a
notebook's kernel.
"""

import socket
import time

import gevent
from gunicorn import util
from gunicorn.http import message, wsgi
from gunicorn.workers import ggevent

# Bodies up to this size are copied behind the head to go in the same send.
_SENT_WITH_THE_HEAD_BYTES = 64 * 1024


class _HeadCatcher:
    """Takes what gunicorn's `send_headers` writes, instead of a socket."""

    head = b""

    def sendall(self, data: bytes):
        self.head += data


class HeadWithBodyResponse(wsgi.Response):
    """gunicorn's answer, with its head sent together with the body's first
    bytes: one send, so one TCP segment for a small answer, where gunicorn
    sends two (the head, then the body) and, with the TCP_NODELAY it sets, the
    client's kernel and the client are woken twice. Only a body written by
    `write` waits: a chunked answer, a file sent with sendfile and an answer
    with no body (HEAD, 204, 304) go as gunicorn sends them."""

    _held_head = None  # b"": hold the head at the next send_headers; then the head held

    def write(self, arg):
        if not self.headers_sent and not self.chunked and len(arg) <= _SENT_WITH_THE_HEAD_BYTES:
            self._held_head = b""
        try:
            super().write(arg)
        finally:
            # Still held when no body was sent (HEAD; nothing left of Content-Length).
            self._send_held_head()

    def send_headers(self):
        if self._held_head != b"" or self.headers_sent:
            return super().send_headers()
        socket, self.sock = self.sock, _HeadCatcher()
        try:
            super().send_headers()
            self._held_head = self.sock.head
        finally:
            self.sock = socket

    def _emit_body(self, data):
        head, self._held_head = self._held_head, None
        if head:
            data = head + data
        if self.chunked:
            super()._emit_body(data)
        else:
            send_all(self.sock, data)

    def _send_held_head(self):
        head, self._held_head = self._held_head, None
        if head:
            send_all(self.sock, head)


def send_all(sock, data: bytes):
    """`sock.sendall(data)`, trying one send first: gevent's `sendall` asks
    the socket for its buffer's size (a system call) and makes a view of the
    data at every call, where one send takes a small answer whole."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


class HttpDateOfThisSecond:
    """gunicorn's `util.http_date` (every answer's Date header, to the
    second), formatted once per second instead of at every answer."""

    def __init__(self, format_date=util.http_date):
        self.format_date = format_date
        self.second, self.text = None, ""

    def __call__(self, timestamp=None) -> str:
        if timestamp is not None:
            return self.format_date(timestamp)
        second = int(time.time())
        if second != self.second:
            self.second, self.text = second, self.format_date(second)
        return self.text


class PeerCheckedOnce:
    """gunicorn's check of a peer's address against an allow list
    (`forwarded_allow_ips`, `proxy_allow_ips`), made once per address and
    list: gunicorn parses each request's peer address into an `ipaddress`
    object and tests it against the list's networks again. The answers for at
    most MAX_ADDRESSES addresses are kept, so that no client can grow them
    without bound."""

    MAX_ADDRESSES = 4096

    def __init__(self, check=message._ip_in_allow_list):
        self.check, self.answers = check, {}

    def __call__(self, address: str, allow_list, networks) -> bool:
        key = (address, tuple(allow_list))
        answer = self.answers.get(key)
        if answer is None:
            if len(self.answers) >= self.MAX_ADDRESSES:
                self.answers.clear()
            answer = self.answers[key] = self.check(address, allow_list, networks)
        return answer


_GunicornErrorsWrapper = wsgi.WSGIErrorsWrapper


class ErrorLogStream(_GunicornErrorsWrapper):
    """A request's `wsgi.errors`: gunicorn's, whose streams (the error log's)
    are looked up when the app writes to it, which it seldom does, rather
    than when the request arrives; so one serves every request of a worker,
    and follows the log when it is reopened."""

    def __init__(self, cfg):
        self.cfg = cfg

    @property
    def streams(self) -> list:
        return _GunicornErrorsWrapper(self.cfg).streams


class OneErrorLogStream:
    """Stands for gunicorn's `WSGIErrorsWrapper` class where each request's
    environ is made: gives the worker's one `ErrorLogStream`."""

    def __init__(self):
        self.stream = None

    def __call__(self, cfg) -> ErrorLogStream:
        if self.stream is None or self.stream.cfg is not cfg:
            self.stream = ErrorLogStream(cfg)
        return self.stream


def settle(config):
    """gunicorn's settings made plain attributes of its `Config`, which
    otherwise finds each one through `__getattr__` and the setting's `get()`,
    some twenty times per request. A worker's settings never change (a reload
    starts new workers). The few settings that share a name with one of the
    class's properties are still read through the property."""
    names = set(dir(type(config)))
    vars(config).update((name, setting.get()) for name, setting in config.settings.items() if name not in names)


class FairGeventWorker(ggevent.GeventWorker):
    def run(self):
        # Each request's response, its Date, its peer's standing and its
        # environ's error stream are made from these module-level names.
        settle(self.cfg)
        wsgi.Response = HeadWithBodyResponse
        util.http_date = HttpDateOfThisSecond()
        message._ip_in_allow_list = PeerCheckedOnce()
        wsgi.WSGIErrorsWrapper = OneErrorLogStream()
        super().run()

    # The connections this worker holds, and those of them inside a request.
    open_connections: set = set()
    busy_connections: set = set()

    def init_process(self):
        self.open_connections, self.busy_connections = set(), set()
        super().init_process()

    def handle(self, listener, client, address):
        self.open_connections.add(client)
        try:
            super().handle(listener, client, address)
        finally:
            self.open_connections.discard(client)

    def handle_exit(self, sig, frame):
        super().handle_exit(sig, frame)
        gevent.spawn(self.close_idle_connections)

    def close_idle_connections(self):
        """On its way out (a reload, a stop, its memory cap), a worker closes
        the kept-alive connections that wait for a next request. Otherwise
        the edge, which keeps its connections to the workers open for reuse,
        would send each one more request to this worker, answered by the
        release it was started from, and the worker would wait out its
        graceful timeout for them. The edge opens new connections, to live
        workers; a request that crosses the close is sent again by it."""
        for connection in list(self.open_connections - self.busy_connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_request(self, listener_name, request, sock, address):
        self.busy_connections.add(sock)
        try:
            super().handle_request(listener_name, request, sock, address)
        finally:
            self.busy_connections.discard(sock)
        # A keep-alive client that sends its next request as soon as it has
        # an answer finds this greenlet still reading, so it never waits and
        # never yields: one connection could keep the worker for itself.
        # Yielding after each request serves the connections in turn.
        gevent.sleep(0)

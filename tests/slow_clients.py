"""Clients that hold connections without finishing a request: idle ones (a
browser's preconnect, an HTTP client's pool) and slow-header ones (a
slowloris), for the hostile-client and reliability tests.

They run in a process of their own: hundreds of threads in the test's
process would make its own measuring requests wait for the interpreter lock,
and the test would time itself rather than the service."""

import json
import multiprocessing
import selectors
import socket
import threading
import time
from contextlib import contextmanager

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH


@contextmanager
def idle_and_slow_connections(port: int, idle: int, slow: int, byte_every: float = 1.0):
    """Keep `idle` connections open that send nothing, and `slow` ones that
    send a request's head a byte every `byte_every` seconds, for as long as
    the block runs: each one the server closes is opened again. Yields the
    count of connections the server closed, by kind (filled in when the block
    ends)."""
    with _attacker(
        _hold_connections, (port, idle, slow, byte_every), 60, f"{idle} idle and {slow} slow connections to port {port}"
    ) as closed:
        yield closed


@contextmanager
def _attacker(target, arguments: tuple, open_seconds: float, what: str):
    """`target(*arguments, opened, stop, results)` in a process of its own,
    for as long as the block runs; yields the dict it puts in `results` when
    told to stop (filled in when the block ends)."""
    context = multiprocessing.get_context("spawn")
    opened, stop, results = context.Event(), context.Event(), context.Queue()
    attacker = context.Process(target=target, args=(*arguments, opened, stop, results), daemon=True)
    attacker.start()
    closed = {}
    try:
        if not opened.wait(timeout=open_seconds):
            raise TimeoutError(f"could not open {what}")
        yield closed
    finally:
        stop.set()
        if attacker.is_alive() or not results.empty():
            closed.update(results.get(timeout=60))
        attacker.join(timeout=10)
        if attacker.is_alive():
            attacker.kill()


def _hold_connections(port, idle, slow, byte_every, opened, stop, results):
    closed = {"idle": 0, "slow": 0}
    first_connections = threading.Barrier(max(idle + slow, 1), action=opened.set)
    if idle + slow == 0:
        opened.set()
    sockets = set()

    def hold(kind):
        first = True
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=None) as connection:
                    sockets.add(connection)
                    if first:
                        first = False
                        first_connections.wait()
                    if kind == "idle":
                        connection.recv(1)  # returns b"" when the server closes
                    else:
                        trickle(connection)
                    sockets.discard(connection)
            except OSError:
                pass
            if not stop.is_set():
                closed[kind] += 1
                stop.wait(0.05)

    def trickle(connection):
        head = f"POST /katana-ml/api/v1.0/diabetes HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Padding: " + "a" * 4000
        for byte in head.encode():
            if stop.wait(byte_every):
                return
            connection.sendall(bytes([byte]))

    threads = [
        threading.Thread(target=hold, args=(kind,), daemon=True)
        for kind, count in (("idle", idle), ("slow", slow))
        for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    stop.wait()
    results.put(dict(closed))
    for connection in list(sockets):
        connection.close()


def slow_article_call(port: int, pause: float) -> str:
    """The article's call, its body sent in two parts `pause` seconds apart:
    in flight for that long. Returns the answer's status line."""
    body = json.dumps(ARTICLE_BODY).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(
            f"POST {ARTICLE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(pause)
        connection.sendall(body[10:])
        return connection.makefile("rb").readline().decode().strip()


def worst_latency(send, seconds: float) -> float:
    """Call `send()` (which must raise on a failed answer) repeatedly for
    `seconds`; the slowest call's time in seconds."""
    worst, deadline = 0.0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        send()
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    return worst


@contextmanager
def slow_and_held_bodies(port: int, slow: int, held: int, per_address: int = 200, held_bytes: int = 4 << 20):
    """Keep `slow` connections that send a head and part of a small body,
    then a byte every 20 s, and `held` ones that announce a `held_bytes` body
    and send all of it but the last byte (as fast as the server takes it),
    for as long as the block runs; each one the server closes is opened
    again. They connect from 127.0.0.2 and up, `per_address` from each, so
    that the edge's per-address limit sees them apart from the measuring
    client. Yields the count of connections the server closed, by kind."""
    with _attacker(
        _hold_bodies,
        (port, slow, held, per_address, held_bytes),
        120,
        f"{slow} slow and {held} held bodies to port {port}",
    ) as closed:
        yield closed


def _hold_bodies(port, slow, held, per_address, held_bytes, opened, stop, results):
    body = json.dumps(ARTICLE_BODY).encode()
    heads = {
        "slow": (
            f"POST {ARTICLE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body[:10],
        "held": (
            f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/csv\r\n"
            f"Content-Length: {held_bytes}\r\n\r\n"
        ).encode(),
    }
    closed = {"slow": 0, "held": 0}
    chunk = b" " * 65536
    connections = {}  # socket -> [kind, bytes of the body sent, next byte due (slow)]
    selector = selectors.DefaultSelector()

    def open_one(index, kind):
        connection = socket.socket()
        try:
            connection.bind((f"127.0.0.{2 + index // per_address}", 0))
            connection.connect(("127.0.0.1", port))
            connection.sendall(heads[kind])
        except OSError:
            connection.close()
            return
        connection.setblocking(False)
        connections[connection] = [kind, 0, time.monotonic() + 20, index]
        selector.register(connection, selectors.EVENT_READ)

    kinds = [("slow", index) for index in range(slow)] + [("held", slow + index) for index in range(held)]
    for kind, index in kinds:
        open_one(index, kind)
    opened.set()
    while not stop.is_set():
        for key, _ in selector.select(timeout=0.05):
            # Anything to read is an answer (a 408, a 413) or the close: open it again.
            connection = key.fileobj
            kind, _, _, index = connections.pop(connection)
            selector.unregister(connection)
            connection.close()
            closed[kind] += 1
            open_one(index, kind)
        now = time.monotonic()
        for connection, state in list(connections.items()):
            kind, sent, due, _ = state
            try:
                if kind == "held" and sent < held_bytes - 1:
                    state[1] += connection.send(chunk[: min(len(chunk), held_bytes - 1 - sent)])
                elif kind == "slow" and now >= due and sent < len(body) - 11:
                    connection.send(body[10 + sent : 11 + sent])
                    state[1], state[2] = sent + 1, now + 20
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                pass  # the close is seen by the selector
    results.put(dict(closed))
    for connection in connections:
        connection.close()

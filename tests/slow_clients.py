"""Clients that hold connections without finishing a request: idle ones (a
browser's preconnect, an HTTP client's pool) and slow-header ones (a
slowloris), for the hostile-client and reliability tests.

They run in a process of their own: hundreds of threads in the test's
process would make its own measuring requests wait for the interpreter lock,
and the test would time itself rather than the service."""

import json
import multiprocessing
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
    context = multiprocessing.get_context("spawn")
    opened, stop, results = context.Event(), context.Event(), context.Queue()
    attacker = context.Process(
        target=_hold_connections, args=(port, idle, slow, byte_every, opened, stop, results), daemon=True
    )
    attacker.start()
    closed = {}
    try:
        if not opened.wait(timeout=60):
            raise TimeoutError(f"could not open {idle} idle and {slow} slow connections to port {port}")
        yield closed
    finally:
        stop.set()
        if attacker.is_alive() or not results.empty():
            closed.update(results.get(timeout=30))
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

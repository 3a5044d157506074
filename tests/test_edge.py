"""The edge (HAProxy, diabetes/edge.py) against clients that would stall,
starve or drop the service: slow bodies, many connections from one address,
large bodies held open, heavy explanations, workers and masters killed under
load. Each runs against the PM2-served service (`make serve`), bounded in
count and time. Attackers connect from addresses of their own on the loopback
network (127.0.0.2 and up), so that the edge's per-address limit sees them
apart from the measuring client (127.0.0.1)."""

import gzip
import json
import os
import select
import signal
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from diabetes import edge
from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.settings import APP_NAME
from tests.conftest import make, pm2, service_of_its_own
from tests.processes import process_tree, pss_mib, wait_until
from tests.wrk import run_wrk, write_wrk_script

pytestmark = [pytest.mark.model, pytest.mark.pm2]

EDGE_APP = f"{APP_NAME}-edge"
MAX_CONNECTIONS_PER_CLIENT = 64
ARTICLE_JSON = json.dumps(ARTICLE_BODY).encode()


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("edge")
    with service_of_its_own(
        trained, workspace, DIABETES_MAX_CONNECTIONS_PER_CLIENT=str(MAX_CONNECTIONS_PER_CLIENT)
    ) as service:
        yield service


def pid_of(service, app: str) -> int:
    return int(pm2(service, "pid", app).strip())


def service_pss_mib(service) -> float:
    """The edge and gunicorn (master and workers) together."""
    pids = process_tree(pid_of(service, APP_NAME)) + process_tree(pid_of(service, EDGE_APP))
    return sum(size for size in map(pss_mib, pids) if size is not None)


def timed_get(service, path: str, timeout: float = 10) -> tuple[int, float]:
    started = time.monotonic()
    response = requests.get(service["url"] + path, timeout=timeout)
    return response.status_code, time.monotonic() - started


def article_call(service, timeout: float = 10) -> float:
    started = time.monotonic()
    response = requests.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=timeout)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


def connect_from(service, address: str) -> socket.socket:
    connection = socket.socket()
    try:
        connection.bind((address, 0))
        connection.settimeout(10)
        connection.connect(("127.0.0.1", service["port"]))
    except OSError:
        connection.close()
        raise
    return connection


def read_answer(connection, timeout: float = 15) -> tuple[int, dict, bytes]:
    """Status, headers (lower-case names) and body of one answer."""
    connection.settimeout(timeout)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split(" ")[1]), headers, body


def json_refusal(answer, status: int, code: str):
    got_status, headers, body = answer
    assert got_status == status, answer
    assert headers["content-type"] == "application/json"
    envelope = json.loads(body)
    assert envelope["status"] == status and envelope["code"] == code, envelope
    return envelope


def article_head(service, length: int = len(ARTICLE_JSON)) -> bytes:
    return (
        f"POST {ARTICLE_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{service['port']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


@contextmanager
def held_connections(service, count: int, first_address: int, send=b"", per_address=None):
    """`count` connections, spread over 127.0.0.<first_address> and up
    (`per_address` each), each having sent `send`; closed when the block ends."""
    per_address = per_address or MAX_CONNECTIONS_PER_CLIENT
    connections = []
    try:
        for index in range(count):
            connection = connect_from(service, f"127.0.0.{first_address + index // per_address}")
            connections.append(connection)
            connection.setblocking(False)
            try:
                connection.send(send)
            except BlockingIOError:
                pass
        yield connections
    finally:
        for connection in connections:
            connection.close()


# ---- slow bodies -----------------------------------------------------------


def test_a_small_body_sent_a_byte_every_second_gets_a_json_408_within_the_edges_request_time(service):
    with connect_from(service, "127.0.0.2") as connection:
        started = time.monotonic()
        connection.sendall(article_head(service) + ARTICLE_JSON[:-16])
        answer = None
        for byte in ARTICLE_JSON[-16:]:
            # A byte a second, until the edge answers: its answer is timed
            # when it arrives, not when a later send finds the socket closed.
            answered, _, _ = select.select([connection], [], [], 1)
            if answered:
                break
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                break  # the edge has answered and closed
        answer = read_answer(connection)
        elapsed = time.monotonic() - started
        json_refusal(answer, 408, "request_timeout")
        assert edge.REQUEST_SECONDS - 1 <= elapsed <= edge.REQUEST_SECONDS + 2


def test_slow_body_connections_from_many_addresses_leave_the_probes_and_the_article_call_quick(service):
    # 4 addresses x 64: each connection sends a head and part of its body, then nothing.
    with held_connections(service, 4 * MAX_CONNECTIONS_PER_CLIENT, 10, article_head(service) + ARTICLE_JSON[:10]):
        time.sleep(1)
        for _ in range(5):
            status, seconds = timed_get(service, "/v2/health/live")
            assert status == 200 and seconds < 0.5
            assert article_call(service) < 0.5


def test_connections_past_the_per_address_limit_are_closed_and_other_addresses_are_served(service):
    with held_connections(service, MAX_CONNECTIONS_PER_CLIENT, 20, per_address=10**6):
        time.sleep(0.5)
        for _ in range(10):
            assert past_the_limit_is_closed_unanswered(service, "127.0.0.20")
        assert article_call(service) < 0.5


def past_the_limit_is_closed_unanswered(service, address: str) -> bool:
    """The edge closes such a connection as soon as it is accepted: the
    client sees the reset when it connects, sends or reads."""
    try:
        with connect_from(service, address) as extra:
            extra.sendall(article_head(service) + ARTICLE_JSON)
            extra.settimeout(5)
            return extra.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


# ---- large bodies and memory ------------------------------------------------


def test_300_held_4_mib_bodies_grow_the_service_by_at_most_512_mib_and_it_gives_it_back(service):
    body_bytes = 4 * 1024 * 1024
    head = article_head(service, body_bytes)
    chunk = b" " * 65536
    before = service_pss_mib(service)
    peak = before
    with held_connections(service, 300, 30, head) as connections:
        # Send all but the last byte, as far as each connection takes it, for a few seconds.
        sent = [0] * len(connections)
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            progress = False
            for index, connection in enumerate(connections):
                left = body_bytes - 1 - sent[index]
                if left <= 0:
                    continue
                try:
                    sent[index] += connection.send(chunk[: min(left, len(chunk))])
                    progress = True
                except (BlockingIOError, OSError):
                    pass
            peak = max(peak, service_pss_mib(service))
            if not progress:
                time.sleep(0.1)
        status, seconds = timed_get(service, "/v2/health/ready")
        assert status == 200 and seconds < 1
        assert article_call(service) < 1
        peak = max(peak, service_pss_mib(service))
    assert peak - before <= 512, f"{before:.0f} MiB -> {peak:.0f} MiB"
    assert wait_until(lambda: service_pss_mib(service) - before <= 64, timeout=45), (
        f"{before:.0f} MiB before, {service_pss_mib(service):.0f} MiB after the bodies closed"
    )


def test_a_declared_body_over_the_limit_gets_a_json_413_before_it_is_sent(service):
    with connect_from(service, "127.0.0.3") as connection:
        connection.sendall(article_head(service, 64 * 1024 * 1024))
        json_refusal(read_answer(connection), 413, "request_entity_too_large")


# ---- the small ones ---------------------------------------------------------


def test_an_http11_request_without_host_gets_a_json_400(service):
    with connect_from(service, "127.0.0.3") as connection:
        connection.sendall(b"GET /metadata HTTP/1.1\r\n\r\n")
        json_refusal(read_answer(connection), 400, "bad_request")


def test_a_request_line_over_the_limit_gets_a_json_414_from_the_edge(service):
    with connect_from(service, "127.0.0.3") as connection:
        connection.sendall(f"GET /{'a' * 5000} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        json_refusal(read_answer(connection), 414, "uri_too_long")


def test_a_head_larger_than_the_edges_buffer_is_refused_and_the_service_answers_on(service):
    # HAProxy 2.6 answers this 400 from its connection layer, where no error
    # file applies: its own short HTML page, not the JSON envelope (README).
    with connect_from(service, "127.0.0.3") as connection:
        connection.sendall(b"GET /metadata HTTP/1.1\r\nHost: localhost\r\nX-Padding: " + b"a" * 20000 + b"\r\n\r\n")
        status, headers, _ = read_answer(connection)
        assert status == 400 and headers["connection"] == "close"
    assert article_call(service) < 1


def test_large_answers_are_compressed_when_the_client_asks(service):
    response = requests.get(service["url"] + "/openapi.json", headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Encoding"] == "gzip"
    assert response.json()["openapi"].startswith("3.")
    plain = requests.get(service["url"] + "/openapi.json", headers={"Accept-Encoding": "identity"}, timeout=10)
    assert "Content-Encoding" not in plain.headers and plain.json() == response.json()


def test_a_gzip_request_body_through_the_edge_is_answered_as_the_plain_one(service):
    plain = requests.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10).json()
    compressed = requests.post(
        service["url"] + ARTICLE_PATH,
        data=gzip.compress(ARTICLE_JSON),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        timeout=10,
    )
    assert compressed.status_code == 200, compressed.text
    assert compressed.json() == plain


def test_tritonclient_with_gzip_requests_gets_the_plain_answer_through_the_edge(service):
    client = triton.InferenceServerClient(f"127.0.0.1:{service['port']}")
    row = np.array([[1, 106, 70, 28, 135, 34.2, 0.142, 22]], dtype=np.float32)
    tensor = triton.InferInput("features", list(row.shape), "FP32")
    tensor.set_data_from_numpy(row)
    plain = client.infer("diabetes", [tensor]).as_numpy("probability")
    compressed = client.infer("diabetes", [tensor], request_compression_algorithm="gzip").as_numpy("probability")
    assert np.array_equal(plain, compressed)
    client.close()


# ---- heavy work ---------------------------------------------------------------


def test_four_clients_posting_10000_row_explanations_never_hold_the_readiness_probe(service):
    rows = {"instances": [[1, 106, 70, 28, 135, 34.2, 0.142, 22]] * 10_000}
    stop = threading.Event()
    statuses = []

    def post_explanations():
        with requests.Session() as session:
            while not stop.is_set():
                answer = session.post(service["url"] + "/predict?explain=true", json=rows, timeout=30)
                statuses.append(answer.status_code)

    clients = [threading.Thread(target=post_explanations) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        time.sleep(1)
        worst = max(timed_get(service, "/v2/health/ready")[1] for _ in range(10))
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=60)
    assert worst < 1, f"the readiness probe took {worst:.2f} s"
    assert statuses and set(statuses) == {413}


# ---- killed processes -----------------------------------------------------------


def load_while(service, tmp_path, action, seconds: int = 8) -> dict:
    """A wrk load of the article's call, with `action` run a few seconds in."""
    script = write_wrk_script(tmp_path / "article.lua", ARTICLE_BODY)
    timer = threading.Timer(3, action)
    timer.start()
    try:
        return run_wrk(f"{service['url']}{ARTICLE_PATH}", script, connections=16, seconds=seconds)
    finally:
        timer.join()


def test_a_worker_killed_under_load_fails_no_request(service, tmp_path):
    master = pid_of(service, APP_NAME)
    worker = process_tree(master)[1]
    result = load_while(service, tmp_path, lambda: os.kill(worker, signal.SIGKILL))
    assert result["requests"] > 1000 and not any(result["errors"].values()), result
    assert worker not in process_tree(master)


def test_the_master_killed_under_load_fails_no_request_and_is_back_within_3_s(service, tmp_path):
    master = pid_of(service, APP_NAME)
    killed_at = []

    def kill_master():
        killed_at.append(time.monotonic())
        os.kill(master, signal.SIGKILL)

    result = load_while(service, tmp_path, kill_master, seconds=10)
    assert result["requests"] > 1000 and not any(result["errors"].values()), result
    assert pid_of(service, APP_NAME) != master
    # The slowest request waited for the new master.
    assert result["max_ms"] / 1000 < 3, result


# ---- the edge in view --------------------------------------------------------------


def test_the_edges_queue_sessions_retries_and_check_are_in_its_metrics(service):
    text = requests.get(service["url"] + "/edge/metrics", timeout=10).text
    names = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    for name in (
        "haproxy_backend_current_queue",
        "haproxy_frontend_current_sessions",
        "haproxy_backend_retry_warnings_total",
        "haproxy_server_check_status",
    ):
        assert name in names


def test_make_status_and_pm2_show_the_edge(service):
    status = make("status", *service["variables"], env=service["env"]).stdout
    assert EDGE_APP in status and "edge queue:" in status and "workers check: UP" in status
    [app] = [app for app in json.loads(pm2(service, "jlist")) if app["name"] == EDGE_APP]
    assert wait_until(lambda: "edge queue" in pm2_monitor(service), timeout=10)
    assert app["pm2_env"]["status"] == "online"


def pm2_monitor(service) -> dict:
    [app] = [app for app in json.loads(pm2(service, "jlist")) if app["name"] == EDGE_APP]
    return app["pm2_env"].get("axm_monitor", {})


def test_the_edges_refusals_are_logged_as_json_lines(service):
    with connect_from(service, "127.0.0.4") as connection:
        connection.sendall(b"GET /metadata HTTP/1.1\r\n\r\n")
        read_answer(connection)
        log = service["workspace"] / "logs" / f"{EDGE_APP}.out.log"

    def refusal_logged():
        lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
        return any(
            json.loads(line)["status"] == 400 and json.loads(line)["remote_addr"] == "127.0.0.4" for line in lines
        )

    assert wait_until(refusal_logged, timeout=10)


# ---- bounded memory per worker ---------------------------------------------------


@pytest.fixture(scope="module")
def capped_service(trained, tmp_path_factory):
    """A service whose workers may hold 1 MiB: each is past it after its first requests."""
    workspace = tmp_path_factory.mktemp("capped")
    with service_of_its_own(trained, workspace, DIABETES_MAX_WORKER_MEMORY_MIB="1") as service:
        yield service


def test_a_worker_past_its_memory_cap_is_replaced_gracefully_and_no_request_fails(capped_service, tmp_path):
    master = pid_of(capped_service, APP_NAME)
    workers_before = set(process_tree(master)[1:])
    script = write_wrk_script(tmp_path / "article.lua", ARTICLE_BODY)
    result = run_wrk(f"{capped_service['url']}{ARTICLE_PATH}", script, connections=4, seconds=6)
    assert result["requests"] > 100 and not any(result["errors"].values()), result
    assert not workers_before & set(process_tree(master)[1:]), "no worker was replaced"
    log = (capped_service["workspace"] / "logs" / f"{APP_NAME}.error.log").read_text()
    assert "past its cap of 1 MiB" in log


def test_the_apps_access_log_names_the_client_the_edge_forwarded(service):
    with connect_from(service, "127.0.0.6") as connection:
        connection.sendall(article_head(service) + ARTICLE_JSON)
        assert read_answer(connection)[0] == 200
    log = service["workspace"] / "logs" / f"{APP_NAME}.out.log"

    def logged():
        records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return any(record.get("remote_addr") == "127.0.0.6" for record in records)

    assert wait_until(logged, timeout=10)

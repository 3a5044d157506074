"""Clients the service has not met: idle and slow connections, chunked and
oversized bodies, made-up methods and paths, near-miss keys, foreign Host
names, requests the HTTP server itself refuses, a log that cannot be written.
Each runs against the PM2-served service (`make serve`, as a user runs it),
briefly and bounded in time; `make reliability` holds the idle and slow
clients beside a load for longer (tests/test_reliability.py)."""

import json
import os
import shutil
import socket
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from diabetes import edge
from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.model_store import LATEST_LINK, point_link
from diabetes.observability import BOOKKEEPING_SECONDS
from tests.conftest import PROJECT, make, pm2, pm2_app, service_of_its_own
from tests.processes import clean_environment, free_port
from tests.slow_clients import idle_and_slow_connections, worst_latency

pytestmark = [pytest.mark.model, pytest.mark.pm2]

API_KEY = "k3y-" + uuid.uuid4().hex
# A variable of the shell that runs `make serve`, which PM2 must not pass on.
UNRELATED_SECRET = ("AWS_SECRET_ACCESS_KEY", "not-for-the-service-" + uuid.uuid4().hex)
KEEPALIVE_SECONDS = edge.KEEPALIVE_SECONDS


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    """A service of this module's own, with an API key from a 0600 file and a
    prediction log, started by `make serve` from a shell holding a secret."""
    workspace = tmp_path_factory.mktemp("hostile")
    key_file = workspace / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    with service_of_its_own(
        trained,
        workspace,
        DIABETES_API_KEY_FILE=str(key_file),
        DIABETES_PREDICTION_LOG=str(workspace / "predictions.jsonl"),
        **dict([UNRELATED_SECRET]),
    ) as service:
        yield service


def keyed(**headers) -> dict:
    return {"X-API-Key": API_KEY, **headers}


def article_call(service, timeout=5):
    response = requests.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, headers=keyed(), timeout=timeout)
    assert response.status_code == 200, response.text
    return response


def readiness_probe(service, timeout=5):
    response = requests.get(service["url"] + "/v2/health/ready", timeout=timeout)
    assert response.status_code == 200, response.text


def raw_exchange(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send bytes as they are, and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        return read_answer(connection)


def read_answer(connection) -> bytes:
    """One answer with a Content-Length, or what came until the server closed or went silent."""
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received and _is_complete(received):
                break
    except TimeoutError:
        pass
    return received


def _is_complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_and_json(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split(b" ")[1]), json.loads(body)


def series(service, name: str) -> list[dict]:
    # Each worker keeps its books a few times a second (diabetes/observability.py).
    time.sleep(2 * BOOKKEEPING_SECONDS)
    text = requests.get(service["url"] + "/metrics", timeout=5).text
    return [
        sample.labels | {"value": sample.value}
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


# ---- slow and idle clients --------------------------------------------------


def test_200_idle_and_32_slow_header_connections_leave_the_probe_and_the_article_call_under_500_ms(service):
    with idle_and_slow_connections(service["port"], idle=200, slow=32):
        probe = worst_latency(lambda: readiness_probe(service, timeout=2), seconds=2)
        article = worst_latency(lambda: article_call(service, timeout=2), seconds=2)
    assert probe < 0.5 and article < 0.5, (probe, article)


def test_idle_and_slow_header_connections_are_closed_after_the_keep_alive_timeout(service):
    # A new connection must send its whole head within the edge's request time.
    with idle_and_slow_connections(service["port"], idle=4, slow=4, byte_every=0.5) as closed:
        time.sleep(edge.REQUEST_SECONDS + 2)
    assert closed["idle"] >= 4 and closed["slow"] >= 4, closed
    with socket.create_connection(("127.0.0.1", service["port"]), timeout=KEEPALIVE_SECONDS + 5) as kept_alive:
        kept_alive.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_answer(kept_alive).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert kept_alive.recv(1) == b""
        assert KEEPALIVE_SECONDS - 1 <= time.monotonic() - started <= KEEPALIVE_SECONDS + 3


# ---- bodies: chunked, oversized, streamed -----------------------------------


def chunked_csv(rows: int, chunk_rows: int = 1000, padding: int = 0):
    line = b"1,106,70,28,135,34.2,0.142," + b" " * padding + b"22\n"
    for start in range(0, rows, chunk_rows):
        yield line * min(chunk_rows, rows - start)


@pytest.mark.parametrize(
    "rows, padding, code", [(9000, 500, "request_entity_too_large"), (150_000, 0, "too_many_rows")]
)
def test_a_chunked_csv_over_a_limit_gets_a_json_413_and_never_a_cut_answer(service, rows, padding, code):
    response = requests.post(
        service["url"] + "/predict",
        data=chunked_csv(rows, padding=padding),
        timeout=30,
        headers=keyed(**{"Content-Type": "text/csv"}),
    )
    assert response.status_code == 413, response.text[:200]
    assert response.json()["code"] == code


def test_a_chunked_body_under_the_limits_is_answered_whole(service):
    response = requests.post(
        service["url"] + "/predict",
        data=chunked_csv(5000, chunk_rows=333),
        timeout=30,
        headers=keyed(**{"Content-Type": "text/csv"}),
    )
    assert response.status_code == 200, response.text[:200]
    assert len(response.json()["predictions"]) == 5000


def test_a_chunked_json_body_over_the_byte_limit_gets_a_json_413(service):
    def body():
        yield b'{"instances": ['
        for _ in range(50000):
            yield b"[1, 106, 70, 28, 135, 34.2, 0.142, 22], " * 4
        yield b"[1, 106, 70, 28, 135, 34.2, 0.142, 22]]}"

    response = requests.post(
        service["url"] + "/predict", data=body(), timeout=30, headers=keyed(**{"Content-Type": "application/json"})
    )
    assert response.status_code == 413 and response.json()["code"] == "request_entity_too_large"


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(service):
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {API_KEY}\r\nContent-Type: text/csv\r\n"
        f"Content-Length: {64 * 1024 * 1024 * 1024}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, envelope = status_and_json(raw_exchange(service["port"], head + b"1,2"))
    assert (status, envelope["code"]) == (413, "request_entity_too_large")


@pytest.mark.parametrize(
    "headers, code",
    [
        ({"Content-Type": "application/json; charset=utf-16"}, "unsupported_media_type"),
        ({"Content-Type": "application/json", "Content-Encoding": "br"}, "unsupported_media_type"),
    ],
)
def test_bodies_in_encodings_the_service_does_not_read_get_a_415(service, headers, code):
    response = requests.post(
        service["url"] + ARTICLE_PATH, data=json.dumps(ARTICLE_BODY).encode(), headers=keyed(**headers), timeout=5
    )
    assert (response.status_code, response.json()["code"]) == (415, code)


# ---- strict input -----------------------------------------------------------


@pytest.mark.parametrize("value", ["٢٢", "２２", "1_000", "0x1A", "1e", "--1"])
def test_numbers_are_ascii_decimal_text_only(service, value):
    response = requests.post(
        service["url"] + ARTICLE_PATH, json={"data": f"1,106,70,28,135,34.2,0.142,{value}"}, headers=keyed(), timeout=5
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_value"
    csv = f"1,106,70,28,135,34.2,0.142,{value}\n".encode()
    response = requests.post(
        service["url"] + "/predict", data=csv, timeout=5, headers=keyed(**{"Content-Type": "text/csv"})
    )
    assert response.status_code == 400 and response.json()["code"] == "invalid_value"


def test_a_csv_with_a_byte_order_mark_as_excel_writes_it_is_read(service):
    header = "times_pregnant,glucose,blood_pressure,skin_fold_thick,serum_insuling,mass_index,diabetes_pedigree,age"
    body = ("\ufeff" + header + "\r\n1,106,70,28,135,34.2,0.142,22\r\n").encode()
    response = requests.post(
        service["url"] + "/predict", data=body, timeout=5, headers=keyed(**{"Content-Type": "text/csv"})
    )
    expected = article_call(service).json()["prediction"]
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["probability"] == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize(
    "body",
    ['1,106,"70"x,28,135,34.2,0.142,22\n', '1,106,"70,28,135,34.2,0.142,22\n', "1,106,70,28,135,34.2,0.142,\xff22\n"],
)
def test_csv_with_bad_quoting_or_bytes_that_are_not_utf8_is_refused(service, body):
    response = requests.post(
        service["url"] + "/predict",
        data=body.encode("latin-1"),
        timeout=5,
        headers=keyed(**{"Content-Type": "text/csv"}),
    )
    assert response.status_code == 400 and response.json()["code"] in ("invalid_csv", "invalid_value")


# ---- bounded metrics ----------------------------------------------------------


def test_1000_made_up_methods_and_paths_do_not_grow_the_metrics(service):
    before = len(series(service, "diabetes_requests_total"))
    with requests.Session() as session:
        for number in range(500):
            response = session.request(f"ZZ{number}", service["url"] + ARTICLE_PATH, timeout=5)
            assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"
            response = session.get(service["url"] + f"/made-up/{number}", timeout=5)
            assert response.status_code == 404
    labels = series(service, "diabetes_requests_total")
    # At most: the made-up methods' 405 and the paths' 404, both on no route, and /metrics itself.
    assert len(labels) <= before + 3, sorted({(s["route"], s["method"]) for s in labels})
    assert {s["method"] for s in labels} <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"}


# ---- access -------------------------------------------------------------------


def near_misses(key: str) -> list[str]:
    changed_last = key[:-1] + ("0" if key[-1] != "0" else "1")
    changed_middle = key[:10] + ("x" if key[10] != "x" else "y") + key[11:]
    return [key[:-1], key[:1], key + "0", changed_last, changed_middle, key.upper(), "x" + key, ""]


@pytest.mark.parametrize("header", ["X-API-Key", "Authorization"])
def test_every_near_miss_of_the_key_is_refused(service, header):
    for given in near_misses(API_KEY):
        value = f"Bearer {given}" if header == "Authorization" else given
        response = requests.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, headers={header: value}, timeout=5)
        assert response.status_code == 401, given
        assert response.json()["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(service, scheme):
    response = requests.post(
        service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, headers={"Authorization": f"{scheme} {API_KEY}"}, timeout=5
    )
    assert response.status_code == 200


def test_a_browsers_preflight_needs_no_key(service):
    response = requests.options(
        service["url"] + ARTICLE_PATH,
        timeout=5,
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-api-key",
        },
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_make_serve_and_make_rollback_work_with_a_key_set(service):
    result = make("serve", *service["variables"], env=service["env"])
    assert "serving model" in result.stdout
    models_dir = service["models_dir"]
    served = article_call(service).headers["X-Model-Version"]
    newer = shutil.copytree(models_dir / served, models_dir / "29990101T000000Z-n3wer000")
    metadata = json.loads((newer / "metadata.json").read_text())
    (newer / "metadata.json").write_text(json.dumps({**metadata, "version": newer.name}))
    point_link(models_dir, LATEST_LINK, newer.name)
    try:
        result = make("serve", *service["variables"], env=service["env"])
        assert f"serving model {newer.name}" in result.stdout
        result = make("rollback", *service["variables"], env=service["env"])
        assert f"serving model {served}" in result.stdout
        assert article_call(service).headers["X-Model-Version"] == served
    finally:
        # The newest model is the one served again, as before this test (by the release rolled back to).
        point_link(models_dir, LATEST_LINK, served)
        shutil.rmtree(newer)


def test_a_key_file_that_others_can_read_is_refused(service, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY)
    key_file.chmod(0o644)
    env = {**service["env"], "DIABETES_API_KEY_FILE": str(key_file)}
    result = subprocess.run(
        [str(PROJECT / ".venv/bin/python"), "-m", "diabetes.probe", "--timeout", "1"],
        env=env,
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=30,
    )
    assert result.returncode != 0 and "chmod 600" in result.stderr


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "localhost.evil.example"])
def test_a_foreign_host_name_is_refused_except_by_the_probes(service, host):
    for path in ("/metadata", "/metrics", "/openapi.json"):
        response = requests.get(service["url"] + path, headers={"Host": host}, timeout=5)
        assert response.status_code == 400 and response.json()["code"] == "untrusted_host", path
    response = requests.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, headers=keyed(Host=host), timeout=5)
    assert response.status_code == 400
    assert requests.get(service["url"] + "/v2/health/ready", headers={"Host": host}, timeout=5).status_code == 200


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:{port}", "127.0.0.1:{port}", "[::1]:{port}"])
def test_the_local_names_are_trusted(service, host):
    response = requests.get(
        service["url"] + "/metadata", headers={"Host": host.format(port=service["port"])}, timeout=5
    )
    assert response.status_code == 200


# ---- the server's own refusals ------------------------------------------------


@pytest.mark.parametrize(
    "request_head, status",
    [
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(b"X-%d: 1\r\n" % n for n in range(60)) + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    ],
)
def test_what_gunicorn_refuses_behind_the_edge_is_a_json_error_counted_in_the_metrics(service, request_head, status):
    """Heads within the edge's buffer but over gunicorn's own limits."""
    refused_before = sum(
        s["value"]
        for s in series(service, "diabetes_requests_total")
        if s["route"] == "refused_by_server" and s["status"] == str(status)
    )
    answered, envelope = status_and_json(raw_exchange(service["port"], request_head))
    assert answered == status and envelope["status"] == status
    assert envelope["code"] == "request_header_fields_too_large"
    assert set(envelope) == {"error", "code", "status", "field", "row"}
    refused_after = sum(
        s["value"]
        for s in series(service, "diabetes_requests_total")
        if s["route"] == "refused_by_server" and s["status"] == str(status)
    )
    assert refused_after == refused_before + 1


def app_requests_but_metrics_and_probes(service) -> float:
    """What the app answered, but /metrics and the edge's readiness checks."""
    return sum(
        s["value"]
        for s in series(service, "diabetes_requests_total")
        if s["route"] not in ("/metrics", "/v2/health/ready")
    )


def edge_answers_of_class(service, status_class: str) -> float:
    text = requests.get(service["url"] + "/edge/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "haproxy_frontend_http_responses_total" and sample.labels.get("code") == status_class
    )


@pytest.mark.parametrize(
    "request_head, status, in_json",
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 414, True),
        (b"G\x00T / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, False),
        # A transfer coding other than chunked, compressed or made up: never read as it is.
        (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: foo, chunked\r\n\r\n", 422, False),
        (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 422, False),
    ],
)
def test_what_the_edge_refuses_never_reaches_the_app_and_is_counted_by_the_edge(service, request_head, status, in_json):
    """A request line over the limit gets the JSON envelope; a head HAProxy's
    parser rejects gets HAProxy's own short HTML page (HAProxy 2.6 answers it
    before any error file applies; README)."""
    app_before = app_requests_but_metrics_and_probes(service)
    edge_before = edge_answers_of_class(service, "4xx")
    body = b"5\r\nxxxxx\r\n0\r\n\r\n" if request_head.startswith(b"POST") else b""
    answer = raw_exchange(service["port"], request_head + body)
    assert int(answer.split(b" ")[1]) == status, answer[:200]
    if in_json:
        answered, envelope = status_and_json(answer)
        assert envelope["code"] == "uri_too_long" and envelope["status"] == status
    assert edge_answers_of_class(service, "4xx") == edge_before + 1
    assert app_requests_but_metrics_and_probes(service) == app_before


# ---- private state and logs ---------------------------------------------------


def test_pm2_passes_the_apps_only_their_settings(service):
    listing = pm2(service, "jlist")
    assert UNRELATED_SECRET[1] not in listing and API_KEY not in listing
    app = pm2_app(service)
    environment = Path(f"/proc/{app['pid']}/environ").read_bytes().decode().split("\0")
    assert not any(entry.startswith(UNRELATED_SECRET[0] + "=") for entry in environment)
    assert f"DIABETES_PORT={service['port']}" in environment


def test_pm2s_home_is_private(service):
    assert stat.S_IMODE(service["pm2_home"].stat().st_mode) == 0o700


def test_the_prediction_log_is_private_and_keeps_the_values_as_sent(service):
    requests.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, headers=keyed(), timeout=5)
    log = service["workspace"] / "predictions.jsonl"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["inputs"] == [[1, 106, 70, 28, 135, 34.2, 0.142, 22]]


def test_an_access_log_that_cannot_be_written_fails_no_request(scripts, trained, tmp_path):
    """The generated script run directly, its output on a full device."""
    port = free_port()
    env = clean_environment(
        DIABETES_PORT=str(port), DIABETES_MODEL_DIR=str(trained["models_dir"] / "latest"), DIABETES_WORKERS="1"
    )
    with open("/dev/full", "wb") as full, open(tmp_path / "stderr", "wb") as errors:
        server = subprocess.Popen(
            [str(PROJECT / ".venv/bin/python"), str(scripts / "serve.py")],
            cwd=PROJECT,
            env=env,
            stdout=full,
            stderr=errors,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url + "/v2/health/ready", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "stderr").read_text()
                time.sleep(0.2)
        with requests.Session() as session:
            statuses = [session.post(url + ARTICLE_PATH, json=ARTICLE_BODY, timeout=5).status_code for _ in range(200)]
        time.sleep(1)  # the access log writes its batch at least twice a second
        dropped = [
            s
            for s in text_string_to_metric_families(requests.get(url + "/metrics", timeout=5).text)
            for s in s.samples
            if s.name == "diabetes_log_lines_dropped_total" and s.labels["log"] == "access"
        ]
        assert statuses == [200] * 200
        assert dropped and dropped[0].value >= 200
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)

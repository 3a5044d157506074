"""Metrics, access logs, request ids, the prediction log and the API key."""

import json
import os
import stat
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import Histogram
from prometheus_client.parser import text_string_to_metric_families

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH, ARTICLE_VALUES
from diabetes.observability import BOOKKEEPING_SECONDS, LATENCY, PredictionLog, observe_all
from diabetes.settings import APP_NAME, SettingRefused
from tests.calls import Call

ARTICLE_CALL = Call("", "POST", ARTICLE_PATH, 200, json=ARTICLE_BODY)


def metric_value(text, name, **labels) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def scrape(target) -> str:
    # Each worker keeps its books a few times a second (diabetes/observability.py).
    time.sleep(2 * BOOKKEEPING_SECONDS)
    status, headers, body = target.call(Call("", "GET", "/metrics", 200, content_type=None))
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return body.decode()


def test_metrics_count_every_request_of_every_worker(target):
    before = scrape(target)
    for _ in range(20):
        assert target.call(ARTICLE_CALL)[0] == 200
    assert target.call(Call("", "POST", ARTICLE_PATH, 400, json={"data": "1"}))[0] == 400
    after = scrape(target)

    def grown(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    route = {"route": ARTICLE_PATH}
    assert grown("diabetes_requests_total", method="POST", status="200", **route) == 20
    assert grown("diabetes_errors_total", code="wrong_value_count") == 1
    assert grown("diabetes_request_duration_seconds_count", **route) == 21
    for stage in ("parse", "validate", "predict", "serialize"):
        assert grown("diabetes_request_stage_duration_seconds_count", stage=stage, **route) >= 20
    assert grown("diabetes_predictions_total", label="0", probability_bin="0.1") == 20
    assert metric_value(after, "diabetes_model_info", version=target.version) == 1


BOUNDS = LATENCY._upper_bounds[:-1]


@given(
    st.lists(
        st.one_of(
            st.sampled_from(BOUNDS),
            st.floats(min_value=0, max_value=2 * BOUNDS[-1], allow_nan=False),
        ),
        max_size=40,
    )
)
def test_observing_many_at_once_is_observing_each(amounts):
    each, at_once = (Histogram(name, "", buckets=BOUNDS, registry=None) for name in ("each", "at_once"))
    for amount in amounts:
        each.observe(amount)
    observe_all(at_once, amounts)
    [each_samples], [at_once_samples] = each.collect(), at_once.collect()
    assert [(sample.labels, sample.value) for sample in each_samples.samples] == [
        (sample.labels, sample.value) for sample in at_once_samples.samples
    ]


def test_a_request_id_is_sent_back_or_made(target):
    _, headers, _ = target.send(
        "POST",
        ARTICLE_PATH,
        json.dumps(ARTICLE_BODY).encode(),
        {"Content-Type": "application/json", "X-Request-ID": "order-42"},
    )
    assert headers["X-Request-ID"] == "order-42"
    made = {target.call(ARTICLE_CALL)[1]["X-Request-ID"] for _ in range(3)}
    assert len(made) == 3 and all(len(request_id) == 32 for request_id in made)
    _, headers, _ = target.send(
        "POST",
        ARTICLE_PATH,
        json.dumps(ARTICLE_BODY).encode(),
        {"Content-Type": "application/json", "X-Request-ID": "bad id\twith tab"},
    )
    assert headers["X-Request-ID"] != "bad id\twith tab"


def test_every_answer_says_how_long_each_stage_took(target):
    timing = target.call(ARTICLE_CALL)[1]["Server-Timing"]
    assert [part.split(";")[0] for part in timing.split(", ")] == ["parse", "validate", "predict", "serialize"]


@pytest.mark.model
@pytest.mark.pm2
def test_the_access_log_is_json_lines_with_the_request_id(over_http, service):
    over_http.send(
        "POST",
        ARTICLE_PATH,
        json.dumps(ARTICLE_BODY).encode(),
        {"Content-Type": "application/json", "X-Request-ID": "find-me-in-the-log"},
    )
    log = service["pm2_home"].parent / "logs" / f"{APP_NAME}.out.log"
    deadline = time.monotonic() + 5
    while "find-me-in-the-log" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    [line] = [line for line in log.read_text().splitlines() if "find-me-in-the-log" in line]
    entry = json.loads(line[line.index("{") :])
    assert entry["status"] == 200 and entry["route"] == ARTICLE_PATH and entry["model_version"] == over_http.version
    assert entry["duration_ms"] > 0


@pytest.mark.model
@pytest.mark.pm2
def test_the_access_log_names_a_utf8_path_as_the_client_wrote_it(over_http, service):
    over_http.send("GET", "/caf%C3%A9-%E2%80%A8", None, {"X-Request-ID": "utf8-path-in-the-log"})
    log = service["pm2_home"].parent / "logs" / f"{APP_NAME}.out.log"
    deadline = time.monotonic() + 5
    while "utf8-path-in-the-log" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    [line] = [line for line in log.read_text().split("\n") if "utf8-path-in-the-log" in line]
    entry = json.loads(line)
    assert entry["path"] == "/caf\u00e9-\u2028" and entry["status"] == 404


@pytest.mark.model
@pytest.mark.pm2
def test_every_line_the_service_writes_on_its_standard_output_is_json(over_http, service):
    """Nothing printed at import or start (master or workers) slips in between the request lines."""
    over_http.send("POST", ARTICLE_PATH, json.dumps(ARTICLE_BODY).encode(), {"Content-Type": "application/json"})
    log = (service["pm2_home"].parent / "logs" / f"{APP_NAME}.out.log").read_text()
    # JSON Lines ends a line with "\n" only: splitlines() would also cut at the
    # U+0085 or U+2028 that a fuzzed path may hold, inside a JSON string.
    lines = log.rstrip("\n").split("\n")
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line


@pytest.fixture()
def guarded(served_module):
    return served_module.create_app(served_module.bundle, api_key="s3cret-for-tests").test_client()


@pytest.mark.model
@pytest.mark.parametrize(
    "path, body",
    [
        (ARTICLE_PATH, ARTICLE_BODY),
        ("/predict", {"instances": [ARTICLE_VALUES]}),
        (
            "/v2/models/diabetes/infer",
            {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": ARTICLE_VALUES}]},
        ),
    ],
)
def test_with_an_api_key_set_prediction_routes_need_it(guarded, path, body):
    refused = guarded.post(path, json=body)
    assert refused.status_code == 401 and refused.get_json()["code"] == "unauthorized"
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert guarded.post(path, json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert guarded.post(path, json=body, headers={"X-API-Key": "s3cret-for-tests"}).status_code == 200
    assert guarded.post(path, json=body, headers={"Authorization": "Bearer s3cret-for-tests"}).status_code == 200


@pytest.mark.model
@pytest.mark.parametrize(
    "path",
    ["/v2/health/live", "/v2/health/ready", "/v2/models/diabetes/ready", "/metadata", "/openapi.json", "/metrics"],
)
def test_with_an_api_key_set_probes_and_descriptions_stay_open(guarded, path):
    assert guarded.get(path).status_code == 200


@pytest.mark.model
def test_the_prediction_log_keeps_each_requests_inputs_and_outputs(served_module, tmp_path):
    log = tmp_path / "predictions.jsonl"
    client = served_module.create_app(served_module.bundle, prediction_log=str(log)).test_client()
    record = dict(zip(served_module.contract.names, ARTICLE_VALUES), serum_insuling=None)
    answer = client.post("/predict", json=[record, record], headers={"X-Request-ID": "batch-7"}).get_json()
    client.post(ARTICLE_PATH, json=ARTICLE_BODY)
    text = log.read_text()
    first, second = [json.loads(line) for line in text.splitlines()]
    assert first["request_id"] == "batch-7" and first["model_version"] == served_module.bundle.version
    assert first["inputs"][0][4] is None and first["inputs"][0][1] == 106
    assert np.array_equal(
        np.float32(first["probabilities"]), np.float32([p["probability"] for p in answer["predictions"]])
    )
    assert second["route"] == ARTICLE_PATH and len(second["inputs"]) == 1
    # As the model read them (float32, shortest form), not widened to float64.
    assert "34.2," in text and "34.20000076293945" not in text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


@pytest.mark.model
def test_the_prediction_log_is_rotated_past_its_size_cap(served_module, tmp_path):
    log = tmp_path / "predictions.jsonl"
    client = served_module.create_app(
        served_module.bundle, prediction_log=str(log), prediction_log_max_bytes=2000
    ).test_client()
    for _ in range(40):
        assert client.post(ARTICLE_PATH, json=ARTICLE_BODY).status_code == 200
    rotated = sorted(tmp_path.glob("predictions.jsonl.*[0-9]"))
    assert [path.name for path in rotated] == [f"predictions.jsonl.{n}" for n in range(1, 6)]
    for path in [log, *rotated]:
        assert path.stat().st_size <= 2000 and stat.S_IMODE(path.stat().st_mode) == 0o600
        assert all(json.loads(line)["route"] == ARTICLE_PATH for line in path.read_text().splitlines())


def test_a_prediction_log_and_its_copies_made_wider_before_the_service_are_narrowed_with_a_warning(tmp_path, caplog):
    log = tmp_path / "predictions.jsonl"
    for path in [log, tmp_path / "predictions.jsonl.1", tmp_path / "predictions.jsonl.3"]:
        path.write_text('{"inputs": [[1, 106, 70, 28, 135, 34.2, 0.142, 22]]}\n')
        path.chmod(0o644)
    with caplog.at_level("WARNING", logger="diabetes.observability"):
        PredictionLog(str(log), 1 << 20)
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in tmp_path.iterdir()} == {
        "predictions.jsonl": 0o600,
        "predictions.jsonl.1": 0o600,
        "predictions.jsonl.3": 0o600,
    }
    warned = sorted(record.getMessage() for record in caplog.records if record.levelname == "WARNING")
    assert warned == [
        f"prediction log {log}{suffix} had mode 644: others could read the patients' rows it holds; narrowed to 600"
        for suffix in ("", ".1", ".3")
    ]


def test_a_rotated_copy_made_wider_while_the_service_runs_is_narrowed_as_it_is_rotated(tmp_path, caplog):
    log = tmp_path / "predictions.jsonl"
    prediction_log = PredictionLog(str(log), 100)
    record = {"inputs": np.float32([ARTICLE_VALUES]), "probabilities": np.float32([0.1])}
    prediction_log.append(record)
    prediction_log.append(record)  # past 100 bytes: the first line is rotated to .1
    (tmp_path / "predictions.jsonl.1").chmod(0o604)
    with caplog.at_level("WARNING", logger="diabetes.observability"):
        prediction_log.append(record)  # .1 moves to .2
    assert stat.S_IMODE((tmp_path / "predictions.jsonl.2").stat().st_mode) == 0o600
    assert any("predictions.jsonl.2 had mode 604" in record.getMessage() for record in caplog.records)
    for path in tmp_path.glob("predictions.jsonl*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_wider_prediction_log_that_cannot_be_narrowed_is_refused_at_start(tmp_path, monkeypatch):
    log = tmp_path / "predictions.jsonl"
    log.write_text("")
    log.chmod(0o644)

    def not_the_owner(path, mode):
        raise PermissionError(1, "Operation not permitted", path)

    monkeypatch.setattr("diabetes.observability.os.chmod", not_the_owner)
    with pytest.raises(SettingRefused, match=f"prediction log {log} is readable by others and cannot be made private"):
        PredictionLog(str(log), 1 << 20)


def test_a_prediction_log_on_a_device_is_left_as_the_device_is():
    before = stat.S_IMODE(os.stat("/dev/full").st_mode)
    PredictionLog("/dev/full", 1 << 20)
    assert stat.S_IMODE(os.stat("/dev/full").st_mode) == before


@pytest.mark.model
def test_a_prediction_log_on_a_full_disk_drops_lines_and_answers_all_the_same(served_module):
    client = served_module.create_app(served_module.bundle, prediction_log="/dev/full").test_client()

    def dropped() -> float:
        return metric_value(
            client.get("/metrics").get_data(as_text=True), "diabetes_log_lines_dropped_total", log="prediction"
        )

    dropped_before = dropped()
    for _ in range(3):
        assert client.post(ARTICLE_PATH, json=ARTICLE_BODY).status_code == 200
    assert dropped() == dropped_before + 3

"""The API, on every route: through Flask's test client on the generated
script's app, and over HTTP against the PM2-served service (`target`)."""

import dataclasses
import gzip
import json as json_module
import re
import subprocess
import time

import jsonschema
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
import yaml
from openapi_spec_validator import validate as validate_openapi

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH, ARTICLE_VALUES, CSV_HEADER, V2_INFER
from diabetes.features import FEATURE_NAMES
from diabetes.open_inference import V2_INFERENCE_HEADER_CONTENT_LENGTH
from diabetes.settings import notebook_defaults
from tests.calls import BAD_CALLS, BINARY_ROW, GOOD_CALLS, NO_BODY, Call
from tests.compressed import CODINGS, compressed, zip_bomb
from tests.conftest import PROJECT, Target, json_of
from tests.processes import clean_environment
from tests.reference import ReferenceModel, reference_model

V2_SPEC = yaml.safe_load((PROJECT / "diabetes" / "specs" / "oip-v2-rest.yaml").read_text())


def v2_schema(name):
    """A schema of the Open Inference Protocol's published REST description."""
    return {**V2_SPEC["components"]["schemas"][name], "components": V2_SPEC["components"]}


@pytest.fixture(scope="module")
def data_set(trained) -> pd.DataFrame:
    """Every row of the data set, with the training notebook's own prediction."""
    return pd.read_csv(trained["models_dir"] / "latest" / "predictions.csv")


@pytest.fixture()
def reference(target, trained) -> ReferenceModel:
    """The model version that `target` serves, loaded by XGBoost itself."""
    return reference_model(trained["models_dir"] / target.version)


@pytest.mark.model
def test_the_reference_model_gives_every_row_the_training_runs_prediction(trained, data_set):
    model = reference_model((trained["models_dir"] / "latest").resolve())
    model.assert_probabilities(data_set[model.names].values.tolist(), data_set["probability"])


def post(target, path, *, json=None, text=None, content_type="application/json"):
    body = json_module.dumps(json).encode() if json is not None else text.encode()
    status, headers, answer = target.call(Call("", "POST", path, 200, text=body.decode(), content_type=content_type))
    assert status == 200, answer[:500]
    return json_of(answer)


# ---- every class of bad input, on every route --------------------------------------------
@pytest.mark.parametrize("call", BAD_CALLS, ids=[call.what for call in BAD_CALLS])
def test_a_bad_call_answers_a_json_error_saying_what_was_wrong(target, call):
    status, headers, body = target.call(call)
    assert status == call.status
    assert headers["Content-Type"] == "application/json"
    envelope = json_of(body)
    assert set(envelope) == {"error", "code", "status", "field", "row"}
    assert (envelope["code"], envelope["status"]) == (call.code, call.status)
    if call.field is not None:
        assert envelope["field"] == call.field
    assert isinstance(envelope["error"], str) and 10 < len(envelope["error"]) < 400
    assert "Traceback" not in envelope["error"] and 'File "' not in envelope["error"]


def with_version(value, version):
    if isinstance(value, str):
        return value.replace("{version}", version)
    if isinstance(value, list):
        return [with_version(item, version) for item in value]
    if isinstance(value, dict):
        return {name: with_version(item, version) for name, item in value.items()}
    return value


def v2_outputs_asked(call: Call) -> list:
    asked = call.json.get("outputs") if call.json is not NO_BODY else None
    return [output["name"] for output in asked] if asked else ["probability", "label"]


def assert_the_models_answer(call: Call, answer: dict, model: ReferenceModel):
    """A good prediction call's answer, route by route, against the model itself."""
    rows, path = call.rows, call.path.split("?")[0]
    if path == ARTICLE_PATH:
        assert set(answer) == {"prediction"}
        model.assert_probabilities(rows, [answer["prediction"]])
    elif path == "/predict":
        assert (answer["model_version"], answer["threshold"]) == (model.version, model.threshold)
        predictions = answer["predictions"]
        probabilities = [prediction["probability"] for prediction in predictions]
        model.assert_probabilities(rows, probabilities)
        model.assert_labels(rows, [prediction["label"] for prediction in predictions], probabilities)
        if call.path.endswith("?explain=true"):
            model.assert_explanations(rows, [prediction["explanation"] for prediction in predictions])
        else:
            assert not any("explanation" in prediction for prediction in predictions)
    else:
        assert (answer["model_name"], answer["model_version"]) == ("diabetes", model.version)
        assert answer.get("id") == (call.json.get("id") if call.json is not NO_BODY else None)
        outputs = {output["name"]: output for output in answer["outputs"]}
        assert list(outputs) == v2_outputs_asked(call)
        datatypes = {"probability": "FP32", "label": "INT64"}
        assert all((o["datatype"], o["shape"]) == (datatypes[n], [len(rows)]) for n, o in outputs.items())
        if "probability" in outputs:
            model.assert_probabilities(rows, outputs["probability"]["data"])
        if "label" in outputs:
            probabilities = outputs["probability"]["data"] if "probability" in outputs else None
            model.assert_labels(rows, outputs["label"]["data"], probabilities)


@pytest.mark.parametrize("call", GOOD_CALLS, ids=[call.what for call in GOOD_CALLS])
def test_a_good_call_answers_what_the_model_says(target, reference, call):
    status, headers, body = target.call(call)
    assert status == 200, body[:500]
    assert headers["X-Model-Version"] == reference.version
    if call.path == "/docs":
        assert headers["Content-Type"].startswith("text/html")
        return
    assert headers["Content-Type"] == "application/json"
    answer = json_of(body)
    if call.rows:
        assert_the_models_answer(call, answer, reference)
    if call.answer is not None:
        expected = with_version(call.answer, reference.version)
        assert {name: answer.get(name) for name in expected} == expected


def test_every_good_call_that_predicts_says_which_rows_it_sends():
    predicting = [call for call in GOOD_CALLS if call.method == "POST"]
    assert predicting and all(call.rows for call in predicting)
    assert all(call.rows or call.answer or call.path in ("/openapi.json", "/docs") for call in GOOD_CALLS)


def test_a_405_says_which_methods_are_allowed(target):
    status, headers, _ = target.call(Call("", "GET", "/predict", 405, content_type=None))
    assert status == 405 and "POST" in headers["Allow"]


@pytest.mark.model
def test_errors_carry_the_same_cors_headers_as_answers(in_process):
    client_origin = {"Origin": "http://localhost:3000"}
    for call in (GOOD_CALLS[1], BAD_CALLS[0]):
        status, headers, _ = in_process.send(
            call.method, call.path, call.body(1, 1), {"Content-Type": call.content_type, **client_origin}
        )
        assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000", status


@pytest.mark.model
def test_a_foreign_browser_origin_is_not_allowed_by_default(in_process):
    _, headers, _ = in_process.send(
        "POST",
        ARTICLE_PATH,
        ARTICLE_BODY["data"].encode(),
        {"Content-Type": "application/json", "Origin": "https://elsewhere.example"},
    )
    assert "Access-Control-Allow-Origin" not in headers


@pytest.mark.model
def test_csv_that_the_csv_reader_cannot_read_answers_a_400(in_process):
    status, _, body = in_process.send(
        "POST", "/predict", ('"' + "x" * 200000 + '"').encode(), {"Content-Type": "text/csv"}
    )
    assert status == 400 and json_of(body)["code"] == "invalid_csv"


@pytest.mark.model
def test_an_unexpected_failure_answers_a_generic_json_500_without_internals(served_module, caplog):
    """A real failure inside XGBoost: a booster trained on 3 features, asked about 8 (a batch large
    enough to go to XGBoost; load_bundle refuses such a model, so only a test can build it)."""
    three_features = xgb.train(
        {"objective": "binary:logistic"}, xgb.DMatrix(np.eye(3, dtype=np.float32), label=[0, 1, 0]), num_boost_round=1
    )
    mismatched = served_module.bundle.__class__(three_features, served_module.bundle.metadata)
    response = (
        served_module.create_app(mismatched).test_client().post("/predict", json={"instances": [ARTICLE_VALUES] * 100})
    )
    assert response.status_code == 500
    assert response.get_json() == {
        "error": "internal error: the request could not be handled",
        "code": "internal_error",
        "status": 500,
        "field": None,
        "row": None,
    }
    assert "Traceback" in caplog.text and "Feature shape mismatch" in caplog.text


# ---- the model's answers on every route, for every row -----------------------------------
@pytest.mark.model
def test_the_article_route_answers_the_notebooks_prediction_for_every_row(in_process, data_set):
    served = [
        post(in_process, ARTICLE_PATH, json={"data": ",".join(map(str, row))})["prediction"]
        for row in data_set[list(FEATURE_NAMES)].itertuples(index=False)
    ]
    assert np.abs(np.array(served) - data_set["probability"]).max() < 1e-6


def v2_binary_body(rows: np.ndarray) -> tuple[bytes, dict]:
    """A V2 request in Triton's binary tensor data extension, as tritonclient sends it."""
    tensor = rows.astype("<f4").tobytes()
    json_part = json_module.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": list(rows.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(tensor)},
                }
            ]
        }
    ).encode()
    return json_part + tensor, {V2_INFERENCE_HEADER_CONTENT_LENGTH: str(len(json_part))}


def batch_answer(target, rows: pd.DataFrame, way) -> dict:
    """What a route answers for a batch: its model version, probabilities and labels (and explanations)."""
    if way == "V2 binary FP32":
        body, headers = v2_binary_body(rows.values)
        status, _, raw = target.send("POST", V2_INFER, body, headers)
        assert status == 200, raw[:500]
        answer = json_of(raw)
    elif way.startswith("V2"):
        datatype = way.split()[-1]
        tensor = {"name": "features", "shape": list(rows.shape), "datatype": datatype, "data": rows.values.tolist()}
        answer = post(target, V2_INFER, json={"inputs": [tensor]})
    if way.startswith("V2"):
        outputs = {output["name"]: output for output in answer["outputs"]}
        assert [outputs[name]["shape"] for name in ("probability", "label")] == [[len(rows)], [len(rows)]]
        return {
            "model_version": answer["model_version"],
            "probabilities": outputs["probability"]["data"],
            "labels": outputs["label"]["data"],
        }
    if way in ("records", "explained records"):
        path = "/predict?explain=true" if way == "explained records" else "/predict"
        answer = post(target, path, json=rows.to_dict(orient="records"))
    elif way == "instances":
        answer = post(target, "/predict", json={"instances": rows.values.tolist()})
    elif way == "csv":
        answer = post(target, "/predict", text=rows.to_csv(index=False), content_type="text/csv")
    elif way == "csv without header":
        answer = post(target, "/predict", text=rows.to_csv(index=False, header=False), content_type="text/csv")
    predictions = answer["predictions"]
    return {
        "model_version": answer["model_version"],
        "probabilities": [prediction["probability"] for prediction in predictions],
        "labels": [prediction["label"] for prediction in predictions],
        "explanations": [prediction.get("explanation") for prediction in predictions],
    }


BATCH_WAYS = ["records", "instances", "csv", "csv without header", "V2 FP32", "V2 FP64", "V2 binary FP32"]


@pytest.mark.parametrize("way", BATCH_WAYS)
def test_every_route_answers_the_models_probability_and_label_for_all_768_rows(target, reference, data_set, way):
    rows = data_set[reference.names]
    answer = batch_answer(target, rows, way)
    assert answer["model_version"] == reference.version
    assert np.abs(np.array(answer["probabilities"]) - data_set["probability"]).max() < 1e-6
    reference.assert_probabilities(rows.values.tolist(), answer["probabilities"])
    reference.assert_labels(rows.values.tolist(), answer["labels"], answer["probabilities"])
    assert 0 < sum(answer["labels"]) < len(rows)


def test_explanations_are_the_models_treeshap_contributions_for_every_row(target, reference, data_set, limits):
    rows = data_set[reference.names]
    # In batches of as many rows as a request may have explained.
    batches = [
        rows[start : start + limits["max_explain_rows"]] for start in range(0, len(rows), limits["max_explain_rows"])
    ]
    answers = [batch_answer(target, batch, "explained records") for batch in batches]
    answer = {name: sum((batch[name] for batch in answers), []) for name in ("probabilities", "explanations")}
    reference.assert_probabilities(rows.values.tolist(), answer["probabilities"])
    reference.assert_explanations(rows.values.tolist(), answer["explanations"])
    for explanation, probability in zip(answer["explanations"], answer["probabilities"]):
        total = explanation["base_value"] + sum(explanation["contributions"].values())
        assert total == pytest.approx(explanation["margin"], abs=1e-5)
        assert 1 / (1 + np.exp(-total)) == pytest.approx(probability, abs=1e-5)


def app_with_threshold(served_module, limits, threshold: float) -> Target:
    """An app around the served model, with its threshold set to `threshold`."""
    bundle = served_module.bundle
    client = served_module.create_app(
        bundle.__class__(bundle.booster, dataclasses.replace(bundle.metadata, threshold=threshold))
    ).test_client()

    def send(method, path, body, headers):
        with client.open(path, method=method, data=body, headers=headers) as response:
            return response.status_code, response.headers, response.get_data()

    return Target(send, bundle.version, limits)


@pytest.mark.model
@pytest.mark.parametrize("way", ["records", "csv", "V2 FP32", "V2 binary FP32"])
def test_a_probability_exactly_at_the_threshold_is_labelled_1_and_one_float_below_it_0(served_module, limits, way):
    rows = pd.DataFrame([ARTICLE_VALUES, BINARY_ROW, ARTICLE_VALUES], columns=list(FEATURE_NAMES))
    answered = batch_answer(app_with_threshold(served_module, limits, 0.5), rows, way)
    probability = np.float32(answered["probabilities"][1])
    at = batch_answer(app_with_threshold(served_module, limits, float(probability)), rows, way)
    assert at["probabilities"][1] == probability and at["labels"] == [0, 1, 0]
    above = float(np.nextafter(probability, np.float32(1)))
    assert batch_answer(app_with_threshold(served_module, limits, above), rows, way)["labels"] == [0, 0, 0]


@pytest.mark.model
def test_null_and_zero_both_mean_not_measured(in_process, trained):
    record = dict(zip(FEATURE_NAMES, ARTICLE_VALUES))
    probabilities = [
        p["probability"]
        for p in post(
            in_process, "/predict", json=[{**record, "serum_insuling": None}, {**record, "serum_insuling": 0}]
        )["predictions"]
    ]
    empty_field = post(
        in_process, "/predict", text=f"{CSV_HEADER}\n1,106,70,28,,34.2,0.142,22\n", content_type="text/csv"
    )["predictions"][0]["probability"]
    assert probabilities[0] == probabilities[1] == empty_field
    model = reference_model(trained["models_dir"] / in_process.version)
    model.assert_probabilities([[*ARTICLE_VALUES[:4], None, *ARTICLE_VALUES[5:]]], [empty_field])


# ---- explanations: a row limit of their own ---------------------------------------------------
def test_as_many_rows_as_may_be_explained_are_explained_and_one_more_is_refused_with_413(target, reference, limits):
    most = limits["max_explain_rows"]
    assert most < limits["max_batch_rows"]
    rows = [ARTICLE_VALUES, BINARY_ROW] * (most // 2) + [ARTICLE_VALUES] * (most % 2)
    explained = post(target, "/predict?explain=true", json={"instances": rows})["predictions"]
    reference.assert_explanations(rows, [prediction["explanation"] for prediction in explained])
    for body, content_type in [
        (json_module.dumps({"instances": rows + [BINARY_ROW]}), "application/json"),
        (json_module.dumps([dict(zip(FEATURE_NAMES, row)) for row in rows + [BINARY_ROW]]), "application/json"),
        ("".join(",".join(map(str, row)) + "\n" for row in rows + [BINARY_ROW]), "text/csv"),
    ]:
        status, _, answer = target.call(
            Call("", "POST", "/predict?explain=true", 413, text=body, content_type=content_type)
        )
        assert status == 413
        counted = (
            f"the CSV has more than {most} rows" if content_type == "text/csv" else f"the batch has {most + 1} rows"
        )
        assert json_of(answer) == {
            "error": f"{counted}, at most {most} are explained per request: send fewer rows, or drop explain",
            "code": "too_many_rows",
            "status": 413,
            "field": None,
            "row": None,
        }
        # The same batch without explanations is answered.
        unexplained = target.call(Call("", "POST", "/predict", 200, text=body, content_type=content_type))
        assert unexplained[0] == 200 and len(json_of(unexplained[2])["predictions"]) == most + 1


@pytest.mark.model
def test_the_explanations_limit_is_the_apps_max_explain_rows(served_module):
    client = served_module.create_app(served_module.bundle, max_explain_rows=2).test_client()
    three = {"instances": [ARTICLE_VALUES, BINARY_ROW, ARTICLE_VALUES]}
    response = client.post("/predict?explain=true", json=three)
    assert (response.status_code, response.get_json()["code"]) == (413, "too_many_rows")
    assert "at most 2 are explained per request" in response.get_json()["error"]
    assert client.post("/predict?explain=true", json={"instances": three["instances"][:2]}).status_code == 200
    assert client.post("/predict", json=three).status_code == 200
    explain = client.get("/openapi.json").get_json()["paths"]["/predict"]["post"]["parameters"][0]
    assert "at most 2 rows" in explain["description"]


@pytest.mark.model
def test_diabetes_max_explain_rows_in_the_environment_sets_the_served_scripts_limit(scripts, trained):
    """The generated script run as gunicorn's workers import it, with the variable set."""
    program = f"""
import importlib.util, json
spec = importlib.util.spec_from_file_location("serve", {str(scripts / "serve.py")!r})
serve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve)
client = serve.app.test_client()
rows = {{"instances": [{ARTICLE_VALUES!r}] * 3}}
answer = client.post("/predict?explain=true", json=rows).get_json()
print("answered", json.dumps([serve.settings["max_explain_rows"], answer]))
"""
    env = clean_environment(DIABETES_MODEL_DIR=str(trained["models_dir"] / "latest"), DIABETES_MAX_EXPLAIN_ROWS="2")
    python = str(PROJECT / ".venv/bin/python")
    result = subprocess.run([python, "-c", program], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    # The app writes its access log on the standard output too.
    [answered] = [line for line in result.stdout.splitlines() if line.startswith("answered ")]
    setting, answer = json_module.loads(answered.removeprefix("answered "))
    assert setting == 2
    assert (answer["status"], answer["code"]) == (413, "too_many_rows")
    assert "at most 2 are explained per request: send fewer rows, or drop explain" in answer["error"]


@pytest.mark.model
def test_the_served_script_reads_every_parameter_of_the_notebook_as_a_setting(served_module):
    assert set(served_module.settings) == set(notebook_defaults())


# ---- compressed bodies ---------------------------------------------------------------------------
def v2_json_body(rows) -> bytes:
    return json_module.dumps(
        {"inputs": [{"name": "features", "shape": [len(rows), 8], "datatype": "FP32", "data": rows}]}
    ).encode()


BODY_ROWS = [ARTICLE_VALUES, BINARY_ROW]
# Every way a body is read: a route, its body, its headers.
BODIES = {
    "the article's route": (
        ARTICLE_PATH,
        json_module.dumps(ARTICLE_BODY).encode(),
        {"Content-Type": "application/json"},
    ),
    "predict, JSON": (
        "/predict?explain=true",
        json_module.dumps({"instances": BODY_ROWS}).encode(),
        {"Content-Type": "application/json"},
    ),
    "predict, CSV": (
        "/predict",
        f"{CSV_HEADER}\n{ARTICLE_BODY['data']}\n{','.join(map(str, BINARY_ROW))}\n".encode(),
        {"Content-Type": "text/csv"},
    ),
    "V2, JSON": (V2_INFER, v2_json_body(BODY_ROWS), {}),
    "V2, binary tensor data": (V2_INFER, *v2_binary_body(np.array(BODY_ROWS))),
}


@pytest.mark.parametrize("path, body, headers", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize("header, coding", CODINGS.values(), ids=CODINGS.keys())
def test_a_compressed_body_gets_the_answer_the_same_body_uncompressed_gets(target, path, body, headers, header, coding):
    plain_status, _, plain = target.send("POST", path, body, headers)
    status, answer_headers, answer = target.send(
        "POST", path, compressed(body, coding), {**headers, "Content-Encoding": header}
    )
    assert (plain_status, status) == (200, 200), answer[:300]
    assert answer == plain
    assert answer_headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("way", ["instances", "csv", "V2 binary FP32"])
def test_all_768_rows_compressed_get_the_models_answers(target, reference, data_set, way):
    rows = data_set[reference.names]
    if way == "V2 binary FP32":
        body, headers = v2_binary_body(rows.values)
    elif way == "csv":
        body, headers = rows.to_csv(index=False).encode(), {"Content-Type": "text/csv"}
    else:
        body, headers = (
            json_module.dumps({"instances": rows.values.tolist()}).encode(),
            {"Content-Type": "application/json"},
        )
    path = V2_INFER if way.startswith("V2") else "/predict"
    status, _, answer = target.send("POST", path, gzip.compress(body), {**headers, "Content-Encoding": "gzip"})
    assert status == 200, answer[:300]
    answer = json_of(answer)
    if way.startswith("V2"):
        probabilities = next(output["data"] for output in answer["outputs"] if output["name"] == "probability")
    else:
        probabilities = [prediction["probability"] for prediction in answer["predictions"]]
    reference.assert_probabilities(rows.values.tolist(), probabilities)


@pytest.mark.parametrize("path, body, headers", BODIES.values(), ids=BODIES.keys())
def test_a_zip_bomb_is_refused_with_413_on_every_route(target, limits, path, body, headers):
    started = time.monotonic()
    status, _, answer = target.send("POST", path, zip_bomb(), {**headers, "Content-Encoding": "gzip"})
    assert status == 413
    assert json_of(answer) == {
        "error": f"the body decompresses to more than {limits['max_request_bytes']} bytes, the most this service "
        "accepts: split it",
        "code": "request_entity_too_large",
        "status": 413,
        "field": None,
        "row": None,
    }
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("path, body, headers", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, gzip", "identity, gzip"])
def test_a_body_in_another_content_coding_or_several_is_refused_with_415_on_every_route(
    target, path, body, headers, coding
):
    status, _, answer = target.send("POST", path, body, {**headers, "Content-Encoding": coding})
    assert status == 415
    assert json_of(answer) == {
        "error": f"Content-Encoding {coding} is not supported: send the body uncompressed, or with one of gzip, "
        "deflate",
        "code": "unsupported_media_type",
        "status": 415,
        "field": None,
        "row": None,
    }


@pytest.mark.parametrize("path, body, headers", BODIES.values(), ids=BODIES.keys())
def test_a_body_that_is_not_the_gzip_it_says_it_is_gets_400_on_every_route(target, path, body, headers):
    status, _, answer = target.send("POST", path, body, {**headers, "Content-Encoding": "gzip"})
    assert status == 400
    assert json_of(answer) == {
        "error": "the body is not valid gzip data, as its Content-Encoding says: incorrect header check",
        "code": "invalid_body",
        "status": 400,
        "field": None,
        "row": None,
    }


# ---- the Open Inference Protocol V2 --------------------------------------------------------
def test_a_v2_request_made_as_the_protocol_shows_it_works(target, reference):
    """Flat row-major data, as the protocol's examples send it, with an id."""
    request = {
        "id": "42",
        "inputs": [
            {
                "name": "features",
                "shape": [2, 8],
                "datatype": "FP32",
                "data": ARTICLE_VALUES + [6, 148, 72, 35, 0, 33.6, 0.627, 50],
            }
        ],
        "outputs": [{"name": "probability"}],
    }
    jsonschema.validate(request, v2_schema("inference_request"))
    answer = post(target, "/v2/models/diabetes/infer", json=request)
    jsonschema.validate(answer, v2_schema("inference_response"))
    assert answer["id"] == "42" and answer["model_name"] == "diabetes"
    assert [output["name"] for output in answer["outputs"]] == ["probability"]
    assert answer["outputs"][0]["shape"] == [2] and answer["outputs"][0]["datatype"] == "FP32"
    article = post(target, ARTICLE_PATH, json=ARTICLE_BODY)["prediction"]
    assert answer["outputs"][0]["data"][0] == pytest.approx(article, abs=1e-7)
    data = request["inputs"][0]["data"]
    reference.assert_probabilities([data[:8], data[8:]], answer["outputs"][0]["data"])


def test_a_v2_batch_of_1000_rows_works(target, reference, data_set):
    rows = pd.concat([data_set] * 2)[list(FEATURE_NAMES)].head(1000).values.tolist()
    answer = post(
        target,
        "/v2/models/diabetes/infer",
        json={"inputs": [{"name": "features", "shape": [1000, 8], "datatype": "FP64", "data": rows}]},
    )
    jsonschema.validate(answer, v2_schema("inference_response"))
    assert {output["name"]: output["shape"] for output in answer["outputs"]} == {"probability": [1000], "label": [1000]}
    outputs = {output["name"]: output["data"] for output in answer["outputs"]}
    reference.assert_probabilities(rows, outputs["probability"])
    reference.assert_labels(rows, outputs["label"], outputs["probability"])


@pytest.mark.parametrize(
    "path, schema",
    [
        ("/v2", "metadata_server_response"),
        ("/v2/models/diabetes", "metadata_model_response"),
        ("/v2/models/diabetes/versions/{version}", "metadata_model_response"),
    ],
)
def test_v2_metadata_conforms_to_the_protocol(target, path, schema):
    status, _, body = target.call(Call("", "GET", path, 200, content_type=None))
    assert status == 200
    jsonschema.validate(json_of(body), v2_schema(schema))


def test_v2_probes_say_the_model_is_live_and_ready(target):
    answers = {
        path: json_of(target.call(Call("", "GET", path, 200, content_type=None))[2])
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/diabetes/ready")
    }
    assert answers == {
        "/v2/health/live": {"live": True},
        "/v2/health/ready": {"ready": True},
        "/v2/models/diabetes/ready": {"name": "diabetes", "ready": True},
    }


# ---- description -----------------------------------------------------------------------
def test_the_model_card_describes_the_served_model(target, reference):
    card = json_of(target.call(Call("", "GET", "/metadata", 200, content_type=None))[2])
    assert card == reference.metadata and card["version"] == target.version
    assert [f["name"] for f in card["features"]] == list(FEATURE_NAMES)
    assert all({"meaning", "unit", "training_min", "training_max"} <= set(f) for f in card["features"])
    assert {"metrics", "parameters", "trained_at", "data", "model_sha256"} <= set(card)


def test_the_openapi_document_is_valid_and_covers_every_route(target):
    document = json_of(target.call(Call("", "GET", "/openapi.json", 200, content_type=None))[2])
    validate_openapi(document)
    documented = {re.sub(r"\{[^}]+\}", "{}", path) for path in document["paths"]}
    called = {
        re.sub(
            r"^(/v2/models/)[^/]+((/versions/)[^/]+)?",
            lambda m: m[1] + "{}" + (m[3] + "{}" if m[2] else ""),
            call.path.split("?")[0],
        )
        for call in GOOD_CALLS + BAD_CALLS
        if call.path != "/docs" and call.status != 404
    }
    assert called <= documented


def test_the_docs_page_loads_every_asset_from_the_app_itself(target):
    status, _, page = target.call(Call("", "GET", "/docs", 200, content_type=None))
    assert status == 200
    page = page.decode()
    assert "http://" not in page and "https://" not in page
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert {"/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"} <= set(assets)
    for asset in assets:
        status, _, body = target.call(Call("", "GET", asset, 200, content_type=None))
        assert status == 200 and len(body) > 100, asset


@pytest.mark.model
@pytest.mark.pm2
def test_a_fuzzer_driven_by_the_openapi_document_finds_no_server_error_and_no_broken_answer(
    over_http, service, tmp_path
):
    result = subprocess.run(
        [
            str(PROJECT / ".venv" / "bin" / "schemathesis"),
            "run",
            service["url"] + "/openapi.json",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_headers_conformance,response_schema_conformance,unsupported_method",
            "--max-examples",
            "25",
            "--max-time",
            "20",
            "--workers",
            "2",
            "--request-timeout",
            "10",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    summary = result.stdout[-3000:]
    print(summary)
    assert result.returncode == 0, summary
    assert re.search(r"(\d+) generated", summary) and int(re.search(r"(\d+) generated", summary)[1]) >= 200


# The endpoint notebook's cors_origins (localhost and 127.0.0.1, any port).
DEFAULT_ORIGINS = None
EXPOSED = "Inference-Header-Content-Length, Server-Timing, X-Model-Version, X-Request-ID"
METHODS = "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"


def allowed(origin, *more, vary=True):
    """The CORS headers of an answer that a page of `origin` may read."""
    return [("Access-Control-Allow-Origin", origin), ("Access-Control-Expose-Headers", EXPOSED), *more] + (
        [("Vary", "Origin")] if vary else []
    )


def preflight(origin, method="POST", headers=None):
    return {"Origin": origin, "Access-Control-Request-Method": method} | (
        {"Access-Control-Request-Headers": headers} if headers else {}
    )


REFUSED = []
CORS_CASES = {
    "a local page, by default": (
        DEFAULT_ORIGINS,
        {"Origin": "http://localhost:3000"},
        allowed("http://localhost:3000"),
    ),
    "a local page in capitals": (
        DEFAULT_ORIGINS,
        {"Origin": "HTTP://LOCALHOST:3000"},
        allowed("HTTP://LOCALHOST:3000"),
    ),
    "a local address's page": (DEFAULT_ORIGINS, {"Origin": "http://127.0.0.1:8080"}, allowed("http://127.0.0.1:8080")),
    "another site's page": (DEFAULT_ORIGINS, {"Origin": "https://elsewhere.example"}, REFUSED),
    "a site named like localhost": (DEFAULT_ORIGINS, {"Origin": "http://localhost:3000.evil.net"}, REFUSED),
    "no Origin (not a browser)": (DEFAULT_ORIGINS, {}, REFUSED),
    "the pattern's site": (
        r"https://app\.example\.com",
        {"Origin": "https://app.example.com"},
        allowed("https://app.example.com"),
    ),
    "a site that only starts like the pattern": (
        r"https://app\.example\.com",
        {"Origin": "https://app.example.com.evil.net"},
        REFUSED,
    ),
    "the pattern's site on another port": (
        r"https://app\.example\.com",
        {"Origin": "https://app.example.com:8443"},
        REFUSED,
    ),
    "a preflight": (
        DEFAULT_ORIGINS,
        preflight("http://localhost:3000", "post", "x-api-key, content-type,Authorization"),
        allowed(
            "http://localhost:3000",
            ("Access-Control-Allow-Headers", "Authorization, content-type, x-api-key"),
            ("Access-Control-Allow-Methods", METHODS),
        ),
    ),
    "a preflight for a method not allowed": (
        DEFAULT_ORIGINS,
        preflight("http://localhost:3000", "TRACE"),
        allowed("http://localhost:3000"),
    ),
    "a preflight from another site": (DEFAULT_ORIGINS, preflight("https://elsewhere.example"), REFUSED),
    "a preflight from a site that only starts like the pattern": (
        r"https://app\.example\.com",
        preflight("https://app.example.com.evil.net"),
        REFUSED,
    ),
    "a page asking for the private network": (
        DEFAULT_ORIGINS,
        {"Origin": "http://127.0.0.1", "Access-Control-Request-Private-Network": "true"},
        allowed("http://127.0.0.1", ("Access-Control-Allow-Private-Network", "false")),
    ),
    "any site's page, with *": ("*", {"Origin": "https://elsewhere.example"}, allowed("https://elsewhere.example")),
    "no Origin, with *": ("*", {}, allowed("*", vary=False)),
    "the one site's page": (
        "https://app.example",
        {"Origin": "HTTPS://APP.example"},
        allowed("HTTPS://APP.example", vary=False),
    ),
    "no Origin, with one site": ("https://app.example", {}, allowed("https://app.example", vary=False)),
    "a site that only starts like the one site": (
        "https://app.example",
        {"Origin": "https://app.example.net"},
        REFUSED,
    ),
    "a local page, with no site allowed": ("", {"Origin": "http://localhost:3000"}, REFUSED),
    "no Origin, with no site allowed": ("", {}, REFUSED),
}


@pytest.fixture(scope="module")
def app_allowing(served_module, limits):
    """The service's app around the served model, with `cors_origins` set to
    each value the CORS cases need (each built once)."""
    apps = {}

    def app(origins):
        if origins is DEFAULT_ORIGINS:
            origins = limits["cors_origins"]
        if origins not in apps:
            apps[origins] = served_module.create_app(served_module.bundle, cors_origins=origins)
        return apps[origins]

    return app


@pytest.mark.model
@pytest.mark.parametrize("origins, headers, expected", CORS_CASES.values(), ids=CORS_CASES.keys())
def test_a_browser_page_may_read_the_answer_only_from_an_allowed_origin(app_allowing, origins, headers, expected):
    """The service's own answers (flask-cors on the app), for allowed,
    refused and preflight requests: each CORS header once, as expected."""
    method = "OPTIONS" if "Access-Control-Request-Method" in headers else "POST"
    answer = app_allowing(origins).test_client().open(ARTICLE_PATH, method=method, json=ARTICLE_BODY, headers=headers)
    assert answer.status_code == 200
    cors_headers = [(name, value) for name, value in answer.headers if name.startswith("Access-Control-")]
    cors_headers += [("Vary", value) for value in answer.headers.getlist("Vary") if value == "Origin"]
    assert sorted(cors_headers) == sorted(expected)

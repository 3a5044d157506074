"""The API, on every route: through Flask's test client on the generated
script's app, and over HTTP against the PM2-served service (`target`)."""

import re
import subprocess

import jsonschema
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
import yaml
from calls import BAD_CALLS, GOOD_CALLS, Call
from conftest import PROJECT, json_of
from openapi_spec_validator import validate as validate_openapi

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH, ARTICLE_VALUES, CSV_HEADER
from diabetes.features import FEATURE_NAMES, to_model_input

V2_SPEC = yaml.safe_load((PROJECT / "diabetes" / "specs" / "oip-v2-rest.yaml").read_text())


def v2_schema(name):
    """A schema of the Open Inference Protocol's published REST description."""
    return {**V2_SPEC["components"]["schemas"][name], "components": V2_SPEC["components"]}


@pytest.fixture(scope="module")
def data_set(trained) -> pd.DataFrame:
    """Every row of the data set, with the training notebook's own prediction."""
    return pd.read_csv(trained["models_dir"] / "latest" / "predictions.csv")


def post(target, path, *, json=None, text=None, content_type="application/json"):
    import json as json_module

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


@pytest.mark.parametrize("call", GOOD_CALLS, ids=[call.what for call in GOOD_CALLS])
def test_a_good_call_answers_200(target, call):
    status, headers, body = target.call(call)
    assert status == 200, body[:500]
    if call.path == "/docs":
        assert headers["Content-Type"].startswith("text/html")
    else:
        assert headers["Content-Type"] == "application/json"
        json_of(body)


def test_a_405_says_which_methods_are_allowed(target):
    status, headers, _ = target.call(Call("", "GET", "/predict", 405, content_type=None))
    assert status == 405 and "POST" in headers["Allow"]


def test_errors_carry_the_same_cors_headers_as_answers(in_process):
    client_origin = {"Origin": "http://localhost:3000"}
    for call in (GOOD_CALLS[1], BAD_CALLS[0]):
        status, headers, _ = in_process.send(
            call.method, call.path, call.body(1, 1), {"Content-Type": call.content_type, **client_origin}
        )
        assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000", status


def test_a_foreign_browser_origin_is_not_allowed_by_default(in_process):
    _, headers, _ = in_process.send(
        "POST",
        ARTICLE_PATH,
        ARTICLE_BODY["data"].encode(),
        {"Content-Type": "application/json", "Origin": "https://elsewhere.example"},
    )
    assert "Access-Control-Allow-Origin" not in headers


def test_csv_that_the_csv_reader_cannot_read_answers_a_400(in_process):
    status, _, body = in_process.send(
        "POST", "/predict", ('"' + "x" * 200000 + '"').encode(), {"Content-Type": "text/csv"}
    )
    assert status == 400 and json_of(body)["code"] == "invalid_csv"


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


# ---- the same probabilities on every route ------------------------------------------------
def test_the_article_route_answers_the_notebooks_prediction_for_every_row(in_process, data_set):
    served = [
        post(in_process, ARTICLE_PATH, json={"data": ",".join(map(str, row))})["prediction"]
        for row in data_set[list(FEATURE_NAMES)].itertuples(index=False)
    ]
    assert np.abs(np.array(served) - data_set["probability"]).max() < 1e-6


def batch_probabilities(target, data_set, way) -> np.ndarray:
    rows = data_set[list(FEATURE_NAMES)]
    if way == "records":
        answer = post(target, "/predict", json=rows.to_dict(orient="records"))
    elif way == "instances":
        answer = post(target, "/predict", json={"instances": rows.values.tolist()})
    elif way == "csv":
        answer = post(target, "/predict", text=rows.to_csv(index=False), content_type="text/csv")
    elif way == "csv without header":
        answer = post(target, "/predict", text=rows.to_csv(index=False, header=False), content_type="text/csv")
    else:
        datatype = way.split()[-1]
        answer = post(
            target,
            "/v2/models/diabetes/infer",
            json={
                "inputs": [
                    {"name": "features", "shape": list(rows.shape), "datatype": datatype, "data": rows.values.tolist()}
                ]
            },
        )
        [probability] = [output for output in answer["outputs"] if output["name"] == "probability"]
        assert probability["shape"] == [len(rows)]
        return np.array(probability["data"])
    assert answer["model_version"] == target.version
    return np.array([prediction["probability"] for prediction in answer["predictions"]])


@pytest.mark.parametrize("way", ["records", "instances", "csv", "csv without header", "V2 FP32", "V2 FP64"])
def test_every_route_answers_the_notebooks_prediction_for_all_768_rows(target, data_set, way):
    assert np.abs(batch_probabilities(target, data_set, way) - data_set["probability"]).max() < 1e-6


def test_labels_are_the_probabilities_at_the_models_threshold(in_process, data_set):
    answer = post(in_process, "/predict", json={"instances": data_set[list(FEATURE_NAMES)].values.tolist()})
    assert [p["label"] for p in answer["predictions"]] == [
        int(p["probability"] >= answer["threshold"]) for p in answer["predictions"]
    ]


def test_explanations_sum_to_the_models_margin_for_every_row(in_process, served_module, data_set):
    rows = data_set[list(FEATURE_NAMES)]
    answer = post(in_process, "/predict?explain=true", json=rows.to_dict(orient="records"))
    margins = served_module.bundle.booster.inplace_predict(to_model_input(rows.values), predict_type="margin")
    for prediction, margin in zip(answer["predictions"], margins):
        explanation = prediction["explanation"]
        assert list(explanation["contributions"]) == list(FEATURE_NAMES)
        total = explanation["base_value"] + sum(explanation["contributions"].values())
        assert total == pytest.approx(float(margin), abs=1e-5)
        assert 1 / (1 + np.exp(-total)) == pytest.approx(prediction["probability"], abs=1e-5)


def test_null_and_zero_both_mean_not_measured(in_process):
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


# ---- the Open Inference Protocol V2 --------------------------------------------------------
def test_a_v2_request_made_as_the_protocol_shows_it_works(target):
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


def test_a_v2_batch_of_1000_rows_works(target, data_set):
    rows = pd.concat([data_set] * 2)[list(FEATURE_NAMES)].head(1000).values.tolist()
    answer = post(
        target,
        "/v2/models/diabetes/infer",
        json={"inputs": [{"name": "features", "shape": [1000, 8], "datatype": "FP64", "data": rows}]},
    )
    jsonschema.validate(answer, v2_schema("inference_response"))
    assert {output["name"]: output["shape"] for output in answer["outputs"]} == {"probability": [1000], "label": [1000]}


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
def test_the_model_card_describes_the_served_model(target):
    card = json_of(target.call(Call("", "GET", "/metadata", 200, content_type=None))[2])
    assert card["version"] == target.version
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
            "40",
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

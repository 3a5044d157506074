"""The generated endpoint script's app, through Flask's test client."""

import numpy as np
import pytest
import xgboost as xgb

ROUTE = "/katana-ml/api/v1.0/diabetes"
ARTICLE_ROW = "1,106,70,28,135,34.2,0.142,22"


def test_the_article_request_answers_the_models_probability(client, served_module):
    response = client.post(ROUTE, json={"data": ARTICLE_ROW})
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    prediction = response.get_json()["prediction"]
    assert 0 < prediction < 1
    assert prediction == pytest.approx(float(served_module.bundle.predict_proba([[1, 106, 70, 28, 135, 34.2, 0.142, 22]])[0]), abs=1e-7)
    assert response.get_json() == {"prediction": prediction}
    assert response.headers["X-Model-Version"] == served_module.bundle.version


@pytest.mark.parametrize("data", [[1, 106, 70, 28, 135, 34.2, 0.142, 22],
                                  " 1, 106 ,70,28,135,34.2,0.142,22 ",
                                  ["1", "106", "70", "28", "135", "34.2", "0.142", "22"]])
def test_other_spellings_of_the_same_row_answer_the_same_prediction(client, data):
    expected = client.post(ROUTE, json={"data": ARTICLE_ROW}).get_json()["prediction"]
    response = client.post(ROUTE, json={"data": data})
    assert response.status_code == 200
    assert response.get_json()["prediction"] == expected


def test_a_zero_that_means_not_measured_is_read_as_missing(client, served_module):
    """An insulin of 0 must be predicted like the training rows where insulin
    was not measured, not as a measured 0."""
    row = [1, 106, 70, 28, 0, 34.2, 0.142, 22]
    prediction = client.post(ROUTE, json={"data": row}).get_json()["prediction"]
    missing = np.array([row], dtype=np.float32)
    missing[0, 4] = np.nan
    assert prediction == pytest.approx(float(served_module.bundle.booster.inplace_predict(missing)[0]), abs=1e-7)


BAD_BODIES = [
    # (what, request keyword arguments, status, code, field)
    ("too few values", {"json": {"data": "1,106,70"}}, 400, "wrong_value_count", "data"),
    ("too many values", {"json": {"data": ARTICLE_ROW + ",5"}}, 400, "wrong_value_count", "data"),
    ("an empty string", {"json": {"data": ""}}, 400, "wrong_value_count", "data"),
    ("an empty value", {"json": {"data": "1,,70,28,135,34.2,0.142,22"}}, 400, "invalid_value", "data[1]"),
    ("a word", {"json": {"data": "1,abc,70,28,135,34.2,0.142,22"}}, 400, "invalid_value", "data[1]"),
    ("NaN", {"json": {"data": "1,106,70,28,135,nan,0.142,22"}}, 400, "invalid_value", "data[5]"),
    ("infinity", {"json": {"data": "1,106,70,28,135,34.2,0.142,inf"}}, 400, "invalid_value", "data[7]"),
    ("a huge number", {"json": {"data": "1,106,70,28,135,34.2,0.142,1e999"}}, 400, "invalid_value", "data[7]"),
    ("a boolean in a list", {"json": {"data": [1, True, 70, 28, 135, 34.2, 0.142, 22]}}, 400, "invalid_value", "data[1]"),
    ("null in a list", {"json": {"data": [1, None, 70, 28, 135, 34.2, 0.142, 22]}}, 400, "invalid_value", "data[1]"),
    ("a nested list", {"json": {"data": [[1], 106, 70, 28, 135, 34.2, 0.142, 22]}}, 400, "invalid_value", "data[0]"),
    ("a number for data", {"json": {"data": 1}}, 400, "invalid_type", "data"),
    ("null for data", {"json": {"data": None}}, 400, "invalid_type", "data"),
    ("an object for data", {"json": {"data": {"glucose": 106}}}, 400, "invalid_type", "data"),
    ("no data member", {"json": {"values": ARTICLE_ROW}}, 400, "missing_field", "data"),
    ("a JSON list body", {"json": [ARTICLE_ROW]}, 400, "missing_field", "data"),
    ("a JSON string body", {"json": ARTICLE_ROW}, 400, "missing_field", "data"),
    ("malformed JSON", {"data": '{"data": "1,106', "content_type": "application/json"}, 400, "invalid_json", None),
    ("an empty JSON body", {"data": "", "content_type": "application/json"}, 400, "invalid_json", None),
    ("a form body", {"data": {"data": ARTICLE_ROW}}, 415, "unsupported_media_type", None),
    ("plain text", {"data": ARTICLE_ROW, "content_type": "text/plain"}, 415, "unsupported_media_type", None),
    ("no content type", {"data": ARTICLE_ROW}, 415, "unsupported_media_type", None),
    ("a body over the size limit", {"json": {"data": "1," * 40000}}, 413, "request_entity_too_large", None),
]


@pytest.mark.parametrize("what, request_arguments, status, code, field", BAD_BODIES,
                         ids=[bad[0] for bad in BAD_BODIES])
def test_a_bad_body_answers_a_json_error_saying_what_was_wrong(client, what, request_arguments, status, code, field):
    response = client.post(ROUTE, **request_arguments)
    assert response.status_code == status
    body = response.get_json()
    assert body == {"error": body["error"], "code": code, "status": status, "field": field}
    assert isinstance(body["error"], str) and len(body["error"]) > 10
    assert "Traceback" not in body["error"]


@pytest.mark.parametrize("method, path, status, code", [
    ("GET", ROUTE, 405, "method_not_allowed"),
    ("PUT", ROUTE, 405, "method_not_allowed"),
    ("GET", "/", 404, "not_found"),
    ("POST", "/katana-ml/api/v1.0/diabetess", 404, "not_found"),
])
def test_a_wrong_route_or_method_answers_a_json_error(client, method, path, status, code):
    response = client.open(path, method=method, json={"data": ARTICLE_ROW})
    assert response.status_code == status
    assert response.get_json()["code"] == code


def test_an_unexpected_failure_answers_a_generic_json_500_without_internals(served_module, caplog):
    """A real failure inside XGBoost: a booster trained on 3 features, asked about 8."""
    three_features = xgb.train({"objective": "binary:logistic"},
                               xgb.DMatrix(np.eye(3, dtype=np.float32), label=[0, 1, 0]), num_boost_round=1)
    mismatched = served_module.bundle.__class__(three_features, served_module.bundle.metadata)
    response = served_module.create_app(mismatched).test_client().post(ROUTE, json={"data": ARTICLE_ROW})
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error: the request could not be handled",
                                   "code": "internal_error", "status": 500, "field": None}
    assert "Traceback" in caplog.text and "Feature shape mismatch" in caplog.text


def test_a_local_browser_origin_is_allowed_by_cors_on_answers_and_errors(client):
    for body in ({"data": ARTICLE_ROW}, {"data": "1"}):
        response = client.post(ROUTE, json=body, headers={"Origin": "http://localhost:3000"})
        assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_a_foreign_browser_origin_is_not_allowed_by_default(client):
    response = client.post(ROUTE, json={"data": ARTICLE_ROW}, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in response.headers

"""The service's JSON answers: werkzeug's own answer, sent the short way;
/predict's answer written without a dict per row, byte for byte what orjson
writes for the dicts."""

import numpy as np
import orjson
import pytest
from flask import Response
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from diabetes.features import FEW_ROWS
from diabetes.responses import JsonResponse, predictions_answer


def answered(response, method: str) -> tuple:
    environ = EnvironBuilder(method=method).get_environ()
    started = {}

    def start_response(status, headers, exc_info=None):
        started.update(status=status, headers=list(headers))

    body = b"".join(response(environ, start_response))
    return started["status"], started["headers"], body


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
@pytest.mark.parametrize("status", [200, 201, 204, 304, 400, 404, 413, 500, 503])
def test_a_json_answer_is_what_werkzeug_answers(method, status):
    body = b'{"prediction": 0.1}'
    expected = answered(Response(body, status=status, content_type="application/json"), method)
    assert answered(JsonResponse(body, status=status, content_type="application/json"), method) == expected
    assert answered(JsonResponse(body, status=status), method) == expected


def test_headers_added_after_it_is_made_are_sent():
    response = JsonResponse(b"{}", status=405)
    response.headers["Allow"] = "POST"
    response.headers["WWW-Authenticate"] = "Bearer"
    status, headers, _ = answered(response, "GET")
    assert status == "405 METHOD NOT ALLOWED"
    assert ("Allow", "POST") in headers and ("WWW-Authenticate", "Bearer") in headers


def test_callbacks_on_close_still_run():
    closed = []
    response = JsonResponse(b"{}")
    response.call_on_close(lambda: closed.append(True))
    iterable = response(EnvironBuilder().get_environ(), lambda status, headers, exc_info=None: None)
    b"".join(iterable)
    iterable.close()
    assert closed == [True]


def answer_of_dicts(members, probabilities, labels, explanations=()) -> bytes:
    """/predict's answer as orjson writes it from one dict per row."""
    predictions = [{"probability": p, "label": label} for p, label in zip(probabilities.tolist(), labels.tolist())]
    for prediction, explanation in zip(predictions, explanations):
        prediction["explanation"] = explanation
    return orjson.dumps({**members, "predictions": predictions})


PROBABILITY = st.floats(width=32, allow_nan=False, allow_infinity=False)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
MEMBERS = st.fixed_dictionaries({"model_version": st.text(), "threshold": FINITE})


# Up to FEW_ROWS rows the answer is written from dicts, above from the probabilities' text: both ways are drawn.
@settings(deadline=None)
@given(members=MEMBERS, probabilities=st.lists(PROBABILITY, max_size=160), threshold=st.floats(0, 1))
def test_predictions_are_written_as_the_bytes_orjson_writes_for_a_dict_per_row(members, probabilities, threshold):
    probabilities = np.array(probabilities, dtype=np.float32)
    labels = (probabilities >= threshold).astype(int)
    answer = predictions_answer(members, probabilities, labels)
    assert answer == answer_of_dicts(members, probabilities, labels)
    assert orjson.loads(answer) == {
        **members,
        "predictions": [{"probability": float(p), "label": int(p >= threshold)} for p in probabilities],
    }


@pytest.mark.parametrize("rows", [1, FEW_ROWS, FEW_ROWS + 1, FEW_ROWS + 2, 10_000])
def test_a_batch_of_any_size_is_written_as_the_dicts_are(rows):
    probabilities = np.random.default_rng(rows).random(rows, dtype=np.float32)
    labels = (probabilities >= 0.5).astype(int)
    members = {"model_version": "20261130T025954Z-1f6de4f3", "threshold": 0.5}
    labels[-1] = 1 - labels[0]  # both labels, whatever the draw
    assert predictions_answer(members, probabilities, labels) == answer_of_dicts(members, probabilities, labels)


def test_explained_predictions_carry_their_explanation():
    probabilities = np.array([0.25, 0.75], dtype=np.float32)
    labels = np.array([0, 1])
    explanations = [{"base_value": -0.5, "margin": -1.0}, {"base_value": -0.5, "margin": 1.0}]
    members = {"model_version": "1", "threshold": 0.5}
    answer = predictions_answer(members, probabilities, labels, explanations)
    assert answer == answer_of_dicts(members, probabilities, labels, explanations)
    assert [prediction["explanation"] for prediction in orjson.loads(answer)["predictions"]] == explanations

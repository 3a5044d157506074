"""The service's JSON answers: werkzeug's own answer, sent the short way."""

import pytest
from flask import Response
from werkzeug.test import EnvironBuilder

from diabetes.responses import JsonResponse


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

"""The service's error answers: every error `code`, the HTTP status it is
answered with (those that Flask, gunicorn and the edge answer by themselves
included), and the JSON envelope every error goes in:

    {"error": "what was wrong and what was expected", "code": "invalid_value",
     "status": 400, "field": "/instances/0/glucose", "row": 0}

`field` is a JSON Pointer (RFC 6901) to where the error is (`pointer`), or a
header's or query parameter's name, or null; `row` is the offending row of a
batch, or null.
"""

from enum import StrEnum
from http import HTTPStatus


class ErrorCode(StrEnum):
    """The `code` of every error answer, each in the README's table. Clients
    match on these strings: add codes, never rename one."""

    INVALID_JSON = "invalid_json"
    INVALID_CSV = "invalid_csv"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    INVALID_BODY = "invalid_body"
    MISSING_FEATURE = "missing_feature"
    UNKNOWN_FEATURE = "unknown_feature"
    WRONG_VALUE_COUNT = "wrong_value_count"
    INVALID_VALUE = "invalid_value"
    EMPTY_BATCH = "empty_batch"
    INVALID_TENSOR = "invalid_tensor"
    INVALID_PARAMETER = "invalid_parameter"
    UNTRUSTED_HOST = "untrusted_host"
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    REQUEST_ENTITY_TOO_LARGE = "request_entity_too_large"
    TOO_MANY_ROWS = "too_many_rows"
    URI_TOO_LONG = "uri_too_long"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    EXPECTATION_FAILED = "expectation_failed"
    REQUEST_HEADER_FIELDS_TOO_LARGE = "request_header_fields_too_large"
    INTERNAL_ERROR = "internal_error"
    NOT_IMPLEMENTED = "not_implemented"
    # Answered by the edge (diabetes/edge.py), never by the app.
    BAD_GATEWAY = "bad_gateway"
    SERVICE_UNAVAILABLE = "service_unavailable"
    GATEWAY_TIMEOUT = "gateway_timeout"

    @property
    def status(self) -> int:
        """The HTTP status this code is answered with."""
        return _STATUS_OF_CODE.get(self, HTTPStatus.BAD_REQUEST)

    @classmethod
    def of_status(cls, status: int) -> "ErrorCode":
        """The code of an HTTP error raised by Flask (404, 405, ...) or
        refused by gunicorn (400, 414, 431, ...), from its status."""
        fallback = cls.BAD_REQUEST if status < HTTPStatus.INTERNAL_SERVER_ERROR else cls.INTERNAL_ERROR
        return _CODE_OF_STATUS.get(status, fallback)


# Codes answered with a status other than 400.
_STATUS_OF_CODE = {
    ErrorCode.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.MODEL_NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.METHOD_NOT_ALLOWED: HTTPStatus.METHOD_NOT_ALLOWED,
    ErrorCode.REQUEST_TIMEOUT: HTTPStatus.REQUEST_TIMEOUT,
    ErrorCode.REQUEST_ENTITY_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.TOO_MANY_ROWS: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.URI_TOO_LONG: HTTPStatus.REQUEST_URI_TOO_LONG,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.EXPECTATION_FAILED: HTTPStatus.EXPECTATION_FAILED,
    ErrorCode.REQUEST_HEADER_FIELDS_TOO_LARGE: HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
    ErrorCode.INTERNAL_ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
    ErrorCode.NOT_IMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    ErrorCode.BAD_GATEWAY: HTTPStatus.BAD_GATEWAY,
    ErrorCode.SERVICE_UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.GATEWAY_TIMEOUT: HTTPStatus.GATEWAY_TIMEOUT,
}
# The code of each status that Flask or gunicorn may answer by itself.
_CODE_OF_STATUS = {
    HTTPStatus.BAD_REQUEST: ErrorCode.BAD_REQUEST,
    HTTPStatus.NOT_FOUND: ErrorCode.NOT_FOUND,
    **{
        status: code
        for code, status in _STATUS_OF_CODE.items()
        if code not in (ErrorCode.MODEL_NOT_FOUND, ErrorCode.TOO_MANY_ROWS)
    },
}


class InvalidRequest(Exception):
    """A request the service cannot answer; becomes a JSON error response.
    `status` defaults to the code's."""

    def __init__(self, message: str, code: ErrorCode, status: int | None = None, field=None, row=None):
        super().__init__(message)
        self.message, self.code, self.field, self.row = message, ErrorCode(code), field, row
        self.status = int(self.code.status if status is None else status)

    def envelope(self) -> dict:
        return {"error": self.message, "code": self.code, "status": self.status, "field": self.field, "row": self.row}


def pointer(*tokens) -> str:
    """The JSON Pointer (RFC 6901) of a path of member names and indexes."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in tokens)

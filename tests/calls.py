"""Example calls of every route: good ones, and one bad call of every class of
bad input, each with the answer it must get.

Declared once: the tests send each call to the app and to the PM2-served
service, and the Postman collection is generated from them
(tests/postman_collection.py, `make collection`).

A path may hold `{version}`, the served model's version, which the tests fill
in and the Postman collection reads from the variable `modelVersion`.
"""

import json
import struct
from dataclasses import dataclass

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH, ARTICLE_VALUES, CSV_HEADER, EXAMPLE_RECORD, V2_INFER
from diabetes.settings import APP_NAME

NO_BODY = object()


def v2_request(data, shape=(1, 8), datatype="FP32", **members):
    return {"inputs": [{"name": "features", "shape": list(shape), "datatype": datatype, "data": data}], **members}


# A row whose float32 bytes are all ASCII, so that a body carrying it as binary
# tensor data is text that the Postman collection can hold in a raw body.
BINARY_ROW = [2, 130, 62, 34, 135, 34.5, 0.625, 40]
BINARY_ROW_FP32 = struct.pack("<8f", *BINARY_ROW)
# A NaN whose little-endian bytes (41 C2 80 7F) are valid UTF-8, for the same reason.
NAN_FP32 = struct.pack("<I", 0x7F80C241)


def v2_binary_request(
    tensor_bytes: bytes, shape=(1, 8), datatype="FP32", header_length=None, input_members=None, **members
) -> dict:
    """The members of a Call sending a V2 request in Triton's binary tensor
    data extension: its JSON request, then `tensor_bytes` (valid UTF-8), with
    the header that says where the JSON ends, and no Content-Type, as
    tritonclient sends it."""
    tensor = {
        "name": "features",
        "shape": list(shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(tensor_bytes)},
        **(input_members or {}),
    }
    json_part = json.dumps({"inputs": [tensor], **members}, separators=(",", ":"))
    length = len(json_part) if header_length is None else header_length
    return {
        "text": json_part + tensor_bytes.decode("utf-8"),
        "content_type": None,
        "headers": (("Inference-Header-Content-Length", str(length)),),
    }


@dataclass(frozen=True)
class Call:
    what: str  # a sentence, for test ids and Postman names
    method: str
    path: str
    status: int
    code: str | None = None  # the error's code, for a bad call
    json: object = NO_BODY  # a JSON body, or
    text: str | None = None  # a raw body,
    content_type: str | None = "application/json"
    field: str | None = None  # the error's expected field
    # Built from the limits, too big to store: "too_many_rows" (one row over the batch limit), "most_rows"
    # (the batch limit's rows, more than may be explained: max_explain_rows is below it) or "too_large".
    generated_body: str | None = None
    headers: tuple = ()  # more request headers, as (name, value) pairs
    # For a good prediction call: the rows of 8 raw values it sends, in order, None
    # for not measured, from which the tests work out what the model must answer.
    rows: tuple = ()
    # For a good call that describes the service: members its answer holds exactly,
    # with "{version}" standing for the served model's version.
    answer: dict | None = None

    def body(self, max_rows: int, max_bytes: int) -> bytes | None:
        if self.generated_body == "too_many_rows":
            return json.dumps({"instances": [ARTICLE_VALUES] * (max_rows + 1)}).encode()
        if self.generated_body == "most_rows":
            return json.dumps({"instances": [ARTICLE_VALUES] * max_rows}).encode()
        if self.generated_body == "too_large":
            return json.dumps({"data": "1" * max_bytes}).encode()
        if self.json is not NO_BODY:
            return json.dumps(self.json).encode()
        return None if self.text is None else self.text.encode()


def _bad(what, method, path, status, code, field=None, **body):
    return Call(what, method, path, status, code, field=field, **body)


_POST_ARTICLE = ("POST", ARTICLE_PATH)
_POST_PREDICT = ("POST", "/predict")
_POST_V2 = ("POST", V2_INFER)
_ROW_7 = ARTICLE_VALUES[:7]

BAD_CALLS = [
    # the article's route
    _bad(
        "the article route refuses too few values",
        *_POST_ARTICLE,
        400,
        "wrong_value_count",
        "/data",
        json={"data": "1,106,70"},
    ),
    _bad(
        "the article route refuses too many values",
        *_POST_ARTICLE,
        400,
        "wrong_value_count",
        "/data",
        json={"data": ARTICLE_BODY["data"] + ",5"},
    ),
    _bad(
        "the article route refuses a word",
        *_POST_ARTICLE,
        400,
        "invalid_value",
        "/data/1",
        json={"data": "1,abc,70,28,135,34.2,0.142,22"},
    ),
    _bad(
        "the article route refuses NaN",
        *_POST_ARTICLE,
        400,
        "invalid_value",
        "/data/5",
        json={"data": "1,106,70,28,135,NaN,0.142,22"},
    ),
    _bad(
        "the article route refuses infinity",
        *_POST_ARTICLE,
        400,
        "invalid_value",
        "/data/7",
        json={"data": "1,106,70,28,135,34.2,0.142,inf"},
    ),
    _bad(
        "the article route refuses an empty value",
        *_POST_ARTICLE,
        400,
        "invalid_value",
        "/data/1",
        json={"data": "1,,70,28,135,34.2,0.142,22"},
    ),
    _bad(
        "the article route refuses a boolean",
        *_POST_ARTICLE,
        400,
        "invalid_value",
        "/data/1",
        json={"data": [1, True, 70, 28, 135, 34.2, 0.142, 22]},
    ),
    _bad(
        "the article route refuses null in its list",
        *_POST_ARTICLE,
        400,
        "invalid_value",
        "/data/1",
        json={"data": [1, None, 70, 28, 135, 34.2, 0.142, 22]},
    ),
    _bad("the article route refuses a number for data", *_POST_ARTICLE, 400, "invalid_type", "/data", json={"data": 1}),
    _bad("the article route refuses null for data", *_POST_ARTICLE, 400, "invalid_type", "/data", json={"data": None}),
    _bad(
        "the article route refuses a body without data",
        *_POST_ARTICLE,
        400,
        "missing_field",
        "/data",
        json={"values": ARTICLE_BODY["data"]},
    ),
    _bad("the article route refuses malformed JSON", *_POST_ARTICLE, 400, "invalid_json", text='{"data": "1,106'),
    _bad("the article route refuses an empty body", *_POST_ARTICLE, 400, "invalid_json", text=""),
    _bad(
        "the article route refuses plain text",
        *_POST_ARTICLE,
        415,
        "unsupported_media_type",
        text=ARTICLE_BODY["data"],
        content_type="text/plain",
    ),
    _bad(
        "the article route refuses a body over the size limit",
        *_POST_ARTICLE,
        413,
        "request_entity_too_large",
        generated_body="too_large",
    ),
    _bad(
        "the article route refuses a content coding it does not read",
        *_POST_ARTICLE,
        415,
        "unsupported_media_type",
        json=ARTICLE_BODY,
        headers=(("Content-Encoding", "br"),),
    ),
    _bad("the article route refuses GET", "GET", ARTICLE_PATH, 405, "method_not_allowed", content_type=None),
    # named features, JSON
    _bad(
        "predict refuses a record missing a feature",
        *_POST_PREDICT,
        400,
        "missing_feature",
        "/age",
        json={name: value for name, value in EXAMPLE_RECORD.items() if name != "age"},
    ),
    _bad(
        "predict refuses an unknown feature",
        *_POST_PREDICT,
        400,
        "unknown_feature",
        "/height",
        json={**EXAMPLE_RECORD, "height": 170},
    ),
    _bad(
        "predict refuses a string value",
        *_POST_PREDICT,
        400,
        "invalid_value",
        "/glucose",
        json={**EXAMPLE_RECORD, "glucose": "106"},
    ),
    _bad(
        "predict refuses a boolean value",
        *_POST_PREDICT,
        400,
        "invalid_value",
        "/age",
        json={**EXAMPLE_RECORD, "age": True},
    ),
    _bad(
        "predict refuses a list as a value",
        *_POST_PREDICT,
        400,
        "invalid_value",
        "/mass_index",
        json={**EXAMPLE_RECORD, "mass_index": [34.2]},
    ),
    _bad(
        "predict refuses a number too large for the model",
        *_POST_PREDICT,
        400,
        "invalid_value",
        "/glucose",
        json={**EXAMPLE_RECORD, "glucose": 1e39},
    ),
    _bad("predict refuses a null body", *_POST_PREDICT, 400, "invalid_body", json=None),
    _bad("predict refuses a JSON string", *_POST_PREDICT, 400, "invalid_body", json="glucose=106"),
    _bad("predict refuses an empty batch", *_POST_PREDICT, 400, "empty_batch", json=[]),
    _bad(
        "predict refuses a batch holding a non-record",
        *_POST_PREDICT,
        400,
        "invalid_body",
        "/1",
        json=[EXAMPLE_RECORD, 5],
    ),
    _bad(
        "predict refuses a batch whose second record misses a feature",
        *_POST_PREDICT,
        400,
        "missing_feature",
        "/1/age",
        json=[EXAMPLE_RECORD, {n: v for n, v in EXAMPLE_RECORD.items() if n != "age"}],
    ),
    _bad("predict refuses empty instances", *_POST_PREDICT, 400, "empty_batch", json={"instances": []}),
    _bad(
        "predict refuses an instance of 7 values",
        *_POST_PREDICT,
        400,
        "wrong_value_count",
        "/instances/0",
        json={"instances": [_ROW_7]},
    ),
    _bad(
        "predict refuses a string in an instance",
        *_POST_PREDICT,
        400,
        "invalid_value",
        "/instances/1/1",
        json={"instances": [ARTICLE_VALUES, [1, "x", 70, 28, 135, 34.2, 0.142, 22]]},
    ),
    _bad(
        "predict refuses instances that are not a list",
        *_POST_PREDICT,
        400,
        "invalid_body",
        "/instances",
        json={"instances": "1,106,70,28,135,34.2,0.142,22"},
    ),
    _bad(
        "predict refuses a batch over the row limit",
        *_POST_PREDICT,
        413,
        "too_many_rows",
        generated_body="too_many_rows",
    ),
    _bad("predict refuses malformed JSON", *_POST_PREDICT, 400, "invalid_json", text="{glucose: 106}"),
    _bad(
        "predict refuses an unsupported content type",
        *_POST_PREDICT,
        415,
        "unsupported_media_type",
        text="glucose=106",
        content_type="application/x-www-form-urlencoded",
    ),
    _bad(
        "predict refuses an explain option that is not true or false",
        "POST",
        "/predict?explain=maybe",
        400,
        "invalid_parameter",
        "explain",
        json=EXAMPLE_RECORD,
    ),
    _bad(
        "predict refuses to explain more rows than its explanation limit",
        "POST",
        "/predict?explain=true",
        413,
        "too_many_rows",
        generated_body="most_rows",
    ),
    _bad(
        "predict refuses a body that is not the gzip its Content-Encoding says",
        *_POST_PREDICT,
        400,
        "invalid_body",
        json=EXAMPLE_RECORD,
        headers=(("Content-Encoding", "gzip"),),
    ),
    _bad(
        "predict refuses a body over the size limit",
        *_POST_PREDICT,
        413,
        "request_entity_too_large",
        generated_body="too_large",
    ),
    _bad("predict refuses DELETE", "DELETE", "/predict", 405, "method_not_allowed", content_type=None),
    # named features, CSV
    _bad(
        "predict refuses a CSV row of 7 values",
        *_POST_PREDICT,
        400,
        "wrong_value_count",
        "/rows/0",
        text="1,106,70,28,135,34.2,0.142\n",
        content_type="text/csv",
    ),
    _bad(
        "predict refuses a word in CSV",
        *_POST_PREDICT,
        400,
        "invalid_value",
        "/rows/1/glucose",
        text=f"{CSV_HEADER}\n{ARTICLE_BODY['data']}\n1,high,70,28,135,34.2,0.142,22\n",
        content_type="text/csv",
    ),
    _bad(
        "predict refuses NaN in CSV",
        *_POST_PREDICT,
        400,
        "invalid_value",
        "/rows/0/age",
        text="1,106,70,28,135,34.2,0.142,nan\n",
        content_type="text/csv",
    ),
    _bad(
        "predict refuses a CSV header with an unknown name",
        *_POST_PREDICT,
        400,
        "unknown_feature",
        "/header",
        text=CSV_HEADER.replace("age", "years") + "\n" + ARTICLE_BODY["data"] + "\n",
        content_type="text/csv",
    ),
    _bad("predict refuses an empty CSV body", *_POST_PREDICT, 400, "empty_batch", text="", content_type="text/csv"),
    _bad(
        "predict refuses a CSV header without rows",
        *_POST_PREDICT,
        400,
        "empty_batch",
        text=CSV_HEADER + "\n",
        content_type="text/csv",
    ),
    # Open Inference Protocol V2
    _bad(
        "V2 infer refuses an unknown model",
        "POST",
        "/v2/models/cancer/infer",
        404,
        "model_not_found",
        json=v2_request(ARTICLE_VALUES),
    ),
    _bad(
        "V2 infer refuses another version",
        "POST",
        "/v2/models/diabetes/versions/0/infer",
        404,
        "model_not_found",
        json=v2_request(ARTICLE_VALUES),
    ),
    _bad("V2 infer refuses a request without inputs", *_POST_V2, 400, "invalid_body", "/inputs", json={"id": "1"}),
    _bad(
        "V2 infer refuses two input tensors",
        *_POST_V2,
        400,
        "invalid_tensor",
        "/inputs",
        json={"inputs": v2_request(ARTICLE_VALUES)["inputs"] * 2},
    ),
    _bad(
        "V2 infer refuses an integer datatype",
        *_POST_V2,
        400,
        "invalid_tensor",
        "/inputs/0/datatype",
        json=v2_request(ARTICLE_VALUES, datatype="INT32"),
    ),
    _bad(
        "V2 infer refuses a shape of 7 columns",
        *_POST_V2,
        400,
        "invalid_tensor",
        "/inputs/0/shape",
        json=v2_request(_ROW_7, shape=(1, 7)),
    ),
    _bad(
        "V2 infer refuses data that does not fill its shape",
        *_POST_V2,
        400,
        "invalid_tensor",
        "/inputs/0/data",
        json=v2_request(ARTICLE_VALUES, shape=(2, 8)),
    ),
    _bad("V2 infer refuses an empty tensor", *_POST_V2, 400, "empty_batch", json=v2_request([], shape=(0, 8))),
    _bad(
        "V2 infer refuses an input tensor with neither data nor binary data",
        *_POST_V2,
        400,
        "invalid_tensor",
        "/inputs/0/data",
        json={"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32"}]},
    ),
    _bad(
        "V2 infer refuses a string in FP32 data",
        *_POST_V2,
        400,
        "invalid_value",
        "/inputs/0/data/0",
        json=v2_request(["1", *ARTICLE_VALUES[1:]]),
    ),
    _bad(
        "V2 infer refuses a boolean in FP32 data",
        *_POST_V2,
        400,
        "invalid_value",
        "/inputs/0/data/1",
        json=v2_request([1, False, *ARTICLE_VALUES[2:]]),
    ),
    _bad(
        "V2 infer refuses null in FP32 data",
        *_POST_V2,
        400,
        "invalid_value",
        "/inputs/0/data/2",
        json=v2_request([1, 106, None, *ARTICLE_VALUES[3:]]),
    ),
    _bad(
        "V2 infer refuses an unknown output",
        *_POST_V2,
        400,
        "invalid_tensor",
        "/outputs/0/name",
        json=v2_request(ARTICLE_VALUES, outputs=[{"name": "risk"}]),
    ),
    _bad("V2 infer refuses malformed JSON", *_POST_V2, 400, "invalid_json", text='{"inputs": ['),
    _bad(
        "V2 infer refuses an input of another name",
        *_POST_V2,
        400,
        "invalid_tensor",
        "/inputs/0/name",
        json={"inputs": [{**v2_request(ARTICLE_VALUES)["inputs"][0], "name": "input0"}]},
    ),
    _bad(
        "V2 infer refuses an output asked for twice",
        *_POST_V2,
        400,
        "invalid_tensor",
        "/outputs/1/name",
        json=v2_request(ARTICLE_VALUES, outputs=[{"name": "label"}, {"name": "label"}]),
    ),
    _bad(
        "V2 infer refuses a binary_data parameter that is not a boolean",
        *_POST_V2,
        400,
        "invalid_parameter",
        "/outputs/0/parameters/binary_data",
        json=v2_request(ARTICLE_VALUES, outputs=[{"name": "label", "parameters": {"binary_data": 1}}]),
    ),
    # Triton's binary tensor data extension
    _bad(
        "V2 infer refuses an Inference-Header-Content-Length that is not an integer",
        *_POST_V2,
        400,
        "invalid_body",
        "Inference-Header-Content-Length",
        **v2_binary_request(BINARY_ROW_FP32, header_length="1e2"),
    ),
    _bad(
        "V2 infer refuses a negative Inference-Header-Content-Length",
        *_POST_V2,
        400,
        "invalid_body",
        "Inference-Header-Content-Length",
        **v2_binary_request(BINARY_ROW_FP32, header_length="-1"),
    ),
    _bad(
        "V2 infer refuses an Inference-Header-Content-Length beyond the body",
        *_POST_V2,
        400,
        "invalid_body",
        "Inference-Header-Content-Length",
        **v2_binary_request(BINARY_ROW_FP32, header_length="100000"),
    ),
    _bad(
        "V2 infer refuses a binary_data_size that does not match the shape",
        *_POST_V2,
        400,
        "invalid_tensor",
        "/inputs/0/parameters/binary_data_size",
        **v2_binary_request(BINARY_ROW_FP32, shape=(2, 8)),
    ),
    _bad(
        "V2 infer refuses bytes after the declared tensor data",
        *_POST_V2,
        400,
        "invalid_body",
        "Inference-Header-Content-Length",
        **{**v2_binary_request(BINARY_ROW_FP32), "text": v2_binary_request(BINARY_ROW_FP32)["text"] + "0000"},
    ),
    _bad(
        "V2 infer refuses a tensor with both data and binary data",
        *_POST_V2,
        400,
        "invalid_tensor",
        "/inputs/0",
        **v2_binary_request(BINARY_ROW_FP32, input_members={"data": BINARY_ROW}),
    ),
    _bad(
        "V2 infer refuses NaN in binary data",
        *_POST_V2,
        400,
        "invalid_value",
        "/inputs/0/data/1",
        **v2_binary_request(BINARY_ROW_FP32[:4] + NAN_FP32 + BINARY_ROW_FP32[8:]),
    ),
    _bad("V2 infer refuses GET", "GET", V2_INFER, 405, "method_not_allowed", content_type=None),
    _bad(
        "V2 metadata of an unknown model is not found",
        "GET",
        "/v2/models/cancer",
        404,
        "model_not_found",
        content_type=None,
    ),
    _bad(
        "V2 readiness of an unknown model is not found",
        "GET",
        "/v2/models/cancer/ready",
        404,
        "model_not_found",
        content_type=None,
    ),
    # anywhere
    _bad("an unknown route is not found", "GET", "/katana-ml/api/v2.0/diabetes", 404, "not_found", content_type=None),
]


def _good(what, method, path, **body):
    return Call(what, method, path, 200, **body)


def _not_measured(row: list, name: str) -> list:
    return [None if feature == name else value for feature, value in zip(EXAMPLE_RECORD, row)]


_ARTICLE_ROW = (ARTICLE_VALUES,)
_CSV_ROW_2 = [6, 148, 72, 35, None, 33.6, 0.627, 50]
_V2_MODEL = {"name": "diabetes", "versions": ["{version}"], "platform": "xgboost"}


GOOD_CALLS = [
    _good(
        "the V2 model metadata names the served version",
        "GET",
        "/v2/models/diabetes",
        content_type=None,
        answer=_V2_MODEL,
    ),
    _good("the article's request answers a probability", *_POST_ARTICLE, json=ARTICLE_BODY, rows=_ARTICLE_ROW),
    _good(
        "the article's values as a list answer the same",
        *_POST_ARTICLE,
        json={"data": ARTICLE_VALUES},
        rows=_ARTICLE_ROW,
    ),
    _good("predict answers one record", *_POST_PREDICT, json=EXAMPLE_RECORD, rows=_ARTICLE_ROW),
    _good(
        "predict answers a list of records, with null for not measured",
        *_POST_PREDICT,
        json=[EXAMPLE_RECORD, {**EXAMPLE_RECORD, "serum_insuling": None}],
        rows=(ARTICLE_VALUES, _not_measured(ARTICLE_VALUES, "serum_insuling")),
    ),
    _good(
        "predict answers instances",
        *_POST_PREDICT,
        json={"instances": [ARTICLE_VALUES, BINARY_ROW]},
        rows=(ARTICLE_VALUES, BINARY_ROW),
    ),
    _good(
        "predict answers CSV with a header",
        *_POST_PREDICT,
        content_type="text/csv",
        text=f"{CSV_HEADER}\n{ARTICLE_BODY['data']}\n6,148,72,35,,33.6,0.627,50\n",
        rows=(ARTICLE_VALUES, _CSV_ROW_2),
    ),
    _good(
        "predict answers CSV without a header",
        *_POST_PREDICT,
        content_type="text/csv",
        text=ARTICLE_BODY["data"] + "\n",
        rows=_ARTICLE_ROW,
    ),
    _good("predict explains a prediction", "POST", "/predict?explain=true", json=EXAMPLE_RECORD, rows=_ARTICLE_ROW),
    _good(
        "V2 infer answers a request made as the protocol shows it",
        *_POST_V2,
        json=v2_request([ARTICLE_VALUES], datatype="FP32", id="42"),
        rows=_ARTICLE_ROW,
    ),
    _good(
        "V2 infer answers a versioned request of FP64 rows",
        "POST",
        "/v2/models/diabetes/versions/{version}/infer",
        json=v2_request(ARTICLE_VALUES + BINARY_ROW, shape=(2, 8), datatype="FP64", outputs=[{"name": "label"}]),
        rows=(ARTICLE_VALUES, BINARY_ROW),
    ),
    _good(
        "V2 infer reads a request without Content-Type as JSON",
        *_POST_V2,
        content_type=None,
        json=v2_request(ARTICLE_VALUES, outputs=[{"name": "probability"}]),
        rows=_ARTICLE_ROW,
    ),
    _good(
        "V2 infer reads a request sent as text/plain as JSON",
        *_POST_V2,
        content_type="text/plain",
        json=v2_request(ARTICLE_VALUES),
        rows=_ARTICLE_ROW,
    ),
    _good(
        "V2 infer reads FP32 rows sent as binary tensor data",
        *_POST_V2,
        **v2_binary_request(BINARY_ROW_FP32),
        rows=(BINARY_ROW,),
    ),
    _good("V2 server metadata", "GET", "/v2", content_type=None, answer={"name": APP_NAME, "version": "{version}"}),
    _good("V2 liveness", "GET", "/v2/health/live", content_type=None, answer={"live": True}),
    _good("V2 readiness", "GET", "/v2/health/ready", content_type=None, answer={"ready": True}),
    _good(
        "V2 model readiness",
        "GET",
        "/v2/models/diabetes/ready",
        content_type=None,
        answer={"name": "diabetes", "ready": True},
    ),
    _good(
        "V2 versioned model metadata",
        "GET",
        "/v2/models/diabetes/versions/{version}",
        content_type=None,
        answer=_V2_MODEL,
    ),
    _good(
        "V2 versioned model readiness",
        "GET",
        "/v2/models/diabetes/versions/{version}/ready",
        content_type=None,
        answer={"name": "diabetes", "ready": True},
    ),
    _good("the model card", "GET", "/metadata", content_type=None, answer={"version": "{version}"}),
    _good("the OpenAPI document", "GET", "/openapi.json", content_type=None),
    _good("the docs page", "GET", "/docs", content_type=None),
]

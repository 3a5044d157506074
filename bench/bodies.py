"""The bodies the benchmark sends for many rows at once, in each encoding a
route takes, and the number of predictions in an answer to any of them.

Rows are the data set's, cyclically, so every server predicts real cases."""

import json
import struct
from dataclasses import dataclass

from bench.servers import PROJECT
from diabetes.api_examples import ARTICLE_VALUES, V2_INFER

DATA_PATH = PROJECT / "data" / "pima-indians-diabetes.data.csv"
# The V2 input tensor as the service names it; MLServer takes any name.
V2_INPUT = "features"
# Triton's binary tensor extension: how many bytes of the body are its JSON.
INFERENCE_HEADER = "Inference-Header-Content-Length"
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Encoding:
    key: str
    path: str
    label: str
    # A server may refuse it (a 4xx): that is reported as "not supported", not a failure.
    optional: bool = False


PREDICT = Encoding("predict", "/predict", '`POST /predict`, JSON `{"instances": [...]}`')
V2_JSON = Encoding("v2_json", V2_INFER, "`POST " + V2_INFER + "`, V2 JSON tensor")
V2_BINARY = Encoding("v2_binary", V2_INFER, "`POST " + V2_INFER + "`, V2 binary tensor (tritonclient's)", optional=True)


@dataclass(frozen=True)
class Body:
    encoding: Encoding
    rows: int
    data: bytes
    headers: dict


def data_rows() -> list[list]:
    """The data set's 8 feature columns (the 9th is the label), as numbers."""

    def number(text: str):
        return int(text) if text.isdigit() else float(text)

    lines = filter(None, DATA_PATH.read_text().splitlines())
    return [[number(value) for value in line.split(",")[:8]] for line in lines]


def cyclic_rows(data: list[list], count: int) -> list[list]:
    return [data[index % len(data)] for index in range(count)]


def v2_json_request(rows: list[list]) -> dict:
    """One FP32 tensor of shape [N, 8], its data flat (row-major), as the
    protocol's canonical form and tritonclient's JSON mode send it."""
    return {
        "inputs": [
            {
                "name": V2_INPUT,
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP32",
                "data": [value for row in rows for value in row],
            }
        ]
    }


V2_SINGLE_ROW = v2_json_request([ARTICLE_VALUES])


def v2_binary_request(rows: list[list]) -> tuple[bytes, int]:
    """The body `tritonclient.http` sends by default for this tensor (its
    `generate_request_body` with no outputs named, so every output comes back
    binary too), and the length of its JSON part. tritonclient sends no
    Content-Type."""
    values = [value for row in rows for value in row]
    header = {
        "inputs": [
            {
                "name": V2_INPUT,
                "shape": [len(rows), len(rows[0])],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 4 * len(values)},
            }
        ],
        "parameters": {"binary_data_output": True},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + struct.pack(f"<{len(values)}f", *values), len(text)


def encode(encoding: Encoding, rows: list[list]) -> Body:
    if encoding is PREDICT:
        return Body(encoding, len(rows), json.dumps({"instances": rows}).encode(), _JSON)
    if encoding is V2_JSON:
        return Body(encoding, len(rows), json.dumps(v2_json_request(rows)).encode(), _JSON)
    data, header_length = v2_binary_request(rows)
    return Body(encoding, len(rows), data, {INFERENCE_HEADER: str(header_length)})


def predictions_in(answer: bytes, headers) -> int | None:
    """How many predictions an answer holds: /predict's `predictions`, or the
    first V2 output's first dimension, whether its data is JSON or binary.
    None when the answer is neither."""
    header_length = headers.get(INFERENCE_HEADER)
    try:
        document = json.loads(answer[: int(header_length)] if header_length else answer)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    if isinstance(document.get("predictions"), list):
        return len(document["predictions"])
    try:
        return int(document["outputs"][0]["shape"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None

"""Triton's binary tensor data extension of the Open Inference Protocol V2,
which Triton and KServe implement and `tritonclient.http` uses by default.

A request may carry a tensor as raw bytes after its JSON instead of a `data`
list. The header `Inference-Header-Content-Length` says how many bytes of the
body are the JSON request; the bytes after it are the tensors, in the order of
the inputs that declare a `binary_data_size`, each little-endian, row-major,
without padding:

    POST /v2/models/diabetes/infer
    Inference-Header-Content-Length: 101

    {"inputs":[{"name":"features","shape":[2,8],"datatype":"FP32","parameters":{"binary_data_size":64}}]}
    <64 bytes: 16 float32>

An answer does the same for every output asked for as binary: the output's
`"parameters": {"binary_data": true}`, or the request's
`"parameters": {"binary_data_output": true}` for the outputs that say nothing.
Such an output carries `"parameters": {"binary_data_size": n}` instead of
`data`, and the answer the same header.

Spec: https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md
"""

import re

import numpy as np
import orjson

from diabetes.contract import (
    V2_BINARY_DATA_SIZE,
    V2_BYTE_ORDER,
    V2_INFERENCE_HEADER_CONTENT_LENGTH,
    ErrorCode,
    InvalidRequest,
)

BINARY_TENSOR_DATA = "binary_tensor_data"  # the extension's name in the server metadata
BINARY_CONTENT_TYPE = "application/octet-stream"
_DECIMAL = re.compile(r"[0-9]+", re.ASCII)
_MINUS_DECIMAL = re.compile(r"-[0-9]+", re.ASCII)
# Longer than any body this service accepts, and short enough for int() (which refuses
# texts of more than 4,300 digits with a ValueError).
_MOST_LENGTH_DIGITS = 18


def split_body(body: bytes, header_length: str | None) -> tuple[bytes | memoryview, memoryview | None]:
    """The JSON request at the start of a V2 body, and the tensor bytes after
    it (None when the request has no `Inference-Header-Content-Length`, so
    that the whole body is JSON)."""
    if header_length is None:
        return body, None
    text = header_length.strip(" \t")
    where = V2_INFERENCE_HEADER_CONTENT_LENGTH
    if _MINUS_DECIMAL.fullmatch(text):
        raise InvalidRequest(
            f"{where} is {text[:20]}, a negative length; expected the number of bytes of the JSON "
            "request at the start of the body",
            ErrorCode.INVALID_BODY,
            field=where,
        )
    if not _DECIMAL.fullmatch(text):
        raise InvalidRequest(
            f"{where} is {text[:20]!r}, not an integer; expected the number of bytes of the JSON "
            "request at the start of the body",
            ErrorCode.INVALID_BODY,
            field=where,
        )
    if len(text) > _MOST_LENGTH_DIGITS or int(text) > len(body):
        raise InvalidRequest(
            f"{where} says the JSON request is {text[:20]} bytes long, the whole body is {len(body)}",
            ErrorCode.INVALID_BODY,
            field=where,
        )
    view = memoryview(body)
    return view[: int(text)], view[int(text) :]


def inference_answer(members: dict, outputs) -> tuple[bytes, int | None]:
    """The body of an inference answer and, when an output goes as binary
    data, the length of its JSON part (for `Inference-Header-Content-Length`).

    `outputs`: (name, datatype, tensor, binary) for each output asked for, in
    the request's order, which is also the order of their bytes."""
    described, tensor_bytes = [], []
    for name, datatype, tensor, binary in outputs:
        output = {"name": name, "datatype": datatype, "shape": list(tensor.shape)}
        if binary:
            raw = np.ascontiguousarray(tensor, dtype=V2_BYTE_ORDER[datatype]).tobytes()
            output["parameters"] = {V2_BINARY_DATA_SIZE: len(raw)}
            tensor_bytes.append(raw)
        else:
            output["data"] = tensor
        described.append(output)
    header = orjson.dumps({**members, "outputs": described}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tensor_bytes:
        return header, None
    return b"".join([header, *tensor_bytes]), len(header)

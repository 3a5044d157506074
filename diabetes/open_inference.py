"""The Open Inference Protocol V2 as this service speaks it: its names (the
model's, its input's and outputs'), the parameters a request may set, the
outputs it asks for, and Triton's binary tensor data extension, which Triton
and KServe implement and `tritonclient.http` uses by default.

Its REST description: diabetes/specs/oip-v2-rest.yaml (KServe's).

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
from dataclasses import dataclass

import numpy as np
import orjson

from diabetes.errors import ErrorCode, InvalidRequest, pointer

MODEL_NAME = "diabetes"
V2_INPUT_NAME = "features"
V2_INPUT_DATATYPES = ("FP32", "FP64")
V2_OUTPUTS = {"probability": "FP32", "label": "INT64"}
# Triton's binary tensor data extension
V2_INFERENCE_HEADER_CONTENT_LENGTH = "Inference-Header-Content-Length"
V2_BINARY_DATA_SIZE = "binary_data_size"  # $request_input and $response_output parameter
V2_BINARY_DATA = "binary_data"  # $request_output parameter
V2_BINARY_DATA_OUTPUT = "binary_data_output"  # $inference_request parameter
V2_BYTE_ORDER = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "INT64": np.dtype("<i8")}
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


@dataclass(frozen=True)
class V2Output:
    """An output a V2 request asks for ($request_output), and whether it goes
    back as binary data after the JSON answer."""

    name: str
    binary: bool


def requested_outputs(requested, binary_output=False) -> list[V2Output]:
    """The outputs named in the request (its `outputs`), each as binary data
    or not; all of them when it names none. `binary_output`: the request's
    own `binary_data_output`, for the outputs that say nothing."""
    if requested is None or requested == []:
        return [V2Output(name, binary_output) for name in V2_OUTPUTS]
    if not isinstance(requested, list):
        raise InvalidRequest(
            f"outputs must be a list of outputs ({', '.join(V2_OUTPUTS)})",
            ErrorCode.INVALID_TENSOR,
            field="/outputs",
        )
    outputs = []
    for index, output in enumerate(requested):
        name = output.get("name") if isinstance(output, dict) else None
        where = pointer("outputs", index, "name") if isinstance(output, dict) else pointer("outputs", index)
        if type(name) is not str or name not in V2_OUTPUTS:
            raise InvalidRequest(
                f"unknown output {str(name)[:40]}; this model has {', '.join(V2_OUTPUTS)}",
                ErrorCode.INVALID_TENSOR,
                field=where,
            )
        if name in (asked.name for asked in outputs):
            raise InvalidRequest(
                f"output {name} is asked for twice; ask for each once", ErrorCode.INVALID_TENSOR, field=where
            )
        parameters = parameters_of(output, ("outputs", index))
        if "classification" in parameters:
            raise InvalidRequest(
                "the classification extension is not supported: ask for the label output",
                ErrorCode.INVALID_PARAMETER,
                field=pointer("outputs", index, "parameters", "classification"),
            )
        binary = boolean_parameter(parameters, V2_BINARY_DATA, ("outputs", index))
        outputs.append(V2Output(name, binary_output if binary is None else binary))
    return outputs


def parameters_of(message, path) -> dict:
    """The `parameters` of a request, an input or an output (at `path`)."""
    parameters = message.get("parameters", {})
    if not isinstance(parameters, dict):
        where = pointer(*path, "parameters")
        raise InvalidRequest(f"{where} must be an object", ErrorCode.INVALID_PARAMETER, field=where)
    return parameters


def boolean_parameter(parameters, name, path):
    """A boolean parameter of the binary tensor data extension, None when absent."""
    value = parameters.get(name)
    if value is not None and type(value) is not bool:
        where = pointer(*path, "parameters", name)
        raise InvalidRequest(
            f"{where} is {str(value)[:20]}, expected true or false", ErrorCode.INVALID_PARAMETER, field=where
        )
    return value


def check_no_tensor_bytes_left(tensor_bytes, used):
    """Every byte after the JSON request belongs to an input that declares it."""
    if tensor_bytes is not None and len(tensor_bytes) > used:
        raise InvalidRequest(
            f"the body has {len(tensor_bytes) - used} bytes after its JSON request and tensor data "
            f"that no input declares ({V2_INFERENCE_HEADER_CONTENT_LENGTH} or "
            f"{V2_BINARY_DATA_SIZE} is wrong)",
            ErrorCode.INVALID_BODY,
            field=V2_INFERENCE_HEADER_CONTENT_LENGTH,
        )

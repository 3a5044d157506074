"""The Open Inference Protocol V2 as its real clients speak it: Triton's own
Python client (`tritonclient.http`, with its defaults: no Content-Type, binary
tensors both ways) against the PM2-served service, and hostile requests in
Triton's binary tensor data extension sent by hand, in process and over HTTP."""

import gzip
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from diabetes.api_examples import V2_INFER
from diabetes.features import FEATURE_NAMES
from diabetes.open_inference import V2_INFERENCE_HEADER_CONTENT_LENGTH as HEADER
from tests.calls import BINARY_ROW, BINARY_ROW_FP32
from tests.conftest import PROJECT, json_of
from tests.reference import reference_model

pytestmark = [pytest.mark.model, pytest.mark.pm2]

DATA_SET = PROJECT / "data" / "pima-indians-diabetes.data.csv"


@pytest.fixture(scope="module")
def triton_client(service):
    client = triton.InferenceServerClient(
        url=service["url"].removeprefix("http://"), connection_timeout=10, network_timeout=30
    )
    yield client
    client.close()


@pytest.fixture()
def reference(target, trained):
    """The model version that `target` serves, loaded by XGBoost itself."""
    return reference_model(trained["models_dir"] / target.version)


@pytest.fixture(scope="module")
def served(service) -> dict:
    """The served model's version, threshold and its own probability for every row of the data set."""
    model_dir = (Path(service["models_dir"]) / "current").resolve()
    metadata = json.loads((model_dir / "metadata.json").read_text())
    rows = pd.read_csv(DATA_SET, header=None).iloc[:, : len(FEATURE_NAMES)].to_numpy(dtype=np.float64)
    predictions = pd.read_csv(model_dir / "predictions.csv")
    assert np.array_equal(predictions[list(FEATURE_NAMES)].to_numpy(dtype=np.float64), rows)
    return {
        "version": model_dir.name,
        "threshold": metadata["threshold"],
        "rows": rows,
        "probabilities": predictions["probability"].to_numpy(),
    }


def infer_every_row(client, served, datatype, binary_input, outputs, **options):
    features = triton.InferInput("features", list(served["rows"].shape), datatype)
    features.set_data_from_numpy(
        served["rows"].astype(np.float32 if datatype == "FP32" else np.float64), binary_data=binary_input
    )
    requested = (
        None if outputs is None else [triton.InferRequestedOutput(name, binary_data=binary) for name, binary in outputs]
    )
    return client.infer("diabetes", [features], outputs=requested, **options)


def assert_the_models_answers(result, served, names=("probability", "label")):
    probability, label = result.as_numpy("probability"), result.as_numpy("label")
    if "probability" in names:
        assert probability.dtype == np.float32 and probability.shape == (len(served["rows"]),)
        assert np.abs(probability - served["probabilities"]).max() < 1e-6
    if "label" in names:
        assert label.dtype == np.int64 and label.shape == (len(served["rows"]),)
        # Rows whose probability lies within float error of the threshold could go either way.
        clear = np.abs(served["probabilities"] - served["threshold"]) > 1e-6
        assert np.array_equal(label[clear], (served["probabilities"][clear] >= served["threshold"]).astype(np.int64))
        assert 0 < label.sum() < len(label)
    if set(names) == {"probability", "label"}:
        assert np.array_equal(label, (probability >= served["threshold"]).astype(np.int64))


def binary_sizes(result) -> dict:
    """Each output's binary_data_size, None for an output answered in JSON."""
    return {
        output["name"]: output.get("parameters", {}).get("binary_data_size")
        for output in result.get_response()["outputs"]
    }


# ---- tritonclient ---------------------------------------------------------------------------
def test_tritonclient_finds_the_server_and_the_model_live_and_ready(triton_client, served):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("diabetes")
    assert triton_client.is_model_ready("diabetes", model_version=served["version"])
    assert not triton_client.is_model_ready("cancer")


def test_tritonclient_reads_the_server_metadata_with_the_binary_extension(triton_client, served):
    metadata = triton_client.get_server_metadata()
    assert metadata["version"] == served["version"]
    assert "binary_tensor_data" in metadata["extensions"]


def test_tritonclient_reads_the_model_metadata(triton_client, served):
    metadata = triton_client.get_model_metadata("diabetes")
    assert metadata["versions"] == [served["version"]]
    assert metadata["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 8]}]
    assert {output["name"]: output["datatype"] for output in metadata["outputs"]} == {
        "probability": "FP32",
        "label": "INT64",
    }
    assert triton_client.get_model_metadata("diabetes", model_version=served["version"]) == metadata


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("binary_input", [True, False], ids=["binary input", "JSON input"])
def test_tritonclient_with_its_defaults_gets_the_models_answer_for_every_row(
    triton_client, served, datatype, binary_input
):
    """No outputs named: tritonclient asks for all of them as binary data (binary_data_output)."""
    result = infer_every_row(triton_client, served, datatype, binary_input, outputs=None)
    assert binary_sizes(result) == {"probability": 4 * len(served["rows"]), "label": 8 * len(served["rows"])}
    assert_the_models_answers(result, served)


@pytest.mark.parametrize("binary_input", [True, False], ids=["binary input", "JSON input"])
@pytest.mark.parametrize(
    "outputs",
    [
        [("probability", False), ("label", False)],
        [("label", True), ("probability", True)],
        [("probability", True), ("label", False)],
        [("label", True)],
    ],
    ids=["both in JSON", "both binary, label first", "probability binary, label in JSON", "label alone, binary"],
)
def test_tritonclient_gets_each_output_the_way_it_asks(triton_client, served, binary_input, outputs):
    result = infer_every_row(triton_client, served, "FP32", binary_input, outputs)
    sizes = {"probability": 4 * len(served["rows"]), "label": 8 * len(served["rows"])}
    assert binary_sizes(result) == {name: sizes[name] if binary else None for name, binary in outputs}
    assert [output["name"] for output in result.get_response()["outputs"]] == [name for name, _ in outputs]
    assert_the_models_answers(result, served, names=[name for name, _ in outputs])


def test_tritonclient_infers_on_a_version_with_a_request_id(triton_client, served):
    result = infer_every_row(
        triton_client, served, "FP64", True, outputs=None, model_version=served["version"], request_id="request-7"
    )
    assert result.get_response()["id"] == "request-7"
    assert result.get_response()["model_version"] == served["version"]
    assert_the_models_answers(result, served)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary_input", [True, False], ids=["binary input", "JSON input"])
def test_tritonclient_compressing_its_requests_gets_the_answers_it_gets_uncompressed(
    triton_client, served, algorithm, binary_input
):
    """tritonclient compresses the whole body, binary tensor data included, and
    its Inference-Header-Content-Length counts the JSON request uncompressed."""
    plain = infer_every_row(triton_client, served, "FP32", binary_input, outputs=None)
    compressed = infer_every_row(
        triton_client, served, "FP32", binary_input, outputs=None, request_compression_algorithm=algorithm
    )
    assert_the_models_answers(compressed, served)
    for name in ("probability", "label"):
        assert np.array_equal(compressed.as_numpy(name), plain.as_numpy(name))


def test_tritonclient_reports_the_services_error_message(triton_client):
    features = triton.InferInput("features", [1, 8], "FP32")
    features.set_data_from_numpy(np.array([[1, np.nan, 70, 28, 135, 34.2, 0.142, 22]], dtype=np.float32))
    with pytest.raises(InferenceServerException) as refused:
        triton_client.infer("diabetes", [features])
    assert refused.value.status() == "400"
    assert "(glucose) is NaN" in refused.value.message()


# ---- hostile binary requests, by hand ---------------------------------------------------------
def binary_request(
    tensor_bytes: bytes, shape=(1, 8), datatype="FP32", header_length=None, tensor_members=None, **members
) -> tuple[bytes, dict]:
    tensor = {
        "name": "features",
        "shape": list(shape),
        "datatype": datatype,
        "parameters": {"binary_data_size": len(tensor_bytes)},
        **(tensor_members or {}),
    }
    json_part = json.dumps({"inputs": [tensor], **members}).encode()
    return json_part + tensor_bytes, {HEADER: str(len(json_part) if header_length is None else header_length)}


def fp32(*values) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def fp64(*values) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


def with_headers(request, headers) -> tuple[bytes, dict]:
    body, own_headers = request
    return body, {**own_headers, **headers}


def gzip_compressed(request) -> tuple[bytes, dict]:
    body, headers = request
    return gzip.compress(body), {**headers, "Content-Encoding": "gzip"}


def cut_short(request, by=8) -> tuple[bytes, dict]:
    body, headers = request
    return body[:-by], headers


ROW = BINARY_ROW
OTHER_ROW = [6, 148, 72, 35, 0, 33.6, 0.627, 50]
JSON_ROW = json.dumps({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32", "data": ROW}]}).encode()
HOSTILE = {
    # the header that says where the JSON ends
    # Python's int() reads "²" (a digit to str.isdigit) and "+90"; a length is ASCII digits only.
    "a header with a superscript digit": (
        binary_request(BINARY_ROW_FP32, header_length="9²"),
        400,
        "invalid_body",
        HEADER,
    ),
    "a header with a plus sign": (binary_request(BINARY_ROW_FP32, header_length="+90"), 400, "invalid_body", HEADER),
    "a header with two lengths": (binary_request(BINARY_ROW_FP32, header_length="90, 90"), 400, "invalid_body", HEADER),
    "an empty header": (binary_request(BINARY_ROW_FP32, header_length=""), 400, "invalid_body", HEADER),
    "a header of 5,000 digits": (
        binary_request(BINARY_ROW_FP32, header_length="9" * 5000),
        400,
        "invalid_body",
        HEADER,
    ),
    "a header of 0: no JSON": (binary_request(BINARY_ROW_FP32, header_length=0), 400, "invalid_json", None),
    "a header that cuts the JSON short": (binary_request(BINARY_ROW_FP32, header_length=20), 400, "invalid_json", None),
    "binary data without the header": ((binary_request(BINARY_ROW_FP32)[0], {}), 400, "invalid_json", None),
    "a header but JSON that declares no binary data": (
        (JSON_ROW + BINARY_ROW_FP32, {HEADER: str(len(JSON_ROW))}),
        400,
        "invalid_body",
        HEADER,
    ),
    # the tensor's declared size
    "fewer bytes than declared": (
        binary_request(BINARY_ROW_FP32[:-4], tensor_members={"parameters": {"binary_data_size": 32}}),
        400,
        "invalid_body",
        "/inputs/0/parameters/binary_data_size",
    ),
    "a size of FP64 for an FP32 tensor": (
        binary_request(fp64(*ROW)),
        400,
        "invalid_tensor",
        "/inputs/0/parameters/binary_data_size",
    ),
    "a size that is a string": (
        binary_request(BINARY_ROW_FP32, tensor_members={"parameters": {"binary_data_size": "32"}}),
        400,
        "invalid_tensor",
        "/inputs/0/parameters/binary_data_size",
    ),
    "a size that is true": (
        binary_request(BINARY_ROW_FP32, tensor_members={"parameters": {"binary_data_size": True}}),
        400,
        "invalid_tensor",
        "/inputs/0/parameters/binary_data_size",
    ),
    "a negative size": (
        binary_request(BINARY_ROW_FP32, tensor_members={"parameters": {"binary_data_size": -32}}),
        400,
        "invalid_tensor",
        "/inputs/0/parameters/binary_data_size",
    ),
    "parameters that are not an object": (
        binary_request(BINARY_ROW_FP32, tensor_members={"parameters": [32]}),
        400,
        "invalid_parameter",
        "/inputs/0/parameters",
    ),
    # the values
    "an infinity in FP32": (binary_request(fp32(*ROW[:7], np.inf)), 400, "invalid_value", "/inputs/0/data/7"),
    "a NaN in the second FP64 row": (
        binary_request(fp64(*ROW, *ROW[:3], np.nan, *ROW[4:]), shape=(2, 8), datatype="FP64"),
        400,
        "invalid_value",
        "/inputs/0/data/11",
    ),
    "an FP64 value beyond FP32": (
        binary_request(fp64(*ROW[:5], 1e300, *ROW[6:]), datatype="FP64"),
        400,
        "invalid_value",
        "/inputs/0/data/5",
    ),
    "an INT32 tensor": (
        binary_request(struct.pack("<8i", *map(int, ROW)), datatype="INT32"),
        400,
        "invalid_tensor",
        "/inputs/0/datatype",
    ),
    # how the body is encoded (tritonclient's request_compression_algorithm: gzip, deflate)
    "a brotli-compressed body": (
        with_headers(binary_request(BINARY_ROW_FP32), {"Content-Encoding": "br"}),
        415,
        "unsupported_media_type",
        None,
    ),
    "a gzip body cut short": (cut_short(gzip_compressed(binary_request(BINARY_ROW_FP32))), 400, "invalid_body", None),
    "a gzip body whose header counts the compressed JSON": (
        gzip_compressed(binary_request(BINARY_ROW_FP32, header_length=len(gzip.compress(JSON_ROW)))),
        400,
        "invalid_json",
        None,
    ),
    "a charset other than UTF-8": (
        with_headers(binary_request(BINARY_ROW_FP32), {"Content-Type": "text/plain; charset=latin-1"}),
        415,
        "unsupported_media_type",
        None,
    ),
    # what the answer should be
    "a binary_data_output that is not a boolean": (
        binary_request(BINARY_ROW_FP32, parameters={"binary_data_output": "yes"}),
        400,
        "invalid_parameter",
        "/parameters/binary_data_output",
    ),
    "the classification extension": (
        binary_request(BINARY_ROW_FP32, outputs=[{"name": "label", "parameters": {"classification": 2}}]),
        400,
        "invalid_parameter",
        "/outputs/0/parameters/classification",
    ),
}


@pytest.mark.parametrize("request_and_answer", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_binary_request_answers_a_json_error(target, request_and_answer):
    (body, headers), status, code, field = request_and_answer
    answered_status, answer_headers, answer = target.send("POST", V2_INFER, body, headers)
    assert answered_status == status, answer[:300]
    assert answer_headers["Content-Type"] == "application/json"
    envelope = json_of(answer)
    assert (envelope["code"], envelope["status"], envelope["field"]) == (code, status, field)
    assert "Traceback" not in envelope["error"] and len(envelope["error"]) < 400


def test_a_binary_batch_over_the_row_limit_is_refused_before_its_data_is_read(target, limits):
    rows = limits["max_batch_rows"] + 1
    body, headers = binary_request(BINARY_ROW_FP32 * rows, shape=(rows, 8))
    status, _, answer = target.send("POST", V2_INFER, body, headers)
    assert (status, json_of(answer)["code"]) == (413, "too_many_rows")


def over_the_size_limit(limits) -> tuple[bytes, dict]:
    """One row of binary data after a JSON request whose id makes the body one byte too large."""
    body, headers = binary_request(BINARY_ROW_FP32, id="")
    return binary_request(BINARY_ROW_FP32, id="x" * (limits["max_request_bytes"] + 1 - len(body)))


def test_a_binary_body_over_the_size_limit_is_refused(target, limits):
    body, headers = over_the_size_limit(limits)
    assert len(body) == limits["max_request_bytes"] + 1
    status, _, answer = target.send("POST", V2_INFER, body, headers)
    assert (status, json_of(answer)["code"]) == (413, "request_entity_too_large")


def test_a_chunked_binary_body_over_the_size_limit_is_refused_not_cut(service, limits):
    body, headers = over_the_size_limit(limits)
    chunks = (body[start : start + 65536] for start in range(0, len(body), 65536))
    response = requests.post(service["url"] + V2_INFER, data=chunks, headers=headers, timeout=30)
    assert response.status_code == 413 and response.json()["code"] == "request_entity_too_large"


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_binary_request_is_decompressed_before_its_json_and_tensor_are_split(target, reference, coding):
    body, headers = binary_request(fp32(*ROW, *OTHER_ROW), shape=(2, 8), outputs=[{"name": "probability"}])
    squeezed = gzip.compress(body) if coding == "gzip" else zlib.compress(body)
    status, _, answer = target.send("POST", V2_INFER, squeezed, {**headers, "Content-Encoding": coding})
    assert status == 200, answer[:300]
    [probability] = json_of(answer)["outputs"]
    reference.assert_probabilities([ROW, OTHER_ROW], probability["data"])


@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain", "application/octet-stream"])
def test_a_binary_request_is_read_whatever_its_content_type(target, reference, content_type):
    body, headers = binary_request(fp32(*ROW, *OTHER_ROW), shape=(2, 8), outputs=[{"name": "probability"}])
    status, _, answer = target.send(
        "POST", V2_INFER, body, {**headers, "Content-Type": content_type} if content_type else headers
    )
    assert status == 200, answer[:300]
    [probability] = json_of(answer)["outputs"]
    assert probability["shape"] == [2]
    reference.assert_probabilities([ROW, OTHER_ROW], probability["data"])


def test_a_binary_answer_is_framed_as_the_extension_says(target, reference):
    body, headers = binary_request(BINARY_ROW_FP32, parameters={"binary_data_output": True}, id="x")
    status, answer_headers, answer = target.send("POST", V2_INFER, body, headers)
    assert status == 200
    assert answer_headers["Content-Type"] == "application/octet-stream"
    json_length = int(answer_headers[HEADER])
    header = json.loads(answer[:json_length])
    assert header["id"] == "x"
    assert [(o["name"], o["datatype"], o["shape"], o["parameters"], "data" in o) for o in header["outputs"]] == [
        ("probability", "FP32", [1], {"binary_data_size": 4}, False),
        ("label", "INT64", [1], {"binary_data_size": 8}, False),
    ]
    probability, label = struct.unpack("<fq", answer[json_length:])
    in_json = {
        output["name"]: output["data"][0]
        for output in json_of(target.send("POST", V2_INFER, JSON_ROW, {})[2])["outputs"]
    }
    assert (np.float32(probability), label) == (np.float32(in_json["probability"]), in_json["label"])
    reference.assert_probabilities([ROW], [probability])
    reference.assert_labels([ROW], [label], [probability])


def test_an_outputs_own_binary_data_overrides_the_requests_binary_data_output(target, reference):
    body, headers = binary_request(
        BINARY_ROW_FP32,
        parameters={"binary_data_output": True},
        outputs=[{"name": "label"}, {"name": "probability", "parameters": {"binary_data": False}}],
    )
    status, answer_headers, answer = target.send("POST", V2_INFER, body, headers)
    assert status == 200
    json_length = int(answer_headers[HEADER])
    label, probability = json.loads(answer[:json_length])["outputs"]
    assert (label["parameters"], "data" in label) == ({"binary_data_size": 8}, False)
    assert "parameters" not in probability and len(probability["data"]) == 1
    reference.assert_probabilities([ROW], probability["data"])
    reference.assert_labels([ROW], struct.unpack("<q", answer[json_length:]), probability["data"])

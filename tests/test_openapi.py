"""The OpenAPI document on its own, without a trained model: a valid OpenAPI 3
document; its Open Inference Protocol (V2) parts are the protocol's published
REST description (diabetes/specs/oip-v2-rest.yaml), narrowed only where this
model says more; its examples are bodies its own schemas accept."""

import re
from dataclasses import asdict

import pytest
import yaml
from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_openapi

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH, EXAMPLE_RECORD
from diabetes.contract import Contract
from diabetes.errors import ErrorCode
from diabetes.features import FEATURES
from diabetes.open_inference import MODEL_NAME, V2_INPUT_DATATYPES, V2_OUTPUTS
from diabetes.openapi import openapi_document
from tests.conftest import PROJECT

PROTOCOL = yaml.safe_load((PROJECT / "diabetes" / "specs" / "oip-v2-rest.yaml").read_text())
MAX_ROWS = 50
V2_ROW = [float(value) for value in ARTICLE_BODY["data"].split(",")]


@pytest.fixture(scope="module")
def contract() -> Contract:
    features = [
        {**asdict(feature), "training_min": float(number), "training_max": float(100 + number)}
        for number, feature in enumerate(FEATURES)
    ]
    return Contract(tuple(features), "v-test", 0.4, max_rows=MAX_ROWS)


@pytest.fixture(scope="module")
def document(contract) -> dict:
    return openapi_document(contract)


def accepts(document, name, body) -> bool:
    """Does the document's schema `name` accept `body` (OpenAPI 3.0's dialect: nullable)?"""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    try:
        OAS30Validator(schema).validate(body)
    except ValidationError:
        return False
    return True


def v2_request(datatype="FP32", outputs=("probability",)) -> dict:
    return {
        "id": "1",
        "inputs": [{"name": "features", "shape": [1, len(V2_ROW)], "datatype": datatype, "data": V2_ROW}],
        "outputs": [{"name": name} for name in outputs],
    }


def test_the_document_is_valid_openapi_3(document):
    validate_openapi(document)
    assert document["info"]["version"] == "v-test"


def test_every_schema_of_the_protocol_is_in_the_document_as_published(document):
    schemas = document["components"]["schemas"]
    for name, published in PROTOCOL["components"]["schemas"].items():
        assert schemas[name] == published, name


def test_the_protocols_routes_are_all_documented_with_their_methods(document):
    def route(path):
        path = re.sub(r"\$\{MODEL_NAME\}|\{model_name\}", "{name}", path)
        return re.sub(r"\$\{MODEL_VERSION\}|\{model_version\}", "{version}", path).rstrip("/")

    documented = {(route(path), method) for path, item in document["paths"].items() for method in item}
    published = {
        (route(path), method)
        for path, item in PROTOCOL["paths"].items()
        for method in item
        if method in ("get", "post")
    }
    assert published <= documented


@pytest.mark.parametrize(
    "path, method, protocol_schema",
    [
        ("/v2", "get", "metadata_server_response"),
        ("/v2/models/{model_name}", "get", "metadata_model_response"),
        ("/v2/models/{model_name}/versions/{model_version}", "get", "metadata_model_response"),
        ("/v2/models/{model_name}/infer", "post", "inference_response"),
        ("/v2/models/{model_name}/versions/{model_version}/infer", "post", "inference_response"),
    ],
)
def test_the_v2_answers_are_described_by_the_protocols_own_schemas(document, path, method, protocol_schema):
    content = document["paths"][path][method]["responses"]["200"]["content"]["application/json"]
    assert content["schema"] == {"$ref": f"#/components/schemas/{protocol_schema}"}


def test_the_inference_request_is_the_protocols_narrowed_to_this_models_input_and_outputs(document):
    schemas = document["components"]["schemas"]
    published = PROTOCOL["components"]["schemas"]
    request, request_input = schemas["V2InferenceRequest"], schemas["V2RequestInput"]
    assert request["required"] == published["inference_request"]["required"]
    assert request["properties"].keys() == published["inference_request"]["properties"].keys()
    assert request_input["required"] == published["request_input"]["required"]
    assert request_input["properties"].keys() == published["request_input"]["properties"].keys()
    assert request_input["properties"]["datatype"]["enum"] == list(V2_INPUT_DATATYPES)
    assert schemas["V2RequestOutput"]["properties"]["name"]["enum"] == list(V2_OUTPUTS)
    for operation in ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer"):
        body = document["paths"][operation]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/V2InferenceRequest"}


@pytest.mark.parametrize(
    "body, protocol_accepts, narrowed_accepts",
    [
        (v2_request(), True, True),
        (v2_request("FP64", outputs=("probability", "label")), True, True),
        (v2_request("INT8"), True, False),
        (v2_request(outputs=("predict",)), True, False),
        ({"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32"}]}, False, False),
        ({"id": "no inputs"}, False, False),
    ],
)
def test_the_narrowed_request_accepts_what_the_protocol_accepts_and_this_model_reads(
    document, body, protocol_accepts, narrowed_accepts
):
    assert accepts(document, "inference_request", body) is protocol_accepts
    assert accepts(document, "V2InferenceRequest", body) is narrowed_accepts


def test_every_example_in_the_document_is_accepted_by_its_own_schema(document):
    examples = 0
    for path, item in document["paths"].items():
        for operation in item.values():
            content = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
            if "example" in content:
                assert accepts(document, content["schema"]["$ref"].rsplit("/", 1)[1], content["example"]), path
                examples += 1
    assert examples >= 3


def test_the_routes_take_the_model_name_and_the_served_version_as_examples(document):
    infer = document["paths"]["/v2/models/{model_name}/versions/{model_version}/infer"]["post"]
    examples = {parameter["name"]: parameter.get("example") for parameter in infer["parameters"]}
    assert examples["model_name"] == MODEL_NAME and examples["model_version"] == "v-test"
    assert ARTICLE_PATH in document["paths"] and "/predict" in document["paths"]


def test_a_record_names_every_feature_in_order_with_its_training_range(document, contract):
    record = document["components"]["schemas"]["Record"]
    assert record["required"] == list(contract.names) and list(record["properties"]) == list(contract.names)
    assert "seen in training from 1 to 101" in record["properties"][contract.names[1]]["description"]
    assert accepts(document, "Record", EXAMPLE_RECORD)
    assert accepts(document, "Record", {**EXAMPLE_RECORD, "glucose": None})
    assert not accepts(document, "Record", {**EXAMPLE_RECORD, "unknown": 1})
    assert not accepts(document, "Record", {name: value for name, value in EXAMPLE_RECORD.items() if name != "age"})


def test_a_batch_is_described_up_to_the_row_limit(document):
    assert accepts(document, "PredictRequest", [EXAMPLE_RECORD] * MAX_ROWS)
    assert not accepts(document, "PredictRequest", [EXAMPLE_RECORD] * (MAX_ROWS + 1))
    assert accepts(document, "PredictRequest", {"instances": [V2_ROW, EXAMPLE_RECORD]})
    assert not accepts(document, "PredictRequest", {"instances": [V2_ROW[:-1]]})
    assert not accepts(document, "PredictRequest", {"instances": []})


def test_the_error_envelope_lists_every_error_code(document):
    error = document["components"]["schemas"]["Error"]
    assert error["properties"]["code"]["enum"] == [code.value for code in ErrorCode]
    assert accepts(document, "Error", {"error": "bad", "code": "invalid_value", "status": 400, "field": "/glucose"})
    assert not accepts(document, "Error", {"error": "bad", "code": "no_such_code", "status": 400})

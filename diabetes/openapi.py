"""The OpenAPI 3 document of the service, derived from the contract.

The Open Inference Protocol's (V2) schemas are the ones its REST description
publishes (diabetes/specs/oip-v2-rest.yaml, KServe's), under their own names;
the inference request is also given narrowed to this model's input and outputs.
"""

import copy
from functools import cache
from importlib import resources

import yaml

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH, EXAMPLE_RECORD
from diabetes.contract import Contract
from diabetes.errors import ErrorCode
from diabetes.open_inference import (
    MODEL_NAME,
    V2_INFERENCE_HEADER_CONTENT_LENGTH,
    V2_INPUT_DATATYPES,
    V2_INPUT_NAME,
    V2_OUTPUTS,
)

OPEN_INFERENCE_SPEC = "specs/oip-v2-rest.yaml"
ERROR_DESCRIPTIONS = {
    400: "The request is not valid: `error` says what was wrong and what was expected",
    404: "No such model or version",
    413: "The body or the batch is over its limit",
    415: "The body is not of a supported content type, charset (UTF-8) or content coding (gzip, deflate)",
}
BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}
# What every operation that reads a body says of how it may be compressed (diabetes/request_body.py).
BODY_CODINGS = (
    "The body may be compressed, with Content-Encoding gzip or deflate (zlib-wrapped or raw); the size limit "
    "holds for it decompressed too. Any other coding is refused with 415."
)


@cache
def _open_inference_spec() -> dict:
    return yaml.safe_load(resources.files(__package__).joinpath(OPEN_INFERENCE_SPEC).read_text())


def open_inference_schemas() -> dict:
    """The schemas of the Open Inference Protocol's REST description, by name (a copy)."""
    return copy.deepcopy(_open_inference_spec()["components"]["schemas"])


def openapi_document(contract: Contract, max_explain_rows: int | None = None) -> dict:
    """`max_explain_rows`: the most rows of a request with explain=true (by default, the batch limit)."""
    explained = contract.max_rows if max_explain_rows is None else min(max_explain_rows, contract.max_rows)
    return {
        "openapi": "3.0.3",
        "info": _info(contract),
        "paths": {
            **_prediction_paths(contract, explained),
            **_description_paths(),
            **_open_inference_paths(contract),
        },
        "components": {"schemas": _schemas(contract)},
    }


def _info(contract: Contract) -> dict:
    return {
        "title": "Diabetes prediction API",
        "version": contract.version,
        "description": "The probability of diabetes from 8 measurements (Pima Indians Diabetes "
        "data, XGBoost). Missing values: send null in JSON, an empty field in CSV; "
        "a 0 in glucose, blood_pressure, skin_fold_thick, serum_insuling or "
        "mass_index also means not measured.",
    }


# ---- building blocks ---------------------------------------------------------------------------------------


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str = "OK", example=None) -> dict:
    content = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"description": description, "content": {"application/json": content}}


def _errors(*statuses: int, **descriptions: str) -> dict:
    """The error answers of `statuses`; `descriptions` (e.g. `e413="..."`) say more than the usual ones."""
    responses = {
        str(status): _json(_ref("Error"), descriptions.get(f"e{status}", ERROR_DESCRIPTIONS[status]))
        for status in statuses
    }
    responses["default"] = _json(_ref("Error"), "Any other error, in the same envelope")
    return responses


def _path_parameter(name: str, example: str) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "example": example}


def _row_schema(names: list) -> dict:
    return {
        "type": "array",
        "minItems": len(names),
        "maxItems": len(names),
        "items": {"type": "number", "nullable": True},
        "description": f"the values of {', '.join(names)}",
    }


# ---- paths -------------------------------------------------------------------------------------------------


def _prediction_paths(contract: Contract, max_explain_rows: int) -> dict:
    return {
        ARTICLE_PATH: {
            "post": {
                "summary": "The original article's endpoint (unchanged)",
                "requestBody": {
                    "required": True,
                    "description": BODY_CODINGS,
                    "content": {"application/json": {"schema": _ref("ArticleRequest"), "example": ARTICLE_BODY}},
                },
                "responses": {"200": _json(_ref("ArticlePrediction")), **_errors(400, 413, 415)},
            }
        },
        "/predict": {"post": _predict_operation(contract, max_explain_rows)},
    }


def _predict_operation(contract: Contract, max_explain_rows: int) -> dict:
    explain = {
        "name": "explain",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "add each row's TreeSHAP contributions (log-odds). TreeSHAP costs far more than a "
        f"prediction: with explain=true a request may hold at most {max_explain_rows} rows (413 too_many_rows "
        "beyond: send fewer rows, or drop explain)",
    }
    csv_example = ",".join(contract.names) + "\n" + ARTICLE_BODY["data"] + "\n"
    return {
        "summary": "Predict from named features: a record, a list of records, instances, or CSV",
        "parameters": [explain],
        "requestBody": {
            "required": True,
            "description": BODY_CODINGS,
            "content": {
                "application/json": {"schema": _ref("PredictRequest"), "example": EXAMPLE_RECORD},
                "text/csv": {"schema": {"type": "string"}, "example": csv_example},
            },
        },
        "responses": {
            "200": _json(_ref("PredictResponse")),
            **_errors(
                400,
                413,
                415,
                e413=f"{ERROR_DESCRIPTIONS[413]}: {contract.max_rows} rows, or {max_explain_rows} with explain=true "
                "(too_many_rows); or the body's size (request_entity_too_large)",
            ),
        },
    }


def _description_paths() -> dict:
    text = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
    return {
        "/metadata": {
            "get": {
                "summary": "The model card: version, features, metrics, parameters, data hash",
                "responses": {"200": _json({"type": "object"})},
            }
        },
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}},
        "/metrics": {"get": {"summary": "Prometheus metrics of every worker", "responses": {"200": text}}},
    }


def _open_inference_paths(contract: Contract) -> dict:
    """The V2 routes, each model route also with an explicit version."""
    model = _path_parameter("model_name", MODEL_NAME)
    version = _path_parameter("model_version", contract.version)
    model_routes = {
        "": ("get", {"responses": {"200": _json(_ref("metadata_model_response")), **_errors(404)}}),
        "/ready": ("get", {"responses": {"200": _json(_ref("V2ModelReady")), **_errors(404)}}),
        "/infer": ("post", _infer_operation(contract)),
    }
    server_metadata = "metadata_server_response"
    paths = {
        "/v2": {"get": {"summary": "V2 server metadata", "responses": {"200": _json(_ref(server_metadata))}}},
        "/v2/health/live": {"get": {"summary": "V2 liveness", "responses": {"200": _json(_ref("V2Live"))}}},
        "/v2/health/ready": {
            "get": {
                "summary": "V2 readiness: a model is loaded and passed its check",
                "responses": {"200": _json(_ref("V2Ready")), "503": _json(_ref("V2Ready"), "Not ready")},
            }
        },
    }
    for suffix, (method, operation) in model_routes.items():
        extra = operation.get("parameters", [])
        paths[f"/v2/models/{{model_name}}{suffix}"] = {method: {**operation, "parameters": [model, *extra]}}
        paths[f"/v2/models/{{model_name}}/versions/{{model_version}}{suffix}"] = {
            method: {**operation, "parameters": [model, version, *extra]}
        }
    return paths


def _infer_operation(contract: Contract) -> dict:
    inference_header_length = {
        "name": V2_INFERENCE_HEADER_CONTENT_LENGTH,
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "Triton's binary tensor data extension: the body's first bytes, this many, are the JSON "
        "request; the rest are the input's raw little-endian bytes (its parameters.binary_data_size)",
    }
    example = {
        "inputs": [
            {
                "name": V2_INPUT_NAME,
                "shape": [1, len(contract.names)],
                "datatype": "FP32",
                "data": [[float(value) for value in ARTICLE_BODY["data"].split(",")]],
            }
        ]
    }
    return {
        "summary": "Open Inference Protocol V2 inference",
        "description": "The body is read as JSON whatever its Content-Type, or without one, as KServe and Triton "
        "read it. Triton's binary tensor data extension is understood both ways: an input may "
        f"come as raw bytes after the JSON request ({V2_INFERENCE_HEADER_CONTENT_LENGTH} header), "
        'and outputs asked for with "parameters": {"binary_data": true} (or all of them, with the '
        "request's binary_data_output) come back the same way, as application/octet-stream with "
        "that header.",
        "parameters": [inference_header_length],
        "requestBody": {
            "required": True,
            "description": BODY_CODINGS
            + f" The {V2_INFERENCE_HEADER_CONTENT_LENGTH} header counts the JSON request's bytes decompressed.",
            "content": {
                "application/json": {"schema": _ref("V2InferenceRequest"), "example": example},
                "application/octet-stream": BINARY_BODY,
            },
        },
        "responses": {
            "200": {
                "description": "OK",
                "content": {
                    "application/json": {"schema": _ref("inference_response")},
                    "application/octet-stream": BINARY_BODY,
                },
            },
            **_errors(400, 404, 413, 415),
        },
    }


# ---- schemas -----------------------------------------------------------------------------------------------


def _schemas(contract: Contract) -> dict:
    return {
        **open_inference_schemas(),
        **_narrowed_inference_request(contract),
        **_health_schemas(),
        "Error": _error_schema(),
        **_article_schemas(list(contract.names)),
        **_predict_schemas(contract),
    }


def _narrowed_inference_request(contract: Contract) -> dict:
    """The protocol's inference request, its inputs and outputs narrowed to
    what this model reads and answers."""
    schemas = open_inference_schemas()
    request_input = schemas["request_input"]
    request_input["properties"]["name"]["example"] = V2_INPUT_NAME
    request_input["properties"]["shape"]["example"] = [1, len(contract.names)]
    request_input["properties"]["datatype"]["enum"] = list(V2_INPUT_DATATYPES)
    request_output = schemas["request_output"]
    request_output["properties"]["name"]["enum"] = list(V2_OUTPUTS)
    request = schemas["inference_request"]
    del request["x-examples"]
    request["properties"]["inputs"]["items"] = _ref("V2RequestInput")
    request["properties"]["outputs"]["items"] = _ref("V2RequestOutput")
    return {
        "V2InferenceRequest": {**request, "title": "V2InferenceRequest"},
        "V2RequestInput": {**request_input, "title": "V2RequestInput"},
        "V2RequestOutput": {**request_output, "title": "V2RequestOutput"},
    }


def _health_schemas() -> dict:
    """The health answers, whose bodies the protocol's REST description leaves out."""
    return {
        "V2Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "V2Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "V2ModelReady": {
            "type": "object",
            "required": ["name", "ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
        },
    }


def _error_schema() -> dict:
    return {
        "type": "object",
        "required": ["error", "code", "status"],
        "properties": {
            "error": {"type": "string", "description": "what was wrong, and what was expected"},
            "code": {
                "type": "string",
                "enum": [code.value for code in ErrorCode],
                "description": "machine-readable, e.g. invalid_value",
            },
            "status": {"type": "integer"},
            "field": {
                "type": "string",
                "nullable": True,
                "description": "where: a JSON Pointer (RFC 6901) into the body as sent, e.g. /instances/0/glucose; "
                "in CSV /rows/N/<feature name>; a query parameter's or header's name",
            },
            "row": {"type": "integer", "nullable": True, "description": "the offending row (from 0)"},
        },
    }


def _article_schemas(names: list) -> dict:
    width = len(names)
    return {
        "ArticleRequest": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {
                    "oneOf": [
                        {"type": "string", "description": f"{width} comma-separated numbers"},
                        {"type": "array", "minItems": width, "maxItems": width, "items": {"type": "number"}},
                    ],
                    "description": f"the values of {', '.join(names)}",
                }
            },
        },
        "ArticlePrediction": {
            "type": "object",
            "required": ["prediction"],
            "additionalProperties": False,
            "properties": {"prediction": {"type": "number", "minimum": 0, "maximum": 1}},
        },
    }


def _feature_schema(feature: dict) -> dict:
    return {
        "type": "number",
        "nullable": True,
        "example": EXAMPLE_RECORD[feature["name"]],
        "description": f"{feature['meaning']} ({feature['unit']}); seen in training from "
        f"{feature['training_min']:g} to {feature['training_max']:g}. null: not measured"
        + (" (so is 0)" if feature["zero_means_missing"] else ""),
    }


def _predict_schemas(contract: Contract) -> dict:
    names = list(contract.names)
    batch = {"type": "array", "minItems": 1, "maxItems": contract.max_rows}
    instances = {
        "type": "object",
        "required": ["instances"],
        "additionalProperties": False,
        "properties": {"instances": {**batch, "items": {"oneOf": [_row_schema(names), _ref("Record")]}}},
    }
    return {
        "Record": {
            "type": "object",
            "required": names,
            "additionalProperties": False,
            "properties": {feature["name"]: _feature_schema(feature) for feature in contract.features},
        },
        "PredictRequest": {"oneOf": [_ref("Record"), {**batch, "items": _ref("Record")}, instances]},
        "PredictResponse": _predict_response_schema(names),
    }


def _predict_response_schema(names: list) -> dict:
    explanation = {
        "type": "object",
        "required": ["base_value", "contributions", "margin"],
        "description": "XGBoost's TreeSHAP: base_value + sum(contributions) = margin "
        "(log-odds); probability = 1 / (1 + exp(-margin))",
        "properties": {
            "base_value": {"type": "number"},
            "margin": {"type": "number"},
            "contributions": {
                "type": "object",
                "required": names,
                "properties": {name: {"type": "number"} for name in names},
            },
        },
    }
    prediction = {
        "type": "object",
        "required": ["probability", "label"],
        "properties": {
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "label": {"type": "integer", "enum": [0, 1]},
            "explanation": explanation,
        },
    }
    return {
        "type": "object",
        "required": ["model_version", "threshold", "predictions"],
        "properties": {
            "model_version": {"type": "string"},
            "threshold": {"type": "number", "description": "label is 1 when probability >= threshold"},
            "predictions": {"type": "array", "items": prediction},
        },
    }

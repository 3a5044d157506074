"""The OpenAPI 3 document of the service, derived from the contract."""

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH, EXAMPLE_RECORD
from diabetes.contract import (
    MODEL_NAME,
    V2_INFERENCE_HEADER_CONTENT_LENGTH,
    V2_INPUT_DATATYPES,
    V2_INPUT_NAME,
    V2_OUTPUTS,
    Contract,
)


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description="OK", example=None):
    content = {"schema": schema}
    if example is not None:
        content["example"] = example
    return {"description": description, "content": {"application/json": content}}


def _errors(*statuses):
    described = {
        400: "The request is not valid: `error` says what was wrong and what was expected",
        404: "No such model or version",
        413: "The body or the batch is over its limit",
        415: "The body is not of a supported content type",
    }
    responses = {str(status): _json(_ref("Error"), described[status]) for status in statuses}
    responses["default"] = _json(_ref("Error"), "Any other error, in the same envelope")
    return responses


def _feature_schema(feature) -> dict:
    return {
        "type": "number",
        "nullable": True,
        "example": EXAMPLE_RECORD[feature["name"]],
        "description": f"{feature['meaning']} ({feature['unit']}); seen in training from "
        f"{feature['training_min']:g} to {feature['training_max']:g}. null: not measured"
        + (" (so is 0)" if feature["zero_means_missing"] else ""),
    }


def openapi_document(contract: Contract) -> dict:
    names = list(contract.names)
    width = len(names)
    row = {
        "type": "array",
        "minItems": width,
        "maxItems": width,
        "items": {"type": "number", "nullable": True},
        "description": f"the values of {', '.join(names)}",
    }
    model_path = {
        "name": "model_name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "example": MODEL_NAME,
    }
    version_path = {
        "name": "model_version",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "example": contract.version,
    }
    v2_model = {"parameters": [model_path], "responses": {"200": _json(_ref("V2ModelMetadata")), **_errors(404)}}
    v2_ready = {"parameters": [model_path], "responses": {"200": _json(_ref("V2ModelReady")), **_errors(404)}}
    binary_body = {"schema": {"type": "string", "format": "binary"}}
    inference_header_length = {
        "name": V2_INFERENCE_HEADER_CONTENT_LENGTH,
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "Triton's binary tensor data extension: the body's first bytes, this many, are the JSON "
        "request; the rest are the input's raw little-endian bytes (its parameters.binary_data_size)",
    }
    v2_infer = {
        "summary": "Open Inference Protocol V2 inference",
        "description": "The body is read as JSON whatever its Content-Type, or without one, as KServe and Triton "
        "read it. Triton's binary tensor data extension is understood both ways: an input may "
        f"come as raw bytes after the JSON request ({V2_INFERENCE_HEADER_CONTENT_LENGTH} header), "
        'and outputs asked for with "parameters": {"binary_data": true} (or all of them, with the '
        "request's binary_data_output) come back the same way, as application/octet-stream with "
        "that header.",
        "parameters": [model_path, inference_header_length],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _ref("V2InferenceRequest"),
                    "example": {
                        "inputs": [
                            {
                                "name": V2_INPUT_NAME,
                                "shape": [1, width],
                                "datatype": "FP32",
                                "data": [[float(v) for v in ARTICLE_BODY["data"].split(",")]],
                            }
                        ]
                    },
                },
                "application/octet-stream": binary_body,
            },
        },
        "responses": {
            "200": {
                "description": "OK",
                "content": {
                    "application/json": {"schema": _ref("V2InferenceResponse")},
                    "application/octet-stream": binary_body,
                },
            },
            **_errors(400, 404, 413, 415),
        },
    }

    def versioned(operation):
        return {**operation, "parameters": [model_path, version_path, *operation["parameters"][1:]]}

    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Diabetes prediction API",
            "version": contract.version,
            "description": "The probability of diabetes from 8 measurements (Pima Indians Diabetes "
            "data, XGBoost). Missing values: send null in JSON, an empty field in CSV; "
            "a 0 in glucose, blood_pressure, skin_fold_thick, serum_insuling or "
            "mass_index also means not measured.",
        },
        "paths": {
            ARTICLE_PATH: {
                "post": {
                    "summary": "The original article's endpoint (unchanged)",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ArticleRequest"), "example": ARTICLE_BODY}},
                    },
                    "responses": {"200": _json(_ref("ArticlePrediction")), **_errors(400, 413, 415)},
                }
            },
            "/predict": {
                "post": {
                    "summary": "Predict from named features: a record, a list of records, instances, or CSV",
                    "parameters": [
                        {
                            "name": "explain",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "boolean", "default": False},
                            "description": "add each row's TreeSHAP contributions (log-odds)",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": _ref("PredictRequest"), "example": EXAMPLE_RECORD},
                            "text/csv": {
                                "schema": {"type": "string"},
                                "example": ",".join(names) + "\n" + ARTICLE_BODY["data"] + "\n",
                            },
                        },
                    },
                    "responses": {"200": _json(_ref("PredictResponse")), **_errors(400, 413, 415)},
                }
            },
            "/metadata": {
                "get": {
                    "summary": "The model card: version, features, metrics, parameters, data hash",
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics of every worker",
                    "responses": {
                        "200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/v2": {"get": {"summary": "V2 server metadata", "responses": {"200": _json(_ref("V2ServerMetadata"))}}},
            "/v2/health/live": {"get": {"summary": "V2 liveness", "responses": {"200": _json(_ref("V2Live"))}}},
            "/v2/health/ready": {
                "get": {
                    "summary": "V2 readiness: a model is loaded and passed its check",
                    "responses": {"200": _json(_ref("V2Ready")), "503": _json(_ref("V2Ready"), "Not ready")},
                }
            },
            "/v2/models/{model_name}": {"get": v2_model},
            "/v2/models/{model_name}/versions/{model_version}": {"get": versioned(v2_model)},
            "/v2/models/{model_name}/ready": {"get": v2_ready},
            "/v2/models/{model_name}/versions/{model_version}/ready": {"get": versioned(v2_ready)},
            "/v2/models/{model_name}/infer": {"post": v2_infer},
            "/v2/models/{model_name}/versions/{model_version}/infer": {"post": versioned(v2_infer)},
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "code", "status"],
                    "properties": {
                        "error": {"type": "string", "description": "what was wrong, and what was expected"},
                        "code": {"type": "string", "description": "machine-readable, e.g. invalid_value"},
                        "status": {"type": "integer"},
                        "field": {"type": "string", "nullable": True, "description": "the offending member"},
                        "row": {"type": "integer", "nullable": True, "description": "the offending row (from 0)"},
                    },
                },
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
                "Record": {
                    "type": "object",
                    "required": names,
                    "additionalProperties": False,
                    "properties": {feature["name"]: _feature_schema(feature) for feature in contract.features},
                },
                "PredictRequest": {
                    "oneOf": [
                        _ref("Record"),
                        {"type": "array", "minItems": 1, "maxItems": contract.max_rows, "items": _ref("Record")},
                        {
                            "type": "object",
                            "required": ["instances"],
                            "additionalProperties": False,
                            "properties": {
                                "instances": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": contract.max_rows,
                                    "items": {"oneOf": [row, _ref("Record")]},
                                }
                            },
                        },
                    ]
                },
                "PredictResponse": {
                    "type": "object",
                    "required": ["model_version", "threshold", "predictions"],
                    "properties": {
                        "model_version": {"type": "string"},
                        "threshold": {"type": "number", "description": "label is 1 when probability >= threshold"},
                        "predictions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["probability", "label"],
                                "properties": {
                                    "probability": {"type": "number", "minimum": 0, "maximum": 1},
                                    "label": {"type": "integer", "enum": [0, 1]},
                                    "explanation": {
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
                                                "properties": {n: {"type": "number"} for n in names},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
                "V2ServerMetadata": {
                    "type": "object",
                    "required": ["name", "version", "extensions"],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "extensions": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "V2Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
                "V2Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
                "V2ModelReady": {
                    "type": "object",
                    "required": ["name", "ready"],
                    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
                },
                "V2Tensor": {
                    "type": "object",
                    "required": ["name", "datatype", "shape"],
                    "properties": {
                        "name": {"type": "string"},
                        "datatype": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                    },
                },
                "V2ModelMetadata": {
                    "type": "object",
                    "required": ["name", "platform"],
                    "properties": {
                        "name": {"type": "string"},
                        "versions": {"type": "array", "items": {"type": "string"}},
                        "platform": {"type": "string"},
                        "inputs": {"type": "array", "items": _ref("V2Tensor")},
                        "outputs": {"type": "array", "items": _ref("V2Tensor")},
                    },
                },
                "V2TensorData": {
                    "type": "array",
                    "items": {
                        "anyOf": [_ref("V2TensorData"), {"type": "number"}, {"type": "string"}, {"type": "boolean"}]
                    },
                },
                "V2InferenceRequest": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype", "data"],
                                "properties": {
                                    "name": {"type": "string", "example": V2_INPUT_NAME},
                                    "shape": {"type": "array", "items": {"type": "integer"}, "example": [1, width]},
                                    "datatype": {"type": "string", "enum": list(V2_INPUT_DATATYPES)},
                                    "parameters": {"type": "object"},
                                    "data": _ref("V2TensorData"),
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string", "enum": list(V2_OUTPUTS)},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                },
                "V2InferenceResponse": {
                    "type": "object",
                    "required": ["model_name", "outputs"],
                    "properties": {
                        "model_name": {"type": "string"},
                        "model_version": {"type": "string"},
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype", "data"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "datatype": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "parameters": {"type": "object"},
                                    "data": _ref("V2TensorData"),
                                },
                            },
                        },
                    },
                },
            }
        },
    }

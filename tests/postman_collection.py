"""Generate the Postman collection from the tests' catalog of calls.

    python -m tests.postman_collection   (or `make collection`)

writes postman/<app name>.postman_collection.json: one request per call of
tests/calls.py, each with pm.test checks of its status and body. The tests
fail when the committed collection differs from what this generates.
"""

import json
import sys
from pathlib import Path

from diabetes.settings import APP_NAME, notebook_defaults
from tests.calls import BAD_CALLS, GOOD_CALLS, NO_BODY, Call

COLLECTION = Path(f"postman/{APP_NAME}.postman_collection.json")

# Bodies too big to store, built in a pre-request script from the service's
# limits (the collection variables maxBatchRows and maxRequestBytes).
_BODY_SCRIPTS = {
    "too_many_rows": 'JSON.stringify({instances: Array(Number(pm.collectionVariables.get("maxBatchRows")) + 1)'
    ".fill([1, 106, 70, 28, 135, 34.2, 0.142, 22])})",
    "most_rows": 'JSON.stringify({instances: Array(Number(pm.collectionVariables.get("maxBatchRows")))'
    ".fill([1, 106, 70, 28, 135, 34.2, 0.142, 22])})",
    "too_large": 'JSON.stringify({data: "1".repeat(Number(pm.collectionVariables.get("maxRequestBytes")))})',
}

_PROBABILITY_LIST = [
    'pm.test("answers one probability per row", () => {',
    "    const predictions = pm.response.json().predictions;",
    "    predictions.forEach(p => pm.expect(p.probability).to.be.within(0, 1));",
    '    pm.expect(pm.response.json().model_version).to.eql(pm.collectionVariables.get("modelVersion"));',
    "});",
]

# The pm.test lines of each good call, by its sentence in calls.GOOD_CALLS, beyond
# the checks of its status and content type that every request gets.
GOOD_CALL_CHECKS = {
    "the V2 model metadata names the served version": [
        'pm.collectionVariables.set("modelVersion", pm.response.json().versions[0]);',
        'pm.test("declares an input of shape [-1, 8]", () =>',
        "    pm.expect(pm.response.json().inputs[0].shape).to.eql([-1, 8]));",
    ],
    "the article's request answers a probability": [
        'pm.test("the prediction is a probability", () =>',
        "    pm.expect(pm.response.json().prediction).to.be.within(0, 1));",
        'pm.collectionVariables.set("articlePrediction", pm.response.json().prediction);',
        'pm.test("names the model version in a header", () =>',
        '    pm.expect(pm.response.headers.get("X-Model-Version"))',
        '        .to.eql(pm.collectionVariables.get("modelVersion")));',
    ],
    "the article's values as a list answer the same": [
        'pm.test("answers the same prediction", () =>',
        '    pm.expect(pm.response.json().prediction).to.eql(pm.collectionVariables.get("articlePrediction")));',
    ],
    "predict answers one record": _PROBABILITY_LIST,
    "predict answers a list of records, with null for not measured": _PROBABILITY_LIST,
    "predict answers instances": _PROBABILITY_LIST,
    "predict answers CSV with a header": _PROBABILITY_LIST,
    "predict answers CSV without a header": _PROBABILITY_LIST,
    "predict explains a prediction": [
        'pm.test("contributions and base value sum to the margin", () => {',
        "    const e = pm.response.json().predictions[0].explanation;",
        "    const sum = Object.values(e.contributions).reduce((a, b) => a + b, e.base_value);",
        "    pm.expect(sum).to.be.closeTo(e.margin, 1e-5);",
        "});",
    ],
    "V2 infer answers a request made as the protocol shows it": [
        'pm.test("answers the probability tensor", () => {',
        "    const body = pm.response.json();",
        '    pm.expect(body.id).to.eql("42");',
        '    const probability = body.outputs.find(o => o.name === "probability");',
        "    pm.expect(probability.shape).to.eql([1]);",
        '    pm.expect(probability.data[0]).to.be.closeTo(pm.collectionVariables.get("articlePrediction"), 1e-6);',
        "});",
    ],
    "V2 infer answers a versioned request of FP64 rows": [
        'pm.test("answers only the label tensor", () =>',
        '    pm.expect(pm.response.json().outputs.map(o => o.name)).to.eql(["label"]));',
    ],
    "V2 infer reads a request without Content-Type as JSON": [
        'pm.test("answers the same probability as the article route", () =>',
        "    pm.expect(pm.response.json().outputs[0].data[0]).to.be.closeTo(",
        '        pm.collectionVariables.get("articlePrediction"), 1e-6));',
    ],
    "V2 infer reads FP32 rows sent as binary tensor data": [
        'pm.test("answers a probability and its label", () => {',
        "    const outputs = pm.response.json().outputs;",
        "    pm.expect(outputs.map(o => o.shape)).to.eql([[1], [1]]);",
        "    pm.expect(outputs[0].data[0]).to.be.within(0, 1);",
        "});",
    ],
    "V2 server metadata": [
        'pm.test("lists the binary tensor data extension", () =>',
        '    pm.expect(pm.response.json().extensions).to.include("binary_tensor_data"));',
    ],
    "V2 liveness": ['pm.test("is live", () => pm.expect(pm.response.json().live).to.be.true);'],
    "V2 readiness": ['pm.test("is ready", () => pm.expect(pm.response.json().ready).to.be.true);'],
    "the model card": [
        'pm.test("lists the 8 features with their training ranges", () =>',
        "    pm.expect(pm.response.json().features.map(f => f.training_max).length).to.eql(8));",
    ],
    "the OpenAPI document": ['pm.test("is OpenAPI 3", () => pm.expect(pm.response.json().openapi).to.match(/^3\\./));'],
    "the docs page": [
        'pm.test("is Swagger UI served locally", () =>',
        '    pm.expect(pm.response.text()).to.include("/docs/swagger-ui-bundle.js"));',
    ],
}


def _checks(call: Call) -> list:
    lines = [f'pm.test("answers {call.status}", () => pm.response.to.have.status({call.status}));']
    if call.path == "/docs":
        return lines + GOOD_CALL_CHECKS.get(call.what, [])
    lines.append('pm.test("answers JSON", () => pm.response.to.be.json);')
    if call.code:
        lines += [
            'pm.test("answers the error envelope", () => {',
            "    const body = pm.response.json();",
            '    pm.expect(body.error).to.be.a("string").and.not.empty;',
            f'    pm.expect(body.code).to.eql("{call.code}");',
            f"    pm.expect(body.status).to.eql({call.status});",
            "});",
        ]
        if call.field:
            lines.append(
                f'pm.test("names the offending field", () => '
                f"pm.expect(pm.response.json().field).to.eql({json.dumps(call.field)}));"
            )
    return lines + GOOD_CALL_CHECKS.get(call.what, [])


def _item(call: Call) -> dict:
    path = call.path.replace("{version}", "{{modelVersion}}")
    request = {"method": call.method, "header": [], "url": "{{baseUrl}}" + path}
    if call.content_type:
        request["header"].append({"key": "Content-Type", "value": call.content_type})
    request["header"] += [{"key": name, "value": value} for name, value in call.headers]
    events = [{"listen": "test", "script": {"type": "text/javascript", "exec": _checks(call)}}]
    if call.generated_body:
        request["body"] = {"mode": "raw", "raw": "{{generatedBody}}"}
        events.insert(
            0,
            {
                "listen": "prerequest",
                "script": {
                    "type": "text/javascript",
                    "exec": [f'pm.variables.set("generatedBody", {_BODY_SCRIPTS[call.generated_body]});'],
                },
            },
        )
    elif call.json is not NO_BODY:
        request["body"] = {"mode": "raw", "raw": json.dumps(call.json)}
    elif call.text is not None:
        request["body"] = {"mode": "raw", "raw": call.text}
    return {"name": call.what, "request": request, "event": events}


def collection() -> dict:
    unknown = set(GOOD_CALL_CHECKS) - {call.what for call in GOOD_CALLS}
    if unknown:
        raise ValueError(f"checks for calls that are not in calls.GOOD_CALLS: {sorted(unknown)}")
    limits = notebook_defaults()
    return {
        "info": {
            "name": "Diabetes API",
            "description": "Every route of the service, and one bad call of every class of bad input, with "
            "pm.test checks. Generated from tests/calls.py by `make collection`; run by "
            "`make postman`. Import it with the environment local.postman_environment.json.",
            "schema": "https://schema.getpostman.com/json/collection/v2.1.0/collection.json",
        },
        "item": [
            {"name": "Good calls", "item": [_item(call) for call in GOOD_CALLS]},
            {"name": "Bad calls", "item": [_item(call) for call in BAD_CALLS]},
        ],
        "variable": [
            {"key": "modelVersion", "value": ""},
            {"key": "articlePrediction", "value": ""},
            {"key": "maxBatchRows", "value": str(limits["max_batch_rows"])},
            {"key": "maxRequestBytes", "value": str(limits["max_request_bytes"])},
        ],
    }


def render() -> str:
    return json.dumps(collection(), indent=2) + "\n"


if __name__ == "__main__":
    COLLECTION.write_text(render())
    print(f"wrote {COLLECTION}", file=sys.stderr)

"""Generate the Postman collection from the catalog of calls.

    python -m diabetes.postman   (or `make collection`)

writes postman/diabetes-api.postman_collection.json: one request per call of
diabetes.catalog, each with pm.test checks of its status and body. The tests
fail when the committed collection differs from what this generates.
"""

import json
import sys
from pathlib import Path

from diabetes.catalog import BAD_CALLS, GOOD_CALLS, NO_BODY, Call
from diabetes.settings import notebook_defaults

COLLECTION = Path("postman/diabetes-api.postman_collection.json")

# Bodies too big to store, built in a pre-request script from the service's
# limits (the collection variables maxBatchRows and maxRequestBytes).
_BODY_SCRIPTS = {
    "too_many_rows": 'JSON.stringify({instances: Array(Number(pm.collectionVariables.get("maxBatchRows")) + 1)'
    ".fill([1, 106, 70, 28, 135, 34.2, 0.142, 22])})",
    "too_large": 'JSON.stringify({data: "1".repeat(Number(pm.collectionVariables.get("maxRequestBytes")))})',
}


def _checks(call: Call) -> list:
    lines = [f'pm.test("answers {call.status}", () => pm.response.to.have.status({call.status}));']
    if call.path == "/docs":
        return lines + list(call.postman_checks)
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
    return lines + list(call.postman_checks)


def _item(call: Call) -> dict:
    path = call.path.replace("{version}", "{{modelVersion}}")
    request = {"method": call.method, "header": [], "url": "{{baseUrl}}" + path}
    if call.content_type:
        request["header"].append({"key": "Content-Type", "value": call.content_type})
    request["header"] += [{"key": name, "value": value} for name, value in call.headers]
    events = [{"listen": "test", "script": {"type": "text/javascript", "exec": _checks(call)}}]
    if call.postman_body:
        request["body"] = {"mode": "raw", "raw": "{{generatedBody}}"}
        events.insert(
            0,
            {
                "listen": "prerequest",
                "script": {
                    "type": "text/javascript",
                    "exec": [f'pm.variables.set("generatedBody", {_BODY_SCRIPTS[call.postman_body]});'],
                },
            },
        )
    elif call.json is not NO_BODY:
        request["body"] = {"mode": "raw", "raw": json.dumps(call.json)}
    elif call.text is not None:
        request["body"] = {"mode": "raw", "raw": call.text}
    return {"name": call.what, "request": request, "event": events}


def collection() -> dict:
    limits = notebook_defaults()
    return {
        "info": {
            "name": "Diabetes API",
            "description": "Every route of the service, and one bad call of every class of bad input, with "
            "pm.test checks. Generated from diabetes/catalog.py by `make collection`; run by "
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

"""The prediction contract on its own, without a trained model: every form a
body may take reads into the same float32 matrix; every bad body gets its
error code and a `field` that is a JSON Pointer to what was wrong; the fast
check of whole batches accepts and refuses exactly what the value-by-value
check does; every error code is in the README's table with its status."""

import io
import json
import math
import re
import socket
import struct
import time
from dataclasses import asdict

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from diabetes import request_body
from diabetes.contract import Contract, Values, parse_json
from diabetes.errors import ErrorCode, InvalidRequest, pointer
from diabetes.features import FEATURES, FEW_ROWS
from diabetes.number_checks import instances_text_holds_numbers_only
from diabetes.open_inference import split_body
from diabetes.request_body import LimitedBody, read_body
from tests.conftest import PROJECT

NAMES = [feature.name for feature in FEATURES]
ROWS = [[1, 106, 70, 28, 135, 34.2, 0.142, 22], [6, 148, 72, 35, 0, 33.6, 0.627, 50]]
MAX_ROWS = 50


@pytest.fixture(scope="module")
def contract() -> Contract:
    features = [{**asdict(feature), "training_min": 0.0, "training_max": 200.0} for feature in FEATURES]
    return Contract(tuple(features), "1", 0.5, max_rows=MAX_ROWS)


def records(rows):
    return [dict(zip(NAMES, row)) for row in rows]


def csv_text(rows, header=NAMES):
    lines = ([",".join(header)] if header else []) + [
        ",".join("" if v is None else str(v) for v in row) for row in rows
    ]
    return "\n".join(lines) + "\n"


def v2_json(data, shape, datatype="FP32", **members):
    return {"inputs": [{"name": "features", "shape": list(shape), "datatype": datatype, "data": data}], **members}


def v2_binary(tensor: bytes, shape, datatype="FP32", header_length=None, **tensor_members) -> tuple[bytes, str]:
    """A body in Triton's binary tensor data extension, and its Inference-Header-Content-Length."""
    parameters = {"binary_data_size": len(tensor)}
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "features", "shape": list(shape), "datatype": datatype, "parameters": parameters}
                | tensor_members
            ]
        }
    )
    return head + tensor, str(len(head) if header_length is None else header_length)


def read(contract, form, body):
    """The matrix a body of `form` reads into, as the route of that form reads it."""
    if form == "article":
        return contract.rows_from_article(body)
    if form == "json":
        return contract.rows_from_json(body)
    if form == "csv":
        return contract.rows_from_csv(io.StringIO(body, newline=""))
    if form == "v2":
        return contract.rows_from_v2(body)[0]
    if form == "v2 http":  # the body's bytes and its Inference-Header-Content-Length, if any
        json_part, tensor_bytes = split_body(*body)
        return contract.rows_from_v2(parse_json(json_part), tensor_bytes)[0]
    raise AssertionError(form)


def resolve(document, json_pointer):
    """What a JSON Pointer (RFC 6901) points at in a document."""
    for token in json_pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        document = document[int(token)] if isinstance(document, list) else document[token]
    return document


# ---- every form reads into the same matrix -------------------------------------------------
EXPECTED = np.array(ROWS, dtype=np.float32)
FORMS = {
    "a list of records": ("json", records(ROWS)),
    "instances as lists": ("json", {"instances": ROWS}),
    "instances as records": ("json", {"instances": records(ROWS)}),
    "CSV without a header": ("csv", csv_text(ROWS, header=None)),
    "CSV with a header": ("csv", csv_text(ROWS)),
    "CSV with a header in another order": (
        "csv",
        csv_text([list(reversed(row)) for row in ROWS], header=list(reversed(NAMES))),
    ),
    "CSV with blank lines, spaces, quotes and a byte-order mark's absence": (
        "csv",
        '\n1, 106 ,"70",28,135,34.2,0.142,22\n\n6,148,72,35,0,33.6,0.627,50\n\n',
    ),
    "V2 flat data": ("v2", v2_json([v for row in ROWS for v in row], (2, 8))),
    "V2 data nested in rows": ("v2", v2_json(ROWS, (2, 8))),
    "V2 FP64 data": ("v2", v2_json([v for row in ROWS for v in row], (2, 8), datatype="FP64")),
    "V2 binary FP32": ("v2 http", v2_binary(struct.pack("<16f", *ROWS[0], *ROWS[1]), (2, 8))),
    "V2 binary FP64": ("v2 http", v2_binary(struct.pack("<16d", *ROWS[0], *ROWS[1]), (2, 8), datatype="FP64")),
}


@pytest.mark.parametrize("form, body", FORMS.values(), ids=FORMS.keys())
def test_every_form_of_a_batch_reads_into_the_same_float32_matrix(contract, form, body):
    matrix = read(contract, form, body)
    assert matrix.dtype == np.float32 and matrix.flags.c_contiguous and matrix.flags.writeable
    assert np.array_equal(matrix, EXPECTED)


@pytest.mark.parametrize(
    "form, body",
    [
        ("article", {"data": "1,106,70,28,135,34.2,0.142,22"}),
        ("article", {"data": ROWS[0]}),
        ("json", records(ROWS[:1])[0]),
        ("v2", v2_json(ROWS[0], (1, 8))),
    ],
    ids=["the article's string", "the article's list", "one record", "one V2 row"],
)
def test_a_single_row_reads_into_a_matrix_of_one_row(contract, form, body):
    assert np.array_equal(read(contract, form, body), EXPECTED[:1])


@pytest.mark.parametrize(
    "form, body",
    [
        ("json", records([[1, None, 70, 28, 135, 34.2, 0.142, 22]])[0]),
        ("json", {"instances": [[1, None, 70, 28, 135, 34.2, 0.142, 22]]}),
        ("csv", "1,,70,28,135,34.2,0.142,22\n"),
        ("csv", "1, \t ,70,28,135,34.2,0.142,22\n"),
    ],
    ids=["null in a record", "null in an instance", "an empty CSV field", "a blank CSV field"],
)
def test_a_value_not_measured_reads_as_nan(contract, form, body):
    matrix = read(contract, form, body)
    assert np.isnan(matrix[0, 1]) and np.array_equal(np.delete(matrix, 1, axis=1), np.delete(EXPECTED[:1], 1, axis=1))


# ---- every bad body: its code, and where --------------------------------------------------
BINARY_ROW = struct.pack("<8f", *ROWS[0])
BAD = {
    # form, body, code, field, row
    "the article without data": ("article", {"values": "1,2"}, "missing_field", "/data", None),
    "the article's data a number": ("article", {"data": 1}, "invalid_type", "/data", None),
    "the article's data of 7 values": ("article", {"data": "1,2,3,4,5,6,7"}, "wrong_value_count", "/data", None),
    "a word in the article's string": (
        "article",
        {"data": "1,abc,70,28,135,34.2,0.142,22"},
        "invalid_value",
        "/data/1",
        None,
    ),
    "Arabic-Indic digits in the article's string": (
        "article",
        {"data": "1,106,70,28,135,34.2,0.142,٢٢"},
        "invalid_value",
        "/data/7",
        None,
    ),
    "an empty value in the article's string": (
        "article",
        {"data": "1,106,70,28,,34.2,0.142,22"},
        "invalid_value",
        "/data/4",
        None,
    ),
    "null in the article's list": (
        "article",
        {"data": [1, 106, None, 28, 135, 34.2, 0.142, 22]},
        "invalid_value",
        "/data/2",
        None,
    ),
    "a numeric string in the article's list": (
        "article",
        {"data": [1, "106", 70, 28, 135, 34.2, 0.142, 22]},
        "invalid_value",
        "/data/1",
        None,
    ),
    "a body that is a string": ("json", "glucose=106", "invalid_body", None, None),
    "a record missing a feature": ("json", {n: 1 for n in NAMES[:-1]}, "missing_feature", "/age", None),
    "a record with an unknown feature": (
        "json",
        {**records(ROWS)[0], "a/b~c": 1},
        "unknown_feature",
        "/a~1b~0c",
        None,
    ),
    "a boolean in a record": ("json", {**records(ROWS)[0], "age": True}, "invalid_value", "/age", None),
    "a number beyond float32 in a record": (
        "json",
        {**records(ROWS)[0], "glucose": 1e39},
        "invalid_value",
        "/glucose",
        None,
    ),
    "a non-record in a list of records": ("json", [records(ROWS)[0], 5], "invalid_body", "/1", 1),
    "a second record missing a feature": (
        "json",
        [records(ROWS)[0], {n: 1 for n in NAMES if n != "glucose"}],
        "missing_feature",
        "/1/glucose",
        1,
    ),
    "a string in a second record": (
        "json",
        [records(ROWS)[0], {**records(ROWS)[1], "mass_index": "33.6"}],
        "invalid_value",
        "/1/mass_index",
        1,
    ),
    "an empty list": ("json", [], "empty_batch", None, None),
    "instances not a list": ("json", {"instances": "1,2"}, "invalid_body", "/instances", None),
    "empty instances": ("json", {"instances": []}, "empty_batch", None, None),
    "an instance of 7 values": ("json", {"instances": [ROWS[0], ROWS[1][:7]]}, "wrong_value_count", "/instances/1", 1),
    "a string in an instance": (
        "json",
        {"instances": [ROWS[0], [6, 148, 72, 35, "0", 33.6, 0.627, 50]]},
        "invalid_value",
        "/instances/1/4",
        1,
    ),
    "a list in an instance": (
        "json",
        {"instances": [[1, 106, 70, [28], 135, 34.2, 0.142, 22]]},
        "invalid_value",
        "/instances/0/3",
        0,
    ),
    "a list among instances that are records": (
        "json",
        {"instances": [records(ROWS)[0], ROWS[1]]},
        "invalid_body",
        "/instances/1",
        1,
    ),
    "a number beyond float32 in an instance record": (
        "json",
        {"instances": [records(ROWS)[0], {**records(ROWS)[1], "age": -1e300}]},
        "invalid_value",
        "/instances/1/age",
        1,
    ),
    "too many instances": ("json", {"instances": [ROWS[0]] * (MAX_ROWS + 1)}, "too_many_rows", None, None),
    "too many records": ("json", records(ROWS[:1]) * (MAX_ROWS + 1), "too_many_rows", None, None),
    "a CSV row of 7 values": ("csv", csv_text([ROWS[0], ROWS[1][:7]]), "wrong_value_count", "/rows/1", 1),
    "a first CSV line of empty fields": ("csv", ",,,,,,,\n", "wrong_value_count", "/rows/0", 0),
    "a first CSV line of empty fields, then a row": (
        "csv",
        ",,,,,,,\n" + csv_text([ROWS[0]], header=None),
        "wrong_value_count",
        "/rows/0",
        0,
    ),
    "a first CSV line of blank and quoted empty fields": ("csv", ' ,"",\t,,,,,\n', "wrong_value_count", "/rows/0", 0),
    "a CSV line of empty fields after a row": (
        "csv",
        csv_text([ROWS[0], [None] * 8], header=None),
        "wrong_value_count",
        "/rows/1",
        1,
    ),
    "a CSV line of empty fields after a header": ("csv", csv_text([[None] * 8]), "wrong_value_count", "/rows/0", 0),
    "a word in CSV": (
        "csv",
        csv_text([ROWS[0], [6, "high", 72, 35, 0, 33.6, 0.627, 50]]),
        "invalid_value",
        "/rows/1/glucose",
        1,
    ),
    "NaN in CSV": (
        "csv",
        csv_text([[1, 106, 70, 28, 135, 34.2, 0.142, "nan"]], header=None),
        "invalid_value",
        "/rows/0/age",
        0,
    ),
    "1_000 in CSV": (
        "csv",
        csv_text([[1, 106, 70, 28, "1_000", 34.2, 0.142, 22]], header=None),
        "invalid_value",
        "/rows/0/serum_insuling",
        0,
    ),
    "a quoted comma in CSV": (
        "csv",
        '1,106,70,28,"1,3",34.2,0.142,22\n',
        "invalid_value",
        "/rows/0/serum_insuling",
        0,
    ),
    "a quoted newline after a number in CSV": (
        "csv",
        '1,106,70,28,"135\n",34.2,0.142,22\n',
        "invalid_value",
        "/rows/0/serum_insuling",
        0,
    ),
    "a word in a reordered CSV": (
        "csv",
        csv_text(
            [list(reversed(ROWS[0])), [50, "x", 0.627, 33.6, 0, 35, 72, 148, 6][:8]], header=list(reversed(NAMES))
        ),
        "invalid_value",
        "/rows/1/diabetes_pedigree",
        1,
    ),
    "a CSV header with an unknown name": (
        "csv",
        csv_text(ROWS, header=[*NAMES[:-1], "years"]),
        "unknown_feature",
        "/header",
        None,
    ),
    "a CSV header missing a name": (
        "csv",
        csv_text(ROWS, header=[*NAMES[:-1], "glucose"]),
        "missing_feature",
        "/header",
        None,
    ),
    "CSV with an unclosed quote": ("csv", '1,"106,70\n', "invalid_csv", None, None),
    "an empty CSV body": ("csv", "", "empty_batch", None, None),
    "a CSV header without rows": ("csv", csv_text([]), "empty_batch", None, None),
    "too many CSV rows": ("csv", csv_text([ROWS[0]] * (MAX_ROWS + 1)), "too_many_rows", None, None),
    "V2 without inputs": ("v2", {"id": "1"}, "invalid_body", "/inputs", None),
    "V2 with two inputs": ("v2", {"inputs": v2_json(ROWS[0], (1, 8))["inputs"] * 2}, "invalid_tensor", "/inputs", None),
    "a V2 input without a shape": (
        "v2",
        {"inputs": [{"name": "features", "datatype": "FP32", "data": ROWS[0]}]},
        "invalid_tensor",
        "/inputs/0/shape",
        None,
    ),
    "a V2 input of another name": (
        "v2",
        {"inputs": [{**v2_json(ROWS[0], (1, 8))["inputs"][0], "name": "input0"}]},
        "invalid_tensor",
        "/inputs/0/name",
        None,
    ),
    "an INT32 V2 tensor": (
        "v2",
        v2_json(ROWS[0], (1, 8), datatype="INT32"),
        "invalid_tensor",
        "/inputs/0/datatype",
        None,
    ),
    "a V2 shape of 7 columns": ("v2", v2_json(ROWS[0][:7], (1, 7)), "invalid_tensor", "/inputs/0/shape", None),
    "V2 data short of its shape": ("v2", v2_json(ROWS[0], (2, 8)), "invalid_tensor", "/inputs/0/data", None),
    "V2 rows of 7 and 9 values": (
        "v2",
        v2_json([ROWS[0][:7], ROWS[1] + [1]], (2, 8)),
        "invalid_tensor",
        "/inputs/0/data",
        None,
    ),
    "an empty V2 tensor": ("v2", v2_json([], (0, 8)), "empty_batch", None, None),
    "a V2 input with neither data nor binary data": (
        "v2",
        {"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32"}]},
        "invalid_tensor",
        "/inputs/0/data",
        None,
    ),
    "a V2 input with neither data nor binary data, after which bytes come": (
        "v2 http",
        (b'{"inputs": [{"name": "features", "shape": [1, 8], "datatype": "FP32"}]}', None),
        "invalid_tensor",
        "/inputs/0/data",
        None,
    ),
    "a V2 tensor over the row limit": (
        "v2",
        v2_json(ROWS[0] * (MAX_ROWS + 1), (MAX_ROWS + 1, 8)),
        "too_many_rows",
        None,
        None,
    ),
    "null in V2 data": (
        "v2",
        v2_json([*ROWS[0], 6, 148, None, 35, 0, 33.6, 0.627, 50], (2, 8)),
        "invalid_value",
        "/inputs/0/data/10",
        1,
    ),
    "a boolean in nested V2 data": (
        "v2",
        v2_json([ROWS[0], [6, 148, 72, 35, 0, 33.6, False, 50]], (2, 8)),
        "invalid_value",
        "/inputs/0/data/1/6",
        1,
    ),
    "an unknown V2 output": (
        "v2",
        v2_json(ROWS[0], (1, 8), outputs=[{"name": "risk"}]),
        "invalid_tensor",
        "/outputs/0/name",
        None,
    ),
    "a V2 output asked for twice": (
        "v2",
        v2_json(ROWS[0], (1, 8), outputs=[{"name": "label"}, {"name": "label"}]),
        "invalid_tensor",
        "/outputs/1/name",
        None,
    ),
    "a V2 binary_data that is not a boolean": (
        "v2",
        v2_json(ROWS[0], (1, 8), outputs=[{"name": "label", "parameters": {"binary_data": 1}}]),
        "invalid_parameter",
        "/outputs/0/parameters/binary_data",
        None,
    ),
    "V2 parameters that are not an object": (
        "v2",
        v2_json(ROWS[0], (1, 8), parameters=[1]),
        "invalid_parameter",
        "/parameters",
        None,
    ),
    "the V2 classification extension": (
        "v2",
        v2_json(ROWS[0], (1, 8), outputs=[{"name": "label", "parameters": {"classification": 2}}]),
        "invalid_parameter",
        "/outputs/0/parameters/classification",
        None,
    ),
    "a V2 body that is not JSON": ("v2 http", (b'{"inputs": [', None), "invalid_json", None, None),
    "a V2 header length that is not a number": (
        "v2 http",
        v2_binary(BINARY_ROW, (1, 8), header_length="1e2"),
        "invalid_body",
        "Inference-Header-Content-Length",
        None,
    ),
    "V2 binary data of another size than its shape's": (
        "v2 http",
        v2_binary(BINARY_ROW, (2, 8)),
        "invalid_tensor",
        "/inputs/0/parameters/binary_data_size",
        None,
    ),
    "V2 binary data and data both": (
        "v2 http",
        v2_binary(BINARY_ROW, (1, 8), data=ROWS[0]),
        "invalid_tensor",
        "/inputs/0",
        None,
    ),
    "NaN in V2 binary data": (
        "v2 http",
        v2_binary(struct.pack("<16f", *ROWS[0], *ROWS[1][:5], math.nan, *ROWS[1][6:]), (2, 8)),
        "invalid_value",
        "/inputs/0/data/13",
        1,
    ),
    "an FP64 value beyond float32 in V2 binary data": (
        "v2 http",
        v2_binary(struct.pack("<8d", *ROWS[0][:2], 1e300, *ROWS[0][3:]), (1, 8), datatype="FP64"),
        "invalid_value",
        "/inputs/0/data/2",
        0,
    ),
}


@pytest.mark.parametrize("form, body, code, field, row", BAD.values(), ids=BAD.keys())
def test_a_bad_body_is_refused_with_its_code_and_a_json_pointer_to_what_was_wrong(
    contract, form, body, code, field, row
):
    with pytest.raises(InvalidRequest) as refused:
        read(contract, form, body)
    error = refused.value
    assert (error.code, error.field, error.row) == (code, field, row)
    assert error.status == ErrorCode(code).status
    assert 10 < len(error.message) < 400
    envelope = orjson.loads(orjson.dumps(error.envelope()))
    assert envelope == {"error": error.message, "code": code, "status": error.status, "field": field, "row": row}


JSON_VALUE_ERRORS = {
    what: case for what, case in BAD.items() if case[0] in ("json", "v2") and case[2] == "invalid_value"
}


@pytest.mark.parametrize("form, body, code, field, row", JSON_VALUE_ERRORS.values(), ids=JSON_VALUE_ERRORS.keys())
def test_the_field_of_a_refused_json_value_points_at_that_value_in_the_body_as_sent(
    contract, form, body, code, field, row
):
    with pytest.raises(InvalidRequest) as refused:
        read(contract, form, body)
    refused_value = resolve(body, refused.value.field)
    valid = (int, float)
    assert not isinstance(refused_value, valid) or isinstance(refused_value, bool) or abs(refused_value) > 3.5e38


def test_a_csv_error_gives_the_line_in_its_message_counting_the_header_and_blank_lines(contract):
    body = csv_text([ROWS[0]]) + "\n\n" + "6,148,72,35,0,33.6,x,50\n"
    with pytest.raises(InvalidRequest) as refused:
        read(contract, "csv", body)
    assert refused.value.field == "/rows/1/diabetes_pedigree" and refused.value.row == 1
    assert refused.value.message.startswith("line 5, /rows/1/diabetes_pedigree ")


def test_a_csv_line_of_empty_fields_is_an_empty_row_not_a_header(contract):
    """What a spreadsheet writes for an empty row: refused as a row of 0
    values, on its line, not as a header naming unknown features."""
    with pytest.raises(InvalidRequest) as refused:
        read(contract, "csv", ",,,,,,,\n" + csv_text(ROWS, header=None))
    assert refused.value.code == "wrong_value_count"
    assert refused.value.message.startswith("line 1 has 0 values (every field is empty), expected 8: times_pregnant")
    with pytest.raises(InvalidRequest) as refused:
        read(contract, "csv", csv_text(ROWS) + "\n,,,,,,,\n")
    assert refused.value.message.startswith("line 5 has 0 values") and refused.value.row == 2


def test_a_csv_line_with_one_value_measured_is_a_row(contract):
    matrix = read(
        contract, "csv", ",,,,,,,22\n" + csv_text([[None, None, None, None, None, 34.2, None, None]], header=None)
    )
    assert matrix.shape == (2, 8) and matrix[0, 7] == 22 and matrix[1, 5] == np.float32(34.2)
    assert np.isnan(matrix[0, :7]).all() and np.isnan(np.delete(matrix[1], 5)).all()


def test_a_csv_body_over_the_row_limit_is_read_no_further(contract):
    def endless_rows():
        while True:
            yield "1,106,70,28,135,34.2,0.142,22\n"

    with pytest.raises(InvalidRequest) as refused:
        contract.rows_from_csv(endless_rows())
    assert refused.value.code == "too_many_rows" and refused.value.status == 413


# ---- explanations: a row limit of their own --------------------------------------------------
EXPLAINED = 3
TOO_MANY_TO_EXPLAIN = {
    "instances": ("json", {"instances": [ROWS[0]] * (EXPLAINED + 1)}, "the batch has 4 rows"),
    "a list of records": ("json", records(ROWS[:1]) * (EXPLAINED + 1), "the batch has 4 rows"),
    "CSV rows": ("csv", csv_text([ROWS[0]] * (EXPLAINED + 1)), "the CSV has more than 3 rows"),
}


@pytest.mark.parametrize("form, body, what", TOO_MANY_TO_EXPLAIN.values(), ids=TOO_MANY_TO_EXPLAIN.keys())
def test_a_batch_over_the_explanations_limit_is_refused_naming_the_limit_and_what_to_do(contract, form, body, what):
    with pytest.raises(InvalidRequest) as refused:
        read(contract.explaining(EXPLAINED), form, body)
    assert refused.value.envelope() == {
        "error": f"{what}, at most 3 are explained per request: send fewer rows, or drop explain",
        "code": "too_many_rows",
        "status": 413,
        "field": None,
        "row": None,
    }
    # Without explanations, the batch limit alone holds.
    assert read(contract, form, body).shape == (EXPLAINED + 1, 8)


def test_csv_rows_over_the_explanations_limit_are_read_no_further(contract):
    def endless_rows():
        while True:
            yield "1,106,70,28,135,34.2,0.142,22\n"

    with pytest.raises(InvalidRequest) as refused:
        contract.explaining(EXPLAINED).rows_from_csv(endless_rows())
    assert (refused.value.code, refused.value.status) == ("too_many_rows", 413)
    assert "at most 3 are explained per request" in refused.value.message


def test_a_batch_within_the_explanations_limit_reads_as_it_does_without_them(contract):
    body = {"instances": [ROWS[0], ROWS[1], ROWS[0]]}
    assert np.array_equal(read(contract.explaining(EXPLAINED), "json", body), read(contract, "json", body))


def test_the_explanations_limit_is_never_above_the_batch_limit(contract):
    explaining = contract.explaining(MAX_ROWS * 10)
    assert explaining.max_rows == MAX_ROWS and explaining.explains
    with pytest.raises(InvalidRequest) as refused:
        read(explaining, "json", {"instances": [ROWS[0]] * (MAX_ROWS + 1)})
    assert refused.value.message == (
        f"the batch has {MAX_ROWS + 1} rows, at most {MAX_ROWS} are explained per request: "
        "send fewer rows, or drop explain"
    )
    assert not contract.explains and contract.max_rows == MAX_ROWS


def test_a_json_pointer_escapes_tilde_and_slash():
    assert pointer("instances", 0, "a/b~c") == "/instances/0/a~1b~0c"
    assert pointer() == ""


# ---- a whole batch is checked at once, exactly as value by value ---------------------------
def both_ways(contract, values: Values):
    """What `matrix` and `matrix_value_by_value` make of the same values: a
    matrix, or the error's envelope."""
    answers = []
    for check in (contract.matrix, contract.matrix_value_by_value):
        try:
            answers.append(check(values))
        except InvalidRequest as error:
            answers.append(error.envelope())
    return answers


def assert_the_same(fast, exact):
    if isinstance(exact, dict):
        assert fast == exact
    else:
        assert isinstance(fast, np.ndarray) and fast.dtype == exact.dtype == np.float32
        assert np.array_equal(fast, exact, equal_nan=True)


def json_values(flat, missing="null"):
    return Values(flat, len(flat) // len(NAMES), lambda row, column: pointer(row, column), missing=missing)


def text_values(flat, missing="an empty field"):
    return Values(flat, len(flat) // len(NAMES), lambda row, column: pointer(row, column), texts=True, missing=missing)


JSON_VALUE = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([None, True, False, "1", "", 3.4028235e38, 3.4028236e38, -3.4028235e38, 1e39, [], {}]),
)
# Texts that are numbers, nearly numbers, or made to look like them.
NUMBER_TEXT = st.text(alphabet="0123456789+-.eE \t,_n\u0662\uff12x\n", max_size=8) | st.sampled_from(
    ["1e38", "3.4028235e38", "3.5e38", "-3.5e38", "1e400", "nan", "inf", ".5", "5.", "+.5e-3", "1e", "  ", ""]
)


def batches(value):
    """Batches of rows of `value`s, of each size from one row to past FEW_ROWS
    as likely: a few rows are read in plain Python, more with NumPy, and both
    ways are drawn."""
    rows = st.lists(value, min_size=len(NAMES), max_size=len(NAMES))
    return st.integers(min_value=1, max_value=FEW_ROWS + 2).flatmap(
        lambda count: st.lists(rows, min_size=count, max_size=count)
    )


@settings(max_examples=300, deadline=None)
@given(
    rows=batches(JSON_VALUE),
    nulls=st.booleans(),
)
@example(rows=[[math.nan, 1e39, 1, 1, 1, 1, 1, 1]], nulls=True)
def test_json_values_checked_at_once_give_what_they_give_one_by_one(contract, rows, nulls):
    flat = [value for row in rows for value in row]
    assert_the_same(*both_ways(contract, json_values(flat, missing="null" if nulls else None)))


@settings(max_examples=300, deadline=None)
@given(
    rows=batches(NUMBER_TEXT),
    blanks=st.booleans(),
)
def test_texts_checked_at_once_give_what_they_give_one_by_one(contract, rows, blanks):
    flat = [value for row in rows for value in row]
    assert_the_same(*both_ways(contract, text_values(flat, missing="an empty field" if blanks else None)))


@settings(max_examples=200, deadline=None)
@given(
    numbers=st.lists(st.floats(width=64, allow_nan=True, allow_infinity=True), min_size=8, max_size=32).filter(
        lambda numbers: len(numbers) % 8 == 0
    ),
    datatype=st.sampled_from(["<f4", "<f8"]),
)
def test_binary_numbers_checked_at_once_give_what_they_give_one_by_one(contract, numbers, datatype):
    with np.errstate(over="ignore"):
        tensor = np.array(numbers, dtype=np.float64).astype(datatype)
    values = Values(tensor, len(numbers) // 8, lambda row, column: pointer(row * 8 + column))
    assert_the_same(*both_ways(contract, values))


LARGE = 10_000


@pytest.mark.parametrize("where", [None, 0, LARGE * 8 - 1], ids=["all good", "first value bad", "last value bad"])
@pytest.mark.parametrize("bad", ["a string", "a boolean", "infinity", "beyond float32"])
def test_a_batch_of_ten_thousand_rows_is_checked_at_once_as_value_by_value(contract, where, bad):
    large = Contract(contract.features, contract.version, contract.threshold, max_rows=LARGE)
    rng = np.random.default_rng(12)
    numbers = rng.uniform(0, 200, size=LARGE * 8).round(3)
    json_flat, text_flat = numbers.tolist(), [str(number) for number in numbers.tolist()]
    tensor = numbers.astype("<f8")
    if where is not None:
        json_flat[where] = {"a string": "7", "a boolean": True, "infinity": math.inf, "beyond float32": 1e39}[bad]
        text_flat[where] = {"a string": "seven", "a boolean": "true", "infinity": "1e999", "beyond float32": "1e39"}[
            bad
        ]
        tensor[where] = {"a string": math.nan, "a boolean": math.nan, "infinity": math.inf, "beyond float32": 1e39}[bad]
    for values in (
        json_values(json_flat),
        text_values(text_flat),
        Values(tensor, LARGE, lambda row, column: pointer(row * 8 + column)),
    ):
        fast, exact = both_ways(large, values)
        assert_the_same(fast, exact)
        if where is None:
            assert np.array_equal(fast, numbers.reshape(LARGE, 8).astype(np.float32))
        else:
            assert fast["field"] == f"/{where // 8}/{where % 8}" or fast["field"] == f"/{where}"


# ---- instances read with their text: its numbers only need no look at each value's type -------
def read_with_and_without_text(contract, text: bytes) -> list:
    """What /predict makes of a JSON body, given its text with what it says (as
    the route reads it) and given only what it says (each value's type looked
    at): a matrix, or the error's envelope, each way."""
    answers = []
    for with_text in (True, False):
        try:
            answers.append(contract.rows_from_json(parse_json(text), text if with_text else None))
        except InvalidRequest as error:
            answers.append(error.envelope())
    return answers


def instances_text(rows, style: str) -> bytes:
    """`{"instances": rows}` written compact, or with blanks and line breaks between its parts."""
    if style == "compact":
        return json.dumps({"instances": rows}, separators=(",", ":")).encode()
    return json.dumps({"instances": rows}, indent=2 if style == "indented" else None).replace(",", " ,\t").encode()


# Each text, and whether it shows that its instances hold numbers only (None: it is not JSON).
TEXTS = {
    "numbers only": (b'{"instances":[[1,-2.5e3,3E-2,4,0.5,-0,7e+1,8],[1,2,3,4,5,6,7,8]]}', True),
    "numbers with blanks": (b' {\n "instances" : [ [1, -2.5e3, 3E-2 ,4,5,6,7,0]\t]\r\n} ', True),
    "a number beyond float32": (b'{"instances":[[1,2,3,4,5,6,7,1e39]]}', True),
    "a null": (b'{"instances":[[null,2,3,4,5,6,7,8]]}', False),
    "true": (b'{"instances":[[true,2,3,4,5,6,7,8]]}', False),
    "false": (b'{"instances":[[1,2,3,4,5,6,7,false]]}', False),
    "a number in a string": (b'{"instances":[[1,"2",3,4,5,6,7,8]]}', False),
    "an empty string": (b'{"instances":[[1,2,3,4,5,6,7,""]]}', False),
    "a list in a row": (b'{"instances":[[1,[2],3,4,5,6,7,8]]}', False),
    "an empty list in a row": (b'{"instances":[[1,2,3,4,5,6,7,[]]]}', False),
    "an object in a row": (b'{"instances":[[1,2,3,4,5,6,7,{}]]}', False),
    "a string in the key's escape": (b'{"\\u0069nstances":[[1,"2",3,4,5,6,7,8]]}', False),
    "the key twice": (b'{"instances":[["1",2,3,4,5,6,7,8]],"instances":[[1,2,3,4,5,6,7,8]]}', False),
    "a string that hides a bracket": (b'{"instances":[[1,2,3,4,5,6,7,"["]]}', False),
    "not JSON: a number as JavaScript writes it": (b'{"instances":[[1,2,3,4,5,6,7,.5]]}', None),
    "not JSON: NaN": (b'{"instances":[[1,2,3,4,5,6,7,NaN]]}', None),
    "not JSON: a leading zero": (b'{"instances":[[1,2,3,4,5,6,7,01]]}', None),
    "not JSON: a plus sign": (b'{"instances":[[1,2,3,4,5,6,7,+1]]}', None),
    "not JSON: a point and no decimals": (b'{"instances":[[1,2,3,4,5,6,7,1.]]}', None),
}


@pytest.mark.parametrize("text, numbers_only", TEXTS.values(), ids=TEXTS.keys())
def test_instances_read_with_their_text_give_what_they_give_without_it(contract, text, numbers_only):
    with_text, without_text = read_with_and_without_text(contract, text)
    assert_the_same(with_text, without_text)
    if numbers_only is None:
        assert with_text["code"] == "invalid_json"
    else:
        assert instances_text_holds_numbers_only(text, len(parse_json(text)["instances"])) == numbers_only


NUMBER = st.integers(min_value=-(10**30), max_value=10**30) | st.floats(allow_nan=False, allow_infinity=False)
INTRUDER = st.sampled_from([None, True, False, "1", "", "[", "e", [], [1], {}, {"a": 1}, 3.4028236e38, 1e39])


@settings(max_examples=150, deadline=None)
@given(
    rows=batches(NUMBER),
    intruders=st.lists(st.tuples(INTRUDER, st.integers(min_value=0)), max_size=2),
    style=st.sampled_from(["compact", "spaced", "indented"]),
)
def test_instances_of_numbers_and_anything_else_give_with_their_text_what_they_give_without(
    contract, rows, intruders, style
):
    for intruder, place in intruders:
        place %= len(rows) * len(NAMES)
        rows[place // len(NAMES)][place % len(NAMES)] = intruder
    text = instances_text(rows, style)
    assert_the_same(*read_with_and_without_text(contract, text))
    if not intruders:
        assert instances_text_holds_numbers_only(text, len(rows))


@pytest.mark.parametrize("where", [0, LARGE * 8 - 1], ids=["first value", "last value"])
@pytest.mark.parametrize("bad", [None, True, "7", [7], {"a": 7}, 1e39], ids=repr)
def test_ten_thousand_instances_read_with_their_text_name_the_value_they_would_without(contract, where, bad):
    large = Contract(contract.features, contract.version, contract.threshold, max_rows=LARGE)
    rows = np.random.default_rng(12).uniform(0, 200, size=(LARGE, 8)).round(3).tolist()
    rows[where // 8][where % 8] = bad
    with_text, without_text = read_with_and_without_text(large, orjson.dumps({"instances": rows}))
    assert_the_same(with_text, without_text)
    if bad is None:
        assert np.isnan(with_text[where // 8, where % 8])
    else:
        assert with_text["field"] == f"/instances/{where // 8}/{where % 8}"


# ---- the codes --------------------------------------------------------------------------------
def test_the_error_codes_are_the_strings_clients_have_always_seen():
    # Clients match on these: a code may be added, never renamed.
    assert set(ErrorCode) >= {
        "invalid_json", "invalid_csv", "missing_field", "invalid_type", "invalid_body", "missing_feature",
        "unknown_feature", "wrong_value_count", "invalid_value", "empty_batch", "invalid_tensor",
        "invalid_parameter", "not_found", "model_not_found", "method_not_allowed", "request_entity_too_large",
        "request_timeout", "too_many_rows", "unsupported_media_type", "unauthorized", "not_implemented",
        "untrusted_host", "internal_error", "bad_request", "uri_too_long", "request_header_fields_too_large",
    }  # fmt: skip


def readme_error_table() -> dict:
    """The README's table of errors: each code and its status."""
    table = {}
    for status, codes in re.findall(r"^\| (\d{3}) \| (`[^|]+`) \|", (PROJECT / "README.md").read_text(), re.MULTILINE):
        for code in re.findall(r"`([a-z_]+)`", codes):
            table[code] = int(status)
    return table


def test_every_error_code_is_in_the_readme_with_its_status():
    assert readme_error_table() == {code.value: code.status for code in ErrorCode}


@pytest.mark.parametrize(
    "status, code",
    [
        (400, "bad_request"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (408, "request_timeout"),
        (413, "request_entity_too_large"),
        (414, "uri_too_long"),
        (415, "unsupported_media_type"),
        (417, "expectation_failed"),
        (431, "request_header_fields_too_large"),
        (500, "internal_error"),
        (501, "not_implemented"),
        (409, "bad_request"),
        (502, "bad_gateway"),
        (503, "service_unavailable"),
        (504, "gateway_timeout"),
        (507, "internal_error"),
    ],
)
def test_an_http_error_of_flask_gunicorn_or_the_edge_gets_the_code_of_its_status(status, code):
    assert ErrorCode.of_status(status) == code
    assert ErrorCode.of_status(status).status == status or status in (409, 507)


def test_an_error_code_that_is_not_a_member_is_refused():
    with pytest.raises(ValueError):
        InvalidRequest("the body is wrong", "wrong_body")


def test_a_body_declared_over_the_size_limit_is_refused_before_it_is_read():
    environ = {"wsgi.input": io.BytesIO(b"x" * 11), "CONTENT_LENGTH": "11"}
    with pytest.raises(InvalidRequest) as refused:
        read_body(environ, limit=10)
    assert (refused.value.code, refused.value.status) == ("request_entity_too_large", 413)
    assert environ["wsgi.input"].tell() == 0


def test_a_chunked_body_over_the_size_limit_is_refused_as_it_passes_it():
    with pytest.raises(InvalidRequest) as refused:
        read_body({"wsgi.input": io.BytesIO(b"x" * 200_000)}, limit=100_000)
    assert (refused.value.code, refused.value.status) == ("request_entity_too_large", 413)


@pytest.mark.parametrize("declared", [10, None], ids=["small body of known length", "chunked body"])
def test_a_body_that_stops_arriving_is_refused_at_its_time_limit(monkeypatch, declared):
    monkeypatch.setattr(request_body, "BODY_SECONDS", 0.2)
    server_side, client_side = socket.socketpair()
    # Past the time limit and the bound below: a read that kept no limit fails the test instead of hanging it.
    server_side.settimeout(10)
    with server_side, client_side, server_side.makefile("rb") as stream:
        client_side.sendall(b"12345")
        environ = {"wsgi.input": stream, "gunicorn.socket": server_side}
        if declared:
            environ["CONTENT_LENGTH"] = str(declared)
        started = time.monotonic()
        with pytest.raises(InvalidRequest) as refused:
            read_body(environ, limit=100)
        assert (refused.value.code, refused.value.status) == ("request_timeout", 408)
        assert 0.15 < time.monotonic() - started < 5
        assert server_side.gettimeout() is None


def test_a_body_past_its_time_limit_is_refused():
    with pytest.raises(InvalidRequest) as refused:
        LimitedBody({"wsgi.input": io.BytesIO(b"{}")}, limit=10, seconds=0).read()
    assert (refused.value.code, refused.value.status) == ("request_timeout", 408)

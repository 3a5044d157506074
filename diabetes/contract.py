"""The prediction contract: what every route accepts, declared once from the
model's metadata (feature names, order, meaning, units, training ranges).

Validation, the OpenAPI document and the Postman collection all derive from
it. Every body goes one way: a reader of its form (the article's
`{"data": ...}`, a record, a list of records, `{"instances": [...]}`, CSV
lines, a V2 tensor in JSON or in binary) checks its structure and lays its
values out in rows of the model's features (`Values`); `Contract.matrix` then
checks all the values at once and makes the float32 matrix the model reads,
with NaN for a missing value. Any problem is an `InvalidRequest` that says
what was wrong, what was expected, and where.

Where, `field`: a JSON Pointer (RFC 6901) to the offending part of the body
as it was sent.
- A value: `/data/1` (the article's 2nd value, in its list or in its
  comma-separated string alike), `/glucose` (a record), `/1/age` (the 2nd of a
  list of records), `/instances/0/1` (the 2nd value of an instance that is a
  list), `/instances/0/glucose` (an instance that is a record),
  `/inputs/0/data/3` (a V2 tensor's flat data; nested data as sent,
  `/inputs/0/data/0/3`; a binary tensor's values by their place in the flat
  data they stand for).
- A member that is missing, where it belongs: `/1/age`; any other part:
  `/instances/0`, `/inputs/0/shape`, `/outputs/0/parameters/binary_data`.
- CSV, which has no members, in a stated form: `/rows/N/<feature name>` and
  `/rows/N` (N the data row, from 0, the header not counted) and `/header`;
  the message gives the line.
- Outside the body: the query parameter (`explain`) or the header
  (`Inference-Header-Content-Length`) by its name, which never starts with `/`.
- null when the error concerns the body or the request as a whole (not JSON,
  no rows, too many rows, an unknown route).
`row` is the offending row of a batch (from 0; for CSV the N above), null for
a single record and on the article's route.

Missing values: in JSON a feature may be `null`, and in CSV a field may be
empty, to say "not measured"; XGBoost routes such a value down the branch it
learned for missing ones. A CSV line of empty fields only (`,,,,,,,`, what a
spreadsheet writes for an empty row) is an empty row, wherever it is: refused
as a row of 0 values, never read as a header nor as a patient with nothing
measured. A 0 in glucose, blood_pressure, skin_fold_thick,
serum_insuling or mass_index means "not measured" too, as in the training
data. The article's route keeps its original contract: 8 numbers; V2 tensors
hold numbers only.
"""

import csv
import itertools
import json
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import cached_property
from http import HTTPStatus

import numpy as np
import orjson

MODEL_NAME = "diabetes"
V2_INPUT_NAME = "features"
V2_INPUT_DATATYPES = ("FP32", "FP64")
V2_OUTPUTS = {"probability": "FP32", "label": "INT64"}
# Triton's binary tensor data extension (diabetes/open_inference.py)
V2_INFERENCE_HEADER_CONTENT_LENGTH = "Inference-Header-Content-Length"
V2_BINARY_DATA_SIZE = "binary_data_size"  # $request_input and $response_output parameter
V2_BINARY_DATA = "binary_data"  # $request_output parameter
V2_BINARY_DATA_OUTPUT = "binary_data_output"  # $inference_request parameter
V2_BYTE_ORDER = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "INT64": np.dtype("<i8")}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# A number written as text: ASCII digits only (Python's float() also takes
# "٢٢", "２２" and "1_000"), with an optional sign, decimals and exponent.
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_ASCII_BLANKS = " \t"
# Texts made of these characters only are numbers to float() exactly when they
# are to _NUMBER_TEXT (with blanks around), and read as the same number.
_NUMBER_CHARACTERS = re.compile(r"[0-9+\-.eE \t,]*", re.ASCII)
_TEXT_SEPARATOR = ","
_JSON_NUMBER_TYPES = frozenset({int, float})
_JSON_NUMBER_OR_NULL_TYPES = frozenset({int, float, type(None)})
# The characters that `{"instances": [[numbers], ...]}` is written with, but
# for its opening brace and its key (those of JSON numbers and lists, the colon,
# the closing brace, JSON's blanks); and what is left of the brace and key
# once they are taken away (see `_instances_text_holds_numbers_only`).
_NUMBER_ROWS_TEXT = b"0123456789+-.eE[],:} \t\n\r"
_NUMBER_ROWS_TEXT_LEAVES = b'{"instances"'.translate(None, _NUMBER_ROWS_TEXT)
# Up to this many values (a few rows), `Contract.matrix` reads them in plain
# Python rather than with NumPy.
FEW_VALUES = 64


class ErrorCode(StrEnum):
    """The `code` of every error answer, each in the README's table. Clients
    match on these strings: add codes, never rename one."""

    INVALID_JSON = "invalid_json"
    INVALID_CSV = "invalid_csv"
    MISSING_FIELD = "missing_field"
    INVALID_TYPE = "invalid_type"
    INVALID_BODY = "invalid_body"
    MISSING_FEATURE = "missing_feature"
    UNKNOWN_FEATURE = "unknown_feature"
    WRONG_VALUE_COUNT = "wrong_value_count"
    INVALID_VALUE = "invalid_value"
    EMPTY_BATCH = "empty_batch"
    INVALID_TENSOR = "invalid_tensor"
    INVALID_PARAMETER = "invalid_parameter"
    UNTRUSTED_HOST = "untrusted_host"
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_TIMEOUT = "request_timeout"
    REQUEST_ENTITY_TOO_LARGE = "request_entity_too_large"
    TOO_MANY_ROWS = "too_many_rows"
    URI_TOO_LONG = "uri_too_long"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    EXPECTATION_FAILED = "expectation_failed"
    REQUEST_HEADER_FIELDS_TOO_LARGE = "request_header_fields_too_large"
    INTERNAL_ERROR = "internal_error"
    NOT_IMPLEMENTED = "not_implemented"
    # Answered by the edge (diabetes/edge.py), never by the app.
    BAD_GATEWAY = "bad_gateway"
    SERVICE_UNAVAILABLE = "service_unavailable"
    GATEWAY_TIMEOUT = "gateway_timeout"

    @property
    def status(self) -> int:
        """The HTTP status this code is answered with."""
        return _STATUS_OF_CODE.get(self, HTTPStatus.BAD_REQUEST)

    @classmethod
    def of_status(cls, status: int) -> "ErrorCode":
        """The code of an HTTP error raised by Flask (404, 405, ...) or
        refused by gunicorn (400, 414, 431, ...), from its status."""
        fallback = cls.BAD_REQUEST if status < HTTPStatus.INTERNAL_SERVER_ERROR else cls.INTERNAL_ERROR
        return _CODE_OF_STATUS.get(status, fallback)


# Codes answered with a status other than 400.
_STATUS_OF_CODE = {
    ErrorCode.UNAUTHORIZED: HTTPStatus.UNAUTHORIZED,
    ErrorCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.MODEL_NOT_FOUND: HTTPStatus.NOT_FOUND,
    ErrorCode.METHOD_NOT_ALLOWED: HTTPStatus.METHOD_NOT_ALLOWED,
    ErrorCode.REQUEST_TIMEOUT: HTTPStatus.REQUEST_TIMEOUT,
    ErrorCode.REQUEST_ENTITY_TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.TOO_MANY_ROWS: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    ErrorCode.URI_TOO_LONG: HTTPStatus.REQUEST_URI_TOO_LONG,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    ErrorCode.EXPECTATION_FAILED: HTTPStatus.EXPECTATION_FAILED,
    ErrorCode.REQUEST_HEADER_FIELDS_TOO_LARGE: HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
    ErrorCode.INTERNAL_ERROR: HTTPStatus.INTERNAL_SERVER_ERROR,
    ErrorCode.NOT_IMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    ErrorCode.BAD_GATEWAY: HTTPStatus.BAD_GATEWAY,
    ErrorCode.SERVICE_UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    ErrorCode.GATEWAY_TIMEOUT: HTTPStatus.GATEWAY_TIMEOUT,
}
# The code of each status that Flask or gunicorn may answer by itself.
_CODE_OF_STATUS = {
    HTTPStatus.BAD_REQUEST: ErrorCode.BAD_REQUEST,
    HTTPStatus.NOT_FOUND: ErrorCode.NOT_FOUND,
    **{
        status: code
        for code, status in _STATUS_OF_CODE.items()
        if code not in (ErrorCode.MODEL_NOT_FOUND, ErrorCode.TOO_MANY_ROWS)
    },
}


class InvalidRequest(Exception):
    """A request the service cannot answer; becomes a JSON error response.
    `status` defaults to the code's."""

    def __init__(self, message: str, code: ErrorCode, status: int | None = None, field=None, row=None):
        super().__init__(message)
        self.message, self.code, self.field, self.row = message, ErrorCode(code), field, row
        self.status = int(self.code.status if status is None else status)

    def envelope(self) -> dict:
        return {"error": self.message, "code": self.code, "status": self.status, "field": self.field, "row": self.row}


def pointer(*tokens) -> str:
    """The JSON Pointer (RFC 6901) of a path of member names and indexes."""
    return "".join("/" + str(token).replace("~", "~0").replace("/", "~1") for token in tokens)


def parse_json(body: bytes):
    """A JSON body (or the JSON part of a V2 binary one), or `invalid_json`."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}", ErrorCode.INVALID_JSON) from None


def parse_number_text(text: str) -> float | None:
    """The number an ASCII decimal text says (surrounding spaces allowed), or
    None for anything else."""
    text = text.strip(_ASCII_BLANKS)
    return float(text) if _NUMBER_TEXT.fullmatch(text) else None


@dataclass(slots=True)  # not frozen: a frozen dataclass is slower to make, once per request
class Values:
    """A body's values laid out in rows of the model's features, flat and
    row-major, before any of them is checked."""

    flat: list | np.ndarray  # JSON values; texts (CSV fields, the article's string); or a binary tensor's numbers
    row_count: int
    place: Callable[[int, int], str]  # the JSON Pointer of the value at (row, column)
    texts: bool = False
    missing: str | None = None  # how this form says "not measured" ("null", "an empty field"); None: it cannot
    batch: bool = True  # errors give the row
    columns: tuple | None = None  # CSV: the feature of each column as sent, when its header orders them otherwise
    lines: list | None = None  # CSV: the line of each row, for the messages
    note: str = ""  # said after a value refused
    numbers_only: bool = False  # the body's text shows that every value is a JSON number: no type to look at


@dataclass(frozen=True)
class Contract:
    features: tuple  # dicts: name, meaning, unit, training_min, training_max, zero_means_missing
    version: str
    threshold: float
    max_rows: int
    explains: bool = False  # the rows are to be explained too: max_rows is the explanations' limit (`explaining`)

    @classmethod
    def from_metadata(cls, metadata, max_rows: int) -> "Contract":
        """The contract of a model's diabetes.model_metadata.ModelMetadata."""
        return cls(tuple(metadata.as_json()["features"]), metadata.version, metadata.threshold, max_rows)

    def explaining(self, max_rows: int) -> "Contract":
        """The contract of a request that asks for explanations: the same,
        with at most `max_rows` rows (or this contract's limit, when lower),
        refused as any batch over its limit is, with a message that says so.
        TreeSHAP costs far more per row than a prediction (about 20 times with
        the default model, several hundred with deep trees), and it runs on
        the worker's one event loop."""
        return replace(self, max_rows=min(self.max_rows, max_rows), explains=True)

    @cached_property
    def names(self) -> tuple:
        return tuple(feature["name"] for feature in self.features)

    # ---- every form ends here ---------------------------------------------------
    def matrix(self, values: Values) -> np.ndarray:
        """The float32 matrix of `values`, in the model's order: all of them
        converted and checked at once by numpy. When that finds anything wrong
        (or cannot tell), `matrix_value_by_value` goes through them to name the
        first value that is."""
        numbers = _few_numbers(values) if len(values.flat) <= FEW_VALUES else _numbers_at_c_speed(values)
        if numbers is None:
            return self.matrix_value_by_value(values)
        return self._in_model_order(numbers, values)

    def matrix_value_by_value(self, values: Values) -> np.ndarray:
        """The same matrix as `matrix` gives, each value read and checked in
        Python: the reference of what is accepted."""
        flat = values.flat.tolist() if isinstance(values.flat, np.ndarray) else values.flat
        numbers = np.empty(len(flat), dtype=np.float64)
        for index, value in enumerate(flat):
            number = _number_of(value, values)
            if number is None:
                raise self._invalid_value(values, index, value)
            numbers[index] = number
        return self._in_model_order(numbers, values)

    def _in_model_order(self, numbers, values) -> np.ndarray:
        matrix = np.array(numbers, dtype=np.float32).reshape(values.row_count, len(self.names))
        if values.columns is not None:
            matrix = np.ascontiguousarray(matrix[:, np.argsort(values.columns)])
        return matrix

    def _invalid_value(self, values, index, value) -> InvalidRequest:
        row, column = divmod(index, len(self.names))
        feature = self.features[column if values.columns is None else values.columns[column]]
        where = values.place(row, column)
        named = where if where.endswith("/" + feature["name"]) else f"{where} ({feature['name']})"
        if values.lines is not None:
            named = f"line {values.lines[row]}, {named}"
        expected = f"a finite number within float32's range ({feature['unit']})"
        if values.missing:
            expected += f", or {values.missing} for not measured"
        return InvalidRequest(
            f"{named} is {_shown(value)}: expected {expected}{values.note}",
            ErrorCode.INVALID_VALUE,
            field=where,
            row=row if values.batch else None,
        )

    def _check_row_count(self, count):
        if count == 0:
            raise InvalidRequest("the batch is empty: send at least one row", ErrorCode.EMPTY_BATCH)
        if count > self.max_rows:
            raise self._too_many_rows(f"the batch has {count} rows")

    def _too_many_rows(self, what: str) -> InvalidRequest:
        if self.explains:
            advice = f"at most {self.max_rows} are explained per request: send fewer rows, or drop explain"
        else:
            advice = f"at most {self.max_rows} are accepted per request: split it"
        return InvalidRequest(f"{what}, {advice}", ErrorCode.TOO_MANY_ROWS)

    # ---- the article's route --------------------------------------------------
    def rows_from_article(self, body) -> np.ndarray:
        """`{"data": "1,106,70,28,135,34.2,0.142,22"}` or the same 8 numbers as a list."""
        if not isinstance(body, dict) or "data" not in body:
            raise InvalidRequest(
                'expected a JSON object with a "data" member, e.g. {"data": "1,106,70,28,135,34.2,0.142,22"}',
                ErrorCode.MISSING_FIELD,
                field="/data",
            )
        data, width = body["data"], len(self.names)
        if not isinstance(data, (str, list)):
            raise InvalidRequest(
                f'"data" must be a string of {width} comma-separated numbers or a list of {width} numbers',
                ErrorCode.INVALID_TYPE,
                field="/data",
            )
        values = data.split(",") if isinstance(data, str) else data
        if len(values) != width:
            raise InvalidRequest(
                f'"data" has {len(values)} values, expected {width}: ' + ", ".join(self.names),
                ErrorCode.WRONG_VALUE_COUNT,
                field="/data",
            )
        return self.matrix(
            Values(values, 1, lambda row, column: pointer("data", column), texts=isinstance(data, str), batch=False)
        )

    # ---- named features: one record, a list of records, or instances ---------
    def rows_from_json(self, body, text: bytes | None = None) -> np.ndarray:
        """An object keyed by feature name, a list of such objects, or
        `{"instances": [[8 values], ...]}` (rows of values in the model's order,
        or records). `text`: the JSON text that `body` was parsed from, when
        the caller has it; instances whose text holds numbers only are then
        read without a look at each value's type."""
        if isinstance(body, dict) and body.keys() == {"instances"}:
            instances = body["instances"]
            if not isinstance(instances, list):
                raise InvalidRequest('"instances" must be a list of rows', ErrorCode.INVALID_BODY, field="/instances")
            self._check_row_count(len(instances))
            if set(map(type, instances)) == {list}:
                numbers_only = _instances_text_holds_numbers_only(text, len(instances))
                return self.matrix(self._values_of_lists(instances, "instances", numbers_only))
            return self.matrix(self._values_of_records(instances, lambda index: ("instances", index)))
        if isinstance(body, dict):
            return self.matrix(self._values_of_records([body], lambda index: (), batch=False))
        if isinstance(body, list):
            self._check_row_count(len(body))
            return self.matrix(self._values_of_records(body, lambda index: (index,)))
        raise InvalidRequest(
            "expected a record (an object keyed by feature name), a list of records, or "
            '{"instances": [[8 numbers], ...]}',
            ErrorCode.INVALID_BODY,
        )

    def _check_row_widths(self, rows, named, field):
        """Every row holds one value per feature. `named(index)` and
        `field(index)` say which row is wrong, in the message and as its field."""
        width = len(self.names)
        if set(map(len, rows)) != {width}:
            index = next(index for index, row in enumerate(rows) if len(row) != width)
            raise InvalidRequest(
                f"{named(index)} has {len(rows[index])} values, expected {width}: {', '.join(self.names)}",
                ErrorCode.WRONG_VALUE_COUNT,
                field=field(index),
                row=index,
            )

    def _values_of_lists(self, rows, member, numbers_only=False) -> Values:
        self._check_row_widths(
            rows, named=lambda index: pointer(member, index), field=lambda index: pointer(member, index)
        )
        return Values(
            list(itertools.chain.from_iterable(rows)),
            len(rows),
            lambda row, column: pointer(member, row, column),
            missing="null",
            numbers_only=numbers_only,
        )

    def _values_of_records(self, records, path_of, batch=True) -> Values:
        """`path_of(index)`: the path of the record at `index` in the body."""
        names = self.names
        if set(map(type, records)) != {dict} or set(map(len, records)) != {len(names)}:
            self._raise_for_records(records, path_of, batch)
        try:
            # A record of as many members as there are features, all of them found, holds nothing else.
            flat = list(itertools.chain.from_iterable(map(operator.itemgetter(*names), records)))
        except KeyError:
            self._raise_for_records(records, path_of, batch)
        return Values(
            flat,
            len(records),
            lambda row, column: pointer(*path_of(row), names[column]),
            missing="null",
            batch=batch,
        )

    def _raise_for_records(self, records, path_of, batch):
        """Name the first record that is not an object of the model's features."""
        names = self.names
        for index, record in enumerate(records):
            where, row = pointer(*path_of(index)), index if batch else None
            if type(record) is not dict:
                raise InvalidRequest(
                    f"{where} must be an object keyed by feature name ({', '.join(names)})",
                    ErrorCode.INVALID_BODY,
                    field=where,
                    row=row,
                )
            missing = [name for name in names if name not in record]
            unknown = [name for name in record if name not in names]
            if missing or unknown:
                wrong = (
                    f"missing feature(s) {', '.join(missing)}; every record needs all of {', '.join(names)} "
                    "(null for a value not measured)"
                    if missing
                    else f"unknown feature(s) {', '.join(name[:40] for name in unknown)}; "
                    f"expected exactly {', '.join(names)}"
                )
                raise InvalidRequest(
                    f"{where or 'the record'}: {wrong}",
                    ErrorCode.MISSING_FEATURE if missing else ErrorCode.UNKNOWN_FEATURE,
                    field=pointer(*path_of(index), (missing or unknown)[0]),
                    row=row,
                )

    # ---- CSV ------------------------------------------------------------------
    def rows_from_csv(self, lines) -> np.ndarray:
        """Rows of 8 comma-separated values, from an iterable of text lines
        read as they arrive; an optional header naming the features (in any
        order); an empty field means not measured. Quoting is strict. The row
        limit stops the reading as soon as it is passed."""
        rows, line_numbers = self._csv_rows(lines)
        columns = None
        if rows and self._is_header(rows[0]):
            columns = self._csv_header_columns(rows.pop(0))
            line_numbers.pop(0)
        if len(rows) > self.max_rows:
            raise self._too_many_rows(f"the CSV has more than {self.max_rows} rows")
        self._check_row_count(len(rows))
        self._check_row_widths(
            rows, named=lambda index: f"line {line_numbers[index]}", field=lambda index: pointer("rows", index)
        )
        sent_names = self.names if columns is None else tuple(self.names[feature] for feature in columns)
        matrix = self.matrix(
            Values(
                list(itertools.chain.from_iterable(rows)),
                len(rows),
                lambda row, column: pointer("rows", row, sent_names[column]),
                texts=True,
                missing="an empty field",
                columns=columns,
                lines=line_numbers,
            )
        )
        # Only an empty field reads as NaN: a row of NaN is a line of empty fields.
        empty = np.isnan(matrix).all(axis=1)
        if empty.any():
            index = int(empty.argmax())
            raise InvalidRequest(
                f"line {line_numbers[index]} has 0 values (every field is empty), expected {len(self.names)}: "
                f"{', '.join(self.names)}",
                ErrorCode.WRONG_VALUE_COUNT,
                field=pointer("rows", index),
                row=index,
            )
        return matrix

    def _csv_rows(self, lines) -> tuple[list, list]:
        """The rows of fields and the line each ends on, blank lines left out,
        read no further than one row past the limit (and a header)."""
        reader = csv.reader(lines, strict=True)
        rows, line_numbers = [], []
        try:
            for row in reader:
                if row:
                    rows.append(row)
                    line_numbers.append(reader.line_num)
                    if len(rows) > self.max_rows + 1:
                        break
        except csv.Error as error:
            raise InvalidRequest(f"the body is not valid CSV: {error}", ErrorCode.INVALID_CSV) from None
        except UnicodeDecodeError as error:
            raise InvalidRequest(
                f"the body is not UTF-8 text: byte {error.start} cannot be decoded", ErrorCode.INVALID_CSV
            ) from None
        return rows, line_numbers

    def _is_header(self, line) -> bool:
        """A first line that names a feature, or holds text but no number at
        all (a line of empty fields is an empty row, not a header)."""
        fields = [value.strip(_ASCII_BLANKS) for value in line]
        if any(field in self.names for field in fields):
            return True
        return any(fields) and all(parse_number_text(f) is None for f in fields)

    def _csv_header_columns(self, header) -> tuple | None:
        """The feature of each column, None when they are in the model's order."""
        header = [name.strip(_ASCII_BLANKS) for name in header]
        if sorted(header) != sorted(self.names):
            missing = [name for name in self.names if name not in header]
            unknown = [name[:40] for name in header if name not in self.names]
            raise InvalidRequest(
                f"the CSV header (line 1) must name each feature once ({', '.join(self.names)}); "
                f"missing: {', '.join(missing) or 'none'}, unknown: {', '.join(unknown) or 'none'}",
                ErrorCode.UNKNOWN_FEATURE if unknown else ErrorCode.MISSING_FEATURE,
                field="/header",
            )
        columns = tuple(self.names.index(name) for name in header)
        return None if columns == tuple(range(len(columns))) else columns

    # ---- Open Inference Protocol V2 --------------------------------------------
    def rows_from_v2(self, body, tensor_bytes: memoryview | None = None) -> tuple[np.ndarray, list]:
        """The rows of a V2 inference request ($inference_request), and the
        outputs it asks for (`V2Output`s). `tensor_bytes`: the bytes after the
        JSON request when it came with Triton's binary tensor data extension
        (`diabetes.open_inference`), None when the whole body was JSON."""
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise InvalidRequest(
                'expected an inference request: {"inputs": [{"name": "features", "shape": '
                f'[N, {len(self.names)}], "datatype": "FP32", "data": [...]}}]}}',
                ErrorCode.INVALID_BODY,
                field="/inputs",
            )
        binary_output = _v2_boolean(_v2_parameters(body, ()), V2_BINARY_DATA_OUTPUT, ()) or False
        tensor = self._v2_input_tensor(body["inputs"])
        input_parameters = _v2_parameters(tensor, ("inputs", 0))
        if V2_BINARY_DATA_SIZE in input_parameters:
            if "data" in tensor:
                raise InvalidRequest(
                    f'the input tensor has both "data" and a {V2_BINARY_DATA_SIZE} parameter: '
                    "send its values one way only",
                    ErrorCode.INVALID_TENSOR,
                    field="/inputs/0",
                )
            values = self._v2_binary_values(tensor, input_parameters[V2_BINARY_DATA_SIZE], tensor_bytes)
        else:
            _check_no_tensor_bytes_left(tensor_bytes, used=0)
            values = self._v2_json_values(tensor)
        return self.matrix(values), self._v2_outputs(body.get("outputs"), binary_output)

    def _v2_input_tensor(self, inputs) -> dict:
        """The one input tensor, its name, datatype and shape checked, and its rows counted."""
        if len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise InvalidRequest(
                f"expected exactly one input tensor, {V2_INPUT_NAME!r}, got {len(inputs)}",
                ErrorCode.INVALID_TENSOR,
                field="/inputs",
            )
        tensor = inputs[0]
        for member in ("name", "shape", "datatype"):
            if member not in tensor:
                raise InvalidRequest(
                    f'the input tensor has no "{member}"', ErrorCode.INVALID_TENSOR, field=pointer("inputs", 0, member)
                )
        if tensor["name"] != V2_INPUT_NAME:
            raise InvalidRequest(
                f"the input tensor is named {str(tensor['name'])[:40]!r}, this model's input is {V2_INPUT_NAME!r}",
                ErrorCode.INVALID_TENSOR,
                field="/inputs/0/name",
            )
        if tensor["datatype"] not in V2_INPUT_DATATYPES:
            raise InvalidRequest(
                f"datatype {str(tensor['datatype'])[:20]!r} is not supported, expected one of "
                f"{', '.join(V2_INPUT_DATATYPES)}",
                ErrorCode.INVALID_TENSOR,
                field="/inputs/0/datatype",
            )
        shape = tensor["shape"]
        if not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(type(d) is int for d in shape)
            and shape[1] == len(self.names)
            and shape[0] >= 0
        ):
            raise InvalidRequest(
                f"shape {str(shape)[:40]} is not supported, expected [N, {len(self.names)}]: "
                f"N rows of {', '.join(self.names)}",
                ErrorCode.INVALID_TENSOR,
                field="/inputs/0/shape",
            )
        self._check_row_count(shape[0])
        return tensor

    def _v2_json_values(self, tensor) -> Values:
        """The values of `data`: flat (row-major), as the protocol sends them, or nested in rows."""
        if "data" not in tensor:
            raise InvalidRequest(
                f'the input tensor has no "data", nor a {V2_BINARY_DATA_SIZE} parameter for values sent '
                "as binary data after the JSON request: send its values one of these ways",
                ErrorCode.INVALID_TENSOR,
                field="/inputs/0/data",
            )
        (row_count, width), data = tensor["shape"], tensor["data"]
        if not isinstance(data, list):
            raise InvalidRequest("the tensor's data must be a list", ErrorCode.INVALID_TENSOR, field="/inputs/0/data")
        # Data nested in rows starts with a list; flat data (the protocol's own
        # form) is then not scanned twice for its types, `matrix` does it once.
        if data and type(data[0]) is list and set(map(type, data)) == {list}:
            if len(data) != row_count or set(map(len, data)) != {width}:
                raise InvalidRequest(
                    f"the tensor's data holds {len(data)} lists, its shape [{row_count}, {width}] needs "
                    f"{row_count} rows of {width} values (or {row_count * width} values, flat)",
                    ErrorCode.INVALID_TENSOR,
                    field="/inputs/0/data",
                )
            flat, place = list(itertools.chain.from_iterable(data)), lambda row, column: pointer(*_DATA, row, column)
        else:
            flat, place = data, lambda row, column: pointer(*_DATA, row * width + column)
        if len(flat) != row_count * width:
            raise InvalidRequest(
                f"the tensor's data has {len(flat)} values, its shape [{row_count}, {width}] needs {row_count * width}",
                ErrorCode.INVALID_TENSOR,
                field="/inputs/0/data",
            )
        return Values(flat, row_count, place, note=_V2_NUMBERS_ONLY)

    def _v2_binary_values(self, tensor, size, tensor_bytes) -> Values:
        """The values sent as raw little-endian bytes after the JSON request."""
        field = pointer("inputs", 0, "parameters", V2_BINARY_DATA_SIZE)
        (row_count, width), datatype = tensor["shape"], tensor["datatype"]
        expected = row_count * width * V2_BYTE_ORDER[datatype].itemsize
        if type(size) is not int or size != expected:
            raise InvalidRequest(
                f"{V2_BINARY_DATA_SIZE} is {str(size)[:20]}, a {datatype} tensor of shape [{row_count}, {width}] "
                f"takes {expected} bytes",
                ErrorCode.INVALID_TENSOR,
                field=field,
            )
        if tensor_bytes is None:
            raise InvalidRequest(
                f"the input tensor's {size} bytes of binary data need an "
                f"{V2_INFERENCE_HEADER_CONTENT_LENGTH} header, the length of the JSON request "
                "that the body starts with",
                ErrorCode.INVALID_BODY,
                field=V2_INFERENCE_HEADER_CONTENT_LENGTH,
            )
        if len(tensor_bytes) < size:
            raise InvalidRequest(
                f"the body holds {len(tensor_bytes)} bytes after its JSON request, the input tensor declares {size}",
                ErrorCode.INVALID_BODY,
                field=field,
            )
        _check_no_tensor_bytes_left(tensor_bytes, used=size)
        numbers = np.frombuffer(tensor_bytes[:size], dtype=V2_BYTE_ORDER[datatype])
        return Values(
            numbers, row_count, lambda row, column: pointer(*_DATA, row * width + column), note=_V2_NUMBERS_ONLY
        )

    def _v2_outputs(self, requested, binary_output=False) -> list:
        """The outputs named in the request, each as binary data or not; all
        of them when it names none."""
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
            parameters = _v2_parameters(output, ("outputs", index))
            if "classification" in parameters:
                raise InvalidRequest(
                    "the classification extension is not supported: ask for the label output",
                    ErrorCode.INVALID_PARAMETER,
                    field=pointer("outputs", index, "parameters", "classification"),
                )
            binary = _v2_boolean(parameters, V2_BINARY_DATA, ("outputs", index))
            outputs.append(V2Output(name, binary_output if binary is None else binary))
        return outputs


@dataclass(frozen=True)
class V2Output:
    """An output a V2 request asks for ($request_output), and whether it goes
    back as binary data after the JSON answer."""

    name: str
    binary: bool


_DATA = ("inputs", 0, "data")
_V2_NUMBERS_ONLY = "; a V2 tensor holds numbers only (/predict takes null for a value not measured)"


def _v2_parameters(message, path) -> dict:
    parameters = message.get("parameters", {})
    if not isinstance(parameters, dict):
        where = pointer(*path, "parameters")
        raise InvalidRequest(f"{where} must be an object", ErrorCode.INVALID_PARAMETER, field=where)
    return parameters


def _v2_boolean(parameters, name, path):
    """A boolean parameter of the binary tensor data extension, None when absent."""
    value = parameters.get(name)
    if value is not None and type(value) is not bool:
        where = pointer(*path, "parameters", name)
        raise InvalidRequest(
            f"{where} is {str(value)[:20]}, expected true or false", ErrorCode.INVALID_PARAMETER, field=where
        )
    return value


def _check_no_tensor_bytes_left(tensor_bytes, used):
    if tensor_bytes is not None and len(tensor_bytes) > used:
        raise InvalidRequest(
            f"the body has {len(tensor_bytes) - used} bytes after its JSON request and tensor data "
            f"that no input declares ({V2_INFERENCE_HEADER_CONTENT_LENGTH} or "
            f"{V2_BINARY_DATA_SIZE} is wrong)",
            ErrorCode.INVALID_BODY,
            field=V2_INFERENCE_HEADER_CONTENT_LENGTH,
        )


# ---- reading the values -----------------------------------------------------------
def _instances_text_holds_numbers_only(text, row_count) -> bool:
    """Does `text`, which orjson parsed into `{"instances": [row_count lists]}`,
    show that every value of those lists is a number? Without the characters
    that numbers and lists are written with, what is left of it must be what
    is left of its opening brace and key: anything else in it (a string's
    quotes, a letter of true, false or null, an object's brace, an escape in
    the key) would be left too. And no list is within a row: one `[` opens
    the instances, one each row."""
    return (
        type(text) is bytes
        and text.translate(None, _NUMBER_ROWS_TEXT) == _NUMBER_ROWS_TEXT_LEAVES
        and text.count(b"[") == row_count + 1
    )


def _few_numbers(values: Values) -> list | None:
    """What `_numbers_at_c_speed` gives for a few values (a row or two), read in
    plain Python, where NumPy's cost per call would outweigh its speed per
    value; None when one of them is wrong, missing or might be:
    `Contract.matrix_value_by_value` then decides."""
    flat = values.flat
    if isinstance(flat, np.ndarray):
        return _numbers_at_c_speed(values)
    try:
        if values.texts:
            if not _only_number_characters(flat):
                return None
            numbers = list(map(float, flat))
        elif set(map(type, flat)) <= _JSON_NUMBER_TYPES:
            numbers = list(map(float, flat))
        else:
            return None
    except (ValueError, OverflowError):  # a blank text or no number's order ("1e"); an integer beyond float64
        return None
    # NaN and infinity fail this comparison too.
    if not all(-_FLOAT32_MAX <= number <= _FLOAT32_MAX for number in numbers):
        return None
    return numbers


def _numbers_at_c_speed(values: Values) -> np.ndarray | None:
    """All the values as float64 (NaN for a missing one), converted and
    checked by numpy over the whole batch; None when one of them is wrong or
    might be: `Contract.matrix_value_by_value` then decides."""
    flat = values.flat
    missing_count = 0
    if isinstance(flat, np.ndarray):
        numbers = flat
    elif values.texts:
        numbers, missing_count = _numbers_of_texts(flat, blanks_allowed=values.missing is not None) or (None, 0)
    else:
        types = _JSON_NUMBER_TYPES if values.numbers_only else set(map(type, flat))
        if not types <= (_JSON_NUMBER_TYPES if values.missing is None else _JSON_NUMBER_OR_NULL_TYPES):
            return None
        try:
            numbers = np.fromiter(flat, dtype=np.float64, count=len(flat))
        except OverflowError:  # an integer beyond float64
            return None
        missing_count = flat.count(None) if type(None) in types else 0
    if numbers is None:
        return None
    present = numbers
    if not np.isfinite(numbers).all():
        # Every NaN must be a missing value's: a number that says NaN, or infinity, is refused.
        missing = np.isnan(numbers)
        if np.count_nonzero(missing) != missing_count or np.isinf(numbers).any():
            return None
        present = numbers[~missing]
    if present.size and (present.max() > _FLOAT32_MAX or present.min() < -_FLOAT32_MAX):
        return None
    return numbers


def _only_number_characters(texts) -> bool:
    """Whether every text is made of `_NUMBER_CHARACTERS` only, checked at once."""
    joined = _TEXT_SEPARATOR.join(texts)
    # A text holding the separator would hide among the others.
    return joined.count(_TEXT_SEPARATOR) == len(texts) - 1 and _NUMBER_CHARACTERS.fullmatch(joined) is not None


def _numbers_of_texts(texts, blanks_allowed) -> tuple[np.ndarray, int] | None:
    """The numbers the texts say and how many were blank (NaN), or None when
    one text might not be an ASCII decimal."""
    if not _only_number_characters(texts):
        return None
    try:
        return np.array(texts, dtype=np.float64), 0
    except ValueError:  # a blank text, or these characters in no number's order ("1e", "+")
        if not blanks_allowed:
            return None
    # "nan" has letters no text here holds: each one stands for a blank text.
    texts = [text.strip(_ASCII_BLANKS) or "nan" for text in texts]
    try:
        return np.array(texts, dtype=np.float64), texts.count("nan")
    except ValueError:
        return None


def _number_of(value, values: Values) -> float | None:
    """The number one value says (NaN for a missing one), None when it is not
    a number this form accepts."""
    if values.texts:
        blank = value.strip(_ASCII_BLANKS) == ""
        number = None if blank else parse_number_text(value)
    else:
        blank = value is None
        number = float(value) if type(value) in _JSON_NUMBER_TYPES and abs(value) <= _FLOAT32_MAX else None
    if blank:
        return math.nan if values.missing else None
    if number is None or not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
        return None
    return number


def _shown(value) -> str:
    """A value as the client sent it, cut short."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:20] + "..."

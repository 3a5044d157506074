"""The prediction contract: what every route accepts, declared once from the
model's metadata (feature names, order, meaning, units, training ranges), and
the readers of every body form into the rows the model reads.

Validation, the OpenAPI document and the Postman collection all derive from
it. Every body goes one way: a reader of its form (the article's
`{"data": ...}`, a record, a list of records, `{"instances": [...]}`, CSV
lines, a V2 tensor in JSON or in binary) checks its structure and lays its
values out in rows of the model's features (`Values`); `Contract.matrix` then
checks all the values at once (diabetes.number_checks) and makes the float32
matrix the model reads, with NaN for a missing value. Any problem is an
`InvalidRequest` (diabetes.errors) that says what was wrong, what was
expected, and where. The V2 protocol's names and parameters are
diabetes.open_inference's.

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
import operator
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import orjson

from diabetes.errors import ErrorCode, InvalidRequest, pointer
from diabetes.features import FEW_ROWS
from diabetes.number_checks import (
    ASCII_BLANKS,
    few_numbers,
    instances_text_holds_numbers_only,
    number_of,
    numbers_at_c_speed,
    parse_number_text,
)
from diabetes.open_inference import (
    V2_BINARY_DATA_OUTPUT,
    V2_BINARY_DATA_SIZE,
    V2_BYTE_ORDER,
    V2_INFERENCE_HEADER_CONTENT_LENGTH,
    V2_INPUT_DATATYPES,
    V2_INPUT_NAME,
    boolean_parameter,
    check_no_tensor_bytes_left,
    parameters_of,
    requested_outputs,
)


def parse_json(body: bytes):
    """A JSON body (or the JSON part of a V2 binary one), or `invalid_json`."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidRequest(f"the body is not valid JSON: {error}", ErrorCode.INVALID_JSON) from None


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
        if values.row_count <= FEW_ROWS:
            numbers = few_numbers(values.flat, values.texts)
        else:
            numbers = numbers_at_c_speed(values.flat, values.texts, values.missing is not None, values.numbers_only)
        if numbers is None:
            return self.matrix_value_by_value(values)
        return self._in_model_order(numbers, values)

    def matrix_value_by_value(self, values: Values) -> np.ndarray:
        """The same matrix as `matrix` gives, each value read and checked in
        Python: the reference of what is accepted."""
        flat = values.flat.tolist() if isinstance(values.flat, np.ndarray) else values.flat
        numbers = np.empty(len(flat), dtype=np.float64)
        for index, value in enumerate(flat):
            number = number_of(value, values.texts, values.missing is not None)
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
                numbers_only = instances_text_holds_numbers_only(text, len(instances))
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
        fields = [value.strip(ASCII_BLANKS) for value in line]
        if any(field in self.names for field in fields):
            return True
        return any(fields) and all(parse_number_text(f) is None for f in fields)

    def _csv_header_columns(self, header) -> tuple | None:
        """The feature of each column, None when they are in the model's order."""
        header = [name.strip(ASCII_BLANKS) for name in header]
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
        outputs it asks for (`open_inference.V2Output`s). `tensor_bytes`: the bytes after the
        JSON request when it came with Triton's binary tensor data extension
        (`diabetes.open_inference`), None when the whole body was JSON."""
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise InvalidRequest(
                'expected an inference request: {"inputs": [{"name": "features", "shape": '
                f'[N, {len(self.names)}], "datatype": "FP32", "data": [...]}}]}}',
                ErrorCode.INVALID_BODY,
                field="/inputs",
            )
        binary_output = boolean_parameter(parameters_of(body, ()), V2_BINARY_DATA_OUTPUT, ()) or False
        tensor = self._v2_input_tensor(body["inputs"])
        input_parameters = parameters_of(tensor, ("inputs", 0))
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
            check_no_tensor_bytes_left(tensor_bytes, used=0)
            values = self._v2_json_values(tensor)
        return self.matrix(values), requested_outputs(body.get("outputs"), binary_output)

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
        check_no_tensor_bytes_left(tensor_bytes, used=size)
        numbers = np.frombuffer(tensor_bytes[:size], dtype=V2_BYTE_ORDER[datatype])
        return Values(
            numbers, row_count, lambda row, column: pointer(*_DATA, row * width + column), note=_V2_NUMBERS_ONLY
        )


_DATA = ("inputs", 0, "data")
_V2_NUMBERS_ONLY = "; a V2 tensor holds numbers only (/predict takes null for a value not measured)"


def _shown(value) -> str:
    """A value as the client sent it, cut short."""
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:20] + "..."

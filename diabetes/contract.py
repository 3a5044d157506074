"""The prediction contract: what every route accepts, declared once from the
model's metadata (feature names, order, meaning, units, training ranges).

Validation, the OpenAPI document and the Postman collection all derive from
it. Each way in reads its body into the same thing, a float32 matrix of rows
of the 8 raw values in the model's order, with NaN for a missing value; any
problem is an `InvalidRequest` that says what was wrong, what was expected,
and where (`field`, `row`).

Missing values: in JSON a feature may be `null`, and in CSV a field may be
empty, to say "not measured"; XGBoost routes such a value down the branch it
learned for missing ones. A 0 in glucose, blood_pressure, skin_fold_thick,
serum_insuling or mass_index means "not measured" too, as in the training
data. The article's route keeps its original contract: 8 numbers.
"""

import csv
import itertools
import math
import re
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

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
_ALLOWED_VALUE_TYPES = {int, float, type(None)}
_NUMBER_TYPES = {int, float}
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# A number written as text: ASCII digits only (Python's float() also takes
# "٢٢", "２２" and "1_000"), with an optional sign, decimals and exponent.
_NUMBER_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_ASCII_BLANKS = " \t"


class ErrorCode(StrEnum):
    """The `code` of every error answer, each listed in the README's table."""

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
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_ENTITY_TOO_LARGE = "request_entity_too_large"
    REQUEST_TIMEOUT = "request_timeout"
    TOO_MANY_ROWS = "too_many_rows"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNAUTHORIZED = "unauthorized"
    NOT_IMPLEMENTED = "not_implemented"
    UNTRUSTED_HOST = "untrusted_host"
    INTERNAL_ERROR = "internal_error"


class InvalidRequest(Exception):
    """A request the service cannot answer; becomes a JSON error response."""

    def __init__(self, message, code, status=400, field=None, row=None):
        super().__init__(message)
        self.message, self.code, self.status, self.field, self.row = message, str(code), status, field, row

    def envelope(self) -> dict:
        return {"error": self.message, "code": self.code, "status": self.status, "field": self.field, "row": self.row}


def parse_number_text(text: str) -> float | None:
    """The number an ASCII decimal text says (surrounding spaces allowed), or
    None for anything else."""
    text = text.strip(_ASCII_BLANKS)
    return float(text) if _NUMBER_TEXT.fullmatch(text) else None


@dataclass(frozen=True)
class Contract:
    features: tuple  # dicts: name, meaning, unit, training_min, training_max, zero_means_missing
    version: str
    threshold: float
    max_rows: int

    @classmethod
    def from_metadata(cls, metadata: dict, max_rows: int) -> "Contract":
        return cls(tuple(metadata["features"]), metadata["version"], metadata["threshold"], max_rows)

    @property
    def names(self) -> tuple:
        return tuple(feature["name"] for feature in self.features)

    # ---- the article's route --------------------------------------------------
    def rows_from_article(self, body) -> np.ndarray:
        """`{"data": "1,106,70,28,135,34.2,0.142,22"}` or the same 8 values as a list."""
        if not isinstance(body, dict) or "data" not in body:
            raise InvalidRequest(
                'expected a JSON object with a "data" member, e.g. {"data": "1,106,70,28,135,34.2,0.142,22"}',
                "missing_field",
                field="data",
            )
        data = body["data"]
        if isinstance(data, str):
            values = data.split(",")
        elif isinstance(data, list):
            values = data
        else:
            raise InvalidRequest(
                f'"data" must be a string of {len(self.names)} comma-separated numbers '
                f"or a list of {len(self.names)} numbers",
                "invalid_type",
                field="data",
            )
        if len(values) != len(self.names):
            raise InvalidRequest(
                f'"data" has {len(values)} values, expected {len(self.names)}: ' + ", ".join(self.names),
                "wrong_value_count",
                field="data",
            )
        return np.array([[self._article_number(value, index) for index, value in enumerate(values)]], dtype=np.float32)

    def _article_number(self, value, index) -> float:
        if isinstance(value, str):
            number = parse_number_text(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            number = None
        if number is None:
            number = math.nan
        if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
            shown = value if isinstance(value, str) and len(value) <= 20 else type(value).__name__
            raise InvalidRequest(
                f"data[{index}] ({self.names[index]}) is {shown!r}, expected a finite number",
                "invalid_value",
                field=f"data[{index}]",
            )
        return number

    # ---- named features: one record, a list of records, or instances ---------
    def rows_from_json(self, body) -> np.ndarray:
        """An object keyed by feature name, a list of such objects, or
        `{"instances": [[8 values], ...]}` (rows of values in the model's order,
        or records)."""
        if isinstance(body, dict) and set(body) == {"instances"}:
            instances = body["instances"]
            if not isinstance(instances, list):
                raise InvalidRequest('"instances" must be a list of rows', "invalid_body", field="instances")
            self._check_row_count(len(instances))
            if all(type(row) is list for row in instances):
                return self._matrix(instances, field="instances")
            return self._matrix(self._records_as_rows(instances, field="instances"), field="instances")
        if isinstance(body, dict):
            return self._matrix(self._records_as_rows([body], field=None), field=None)
        if isinstance(body, list):
            self._check_row_count(len(body))
            return self._matrix(self._records_as_rows(body, field=""), field="")
        raise InvalidRequest(
            "expected a record (an object keyed by feature name), a list of records, or "
            '{"instances": [[8 numbers], ...]}',
            "invalid_body",
        )

    def _records_as_rows(self, records, field) -> list:
        names = self.names
        expected = set(names)
        rows = []
        for index, record in enumerate(records):
            where = _row_field(field, index)
            if type(record) is not dict:
                raise InvalidRequest(
                    f"{where or 'the body'} must be an object keyed by feature name ({', '.join(names)})",
                    "invalid_body",
                    field=where or None,
                    row=None if field is None else index,
                )
            if record.keys() != expected:
                self._raise_for_keys(record, where, None if field is None else index)
            rows.append([record[name] for name in names])
        return rows

    def _raise_for_keys(self, record, where, row):
        missing = [name for name in self.names if name not in record]
        unknown = [name for name in record if name not in self.names]
        prefix = f"{where}: " if where else ""
        if missing:
            raise InvalidRequest(
                f"{prefix}missing feature(s) {', '.join(missing)}; every record needs all of "
                f"{', '.join(self.names)} (null for a value not measured)",
                "missing_feature",
                field=_join(where, missing[0]),
                row=row,
            )
        raise InvalidRequest(
            f"{prefix}unknown feature(s) {', '.join(map(str, unknown))}; expected exactly {', '.join(self.names)}",
            "unknown_feature",
            field=_join(where, str(unknown[0])),
            row=row,
        )

    def _check_row_count(self, count):
        if count == 0:
            raise InvalidRequest("the batch is empty: send at least one row", "empty_batch")
        if count > self.max_rows:
            raise InvalidRequest(
                f"the batch has {count} rows, at most {self.max_rows} are accepted per request: split it",
                "too_many_rows",
                status=413,
            )

    def _matrix(self, rows, field) -> np.ndarray:
        """Rows of Python values as float32, None meaning missing; strings,
        booleans, nested lists, infinities and wrong row lengths are refused."""
        width = len(self.names)
        if any(type(row) is not list or len(row) != width for row in rows):
            index = next(i for i, row in enumerate(rows) if type(row) is not list or len(row) != width)
            count = len(rows[index]) if type(rows[index]) is list else None
            raise InvalidRequest(
                f"{_row_field(field, index) or 'the row'} "
                + (f"has {count} values" if count is not None else "is not a list")
                + f", expected {width}: {', '.join(self.names)}",
                "wrong_value_count",
                field=_row_field(field, index) or None,
                row=index if field is not None else None,
            )
        # One pass at C speed over all values; the slow search below runs only
        # to name the value that is wrong.
        values = list(itertools.chain.from_iterable(rows))
        if not set(map(type, values)) <= _ALLOWED_VALUE_TYPES:
            self._raise_for_value(rows, field, lambda value: type(value) not in _ALLOWED_VALUE_TYPES)
        # From the flat values (None becomes NaN): numpy reads a flat list faster than nested ones.
        matrix = np.array(values, dtype=np.float64).reshape(len(rows), width)
        if np.abs(np.nan_to_num(matrix)).max(initial=0) > _FLOAT32_MAX:
            self._raise_for_value(rows, field, lambda value: value is not None and abs(value) > _FLOAT32_MAX)
        return matrix.astype(np.float32)

    def _raise_for_value(self, rows, field, is_wrong):
        for index, row in enumerate(rows):
            for column, value in enumerate(row):
                if is_wrong(value):
                    name = self.names[column]
                    where = _join(_row_field(field, index), name)
                    shown = (
                        repr(value)
                        if isinstance(value, (str, bool, int, float)) and len(repr(value)) <= 24
                        else type(value).__name__
                    )
                    raise InvalidRequest(
                        f"{where} is {shown}, expected a number ({name}, "
                        f"{self._unit(column)}) or null for not measured",
                        "invalid_value",
                        field=where,
                        row=index if field is not None else None,
                    )

    def _unit(self, column) -> str:
        return self.features[column]["unit"]

    # ---- CSV ------------------------------------------------------------------
    def rows_from_csv(self, lines) -> np.ndarray:
        """Rows of 8 comma-separated values, from an iterable of text lines
        read as they arrive; an optional header naming the features (in any
        order); an empty field means not measured. Quoting is strict. The row
        limit stops the reading as soon as it is passed."""
        width = len(self.names)
        rows, order, first_line = [], None, 1
        try:
            for index, line in enumerate(filter(None, csv.reader(lines, strict=True))):
                if index == 0 and self._is_header(line):
                    order, first_line = self._csv_header_order(line), 2
                    continue
                row_index = len(rows)
                if row_index == self.max_rows:
                    raise InvalidRequest(
                        f"the CSV has more than {self.max_rows} rows, at most {self.max_rows} "
                        "are accepted per request: split it",
                        ErrorCode.TOO_MANY_ROWS,
                        status=413,
                    )
                where = f"line {row_index + first_line}"
                if len(line) != width:
                    raise InvalidRequest(
                        f"{where} has {len(line)} values, expected {width}: {', '.join(self.names)}",
                        ErrorCode.WRONG_VALUE_COUNT,
                        field=where,
                        row=row_index,
                    )
                if order is not None:
                    line = [line[position] for position in order]
                rows.append([self._csv_number(value, where, row_index, column) for column, value in enumerate(line)])
        except csv.Error as error:
            raise InvalidRequest(f"the body is not valid CSV: {error}", ErrorCode.INVALID_CSV) from None
        except UnicodeDecodeError as error:
            raise InvalidRequest(
                f"the body is not UTF-8 text: byte {error.start} cannot be decoded", ErrorCode.INVALID_CSV
            ) from None
        self._check_row_count(len(rows))
        return np.array(rows, dtype=np.float32)

    def _is_header(self, line) -> bool:
        """A first line that names a feature, or holds no number at all."""
        fields = [value.strip(_ASCII_BLANKS) for value in line]
        return any(field in self.names for field in fields) or all(parse_number_text(f) is None for f in fields)

    def _csv_header_order(self, header) -> list:
        header = [name.strip(_ASCII_BLANKS) for name in header]
        if sorted(header) != sorted(self.names):
            missing = [name for name in self.names if name not in header]
            unknown = [name for name in header if name not in self.names]
            raise InvalidRequest(
                f"the CSV header must name each feature once ({', '.join(self.names)}); "
                f"missing: {', '.join(missing) or 'none'}, unknown: {', '.join(unknown) or 'none'}",
                ErrorCode.UNKNOWN_FEATURE if unknown else ErrorCode.MISSING_FEATURE,
                field="line 1",
            )
        return [header.index(name) for name in self.names]

    def _csv_number(self, value, where, index, column):
        if value.strip(_ASCII_BLANKS) == "":
            return math.nan
        number = parse_number_text(value)
        if number is None or not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
            shown = value if len(value) <= 20 else value[:20] + "..."
            raise InvalidRequest(
                f"{where}, {self.names[column]} is {shown!r}, expected a number "
                f"({self._unit(column)}) or an empty field for not measured",
                ErrorCode.INVALID_VALUE,
                field=f"{where}, {self.names[column]}",
                row=index,
            )
        return number

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
                field="inputs",
            )
        parameters = _v2_parameters(body, "parameters")
        binary_output = _v2_boolean(parameters, V2_BINARY_DATA_OUTPUT, "parameters") or False
        if len(body["inputs"]) != 1 or not isinstance(body["inputs"][0], dict):
            raise InvalidRequest(
                f"expected exactly one input tensor, {V2_INPUT_NAME!r}, got {len(body['inputs'])}",
                ErrorCode.INVALID_TENSOR,
                field="inputs",
            )
        tensor = body["inputs"][0]
        for member in ("name", "shape", "datatype"):
            if member not in tensor:
                raise InvalidRequest(
                    f'the input tensor has no "{member}"', ErrorCode.INVALID_TENSOR, field=f"inputs[0].{member}"
                )
        if tensor["name"] != V2_INPUT_NAME:
            raise InvalidRequest(
                f"the input tensor is named {str(tensor['name'])[:40]!r}, this model's input is {V2_INPUT_NAME!r}",
                ErrorCode.INVALID_TENSOR,
                field="inputs[0].name",
            )
        if tensor["datatype"] not in V2_INPUT_DATATYPES:
            raise InvalidRequest(
                f"datatype {str(tensor['datatype'])[:20]!r} is not supported, expected one of "
                f"{', '.join(V2_INPUT_DATATYPES)}",
                ErrorCode.INVALID_TENSOR,
                field="inputs[0].datatype",
            )
        shape = tensor["shape"]
        if (
            not isinstance(shape, list)
            or len(shape) != 2
            or not all(type(d) is int for d in shape)
            or shape[1] != len(self.names)
            or shape[0] < 0
        ):
            raise InvalidRequest(
                f"shape {str(shape)[:40]} is not supported, expected [N, {len(self.names)}]: "
                f"N rows of {', '.join(self.names)}",
                ErrorCode.INVALID_TENSOR,
                field="inputs[0].shape",
            )
        self._check_row_count(shape[0])
        input_parameters = _v2_parameters(tensor, "inputs[0].parameters")
        if V2_BINARY_DATA_SIZE in input_parameters:
            if "data" in tensor:
                raise InvalidRequest(
                    f'the input tensor has both "data" and a {V2_BINARY_DATA_SIZE} parameter: '
                    "send its values one way only",
                    ErrorCode.INVALID_TENSOR,
                    field="inputs[0]",
                )
            rows = self._v2_binary_rows(tensor, input_parameters[V2_BINARY_DATA_SIZE], tensor_bytes)
        else:
            _check_no_tensor_bytes_left(tensor_bytes, used=0)
            if "data" not in tensor:
                raise InvalidRequest(
                    f'the input tensor has neither "data" nor a {V2_BINARY_DATA_SIZE} parameter',
                    ErrorCode.INVALID_TENSOR,
                    field="inputs[0].data",
                )
            rows = self._v2_json_rows(tensor)
        return rows, self._v2_outputs(body.get("outputs"), binary_output)

    def _v2_json_rows(self, tensor) -> np.ndarray:
        shape, data = tensor["shape"], tensor["data"]
        if not isinstance(data, list):
            raise InvalidRequest("the tensor's data must be a list", ErrorCode.INVALID_TENSOR, field="inputs[0].data")
        flat = list(itertools.chain.from_iterable(data)) if data and all(type(r) is list for r in data) else data
        if len(flat) != shape[0] * shape[1]:
            raise InvalidRequest(
                f"the tensor's data has {len(flat)} values, its shape {shape} needs {shape[0] * shape[1]}",
                ErrorCode.INVALID_TENSOR,
                field="inputs[0].data",
            )
        if None in flat:
            position = flat.index(None)
            raise InvalidRequest(
                f"inputs[0].data[{position}] is null: {tensor['datatype']} tensors hold numbers "
                "only (use the /predict route to send a missing value)",
                ErrorCode.INVALID_VALUE,
                field=f"inputs[0].data[{position}]",
                row=position // shape[1],
            )
        if set(map(type, flat)) <= _NUMBER_TYPES:
            # The common case, checked at C speed over the flat values at once.
            matrix = np.array(flat, dtype=np.float64).reshape(shape[0], shape[1])
            if np.isfinite(matrix).all() and np.abs(matrix).max(initial=0) <= _FLOAT32_MAX:
                return matrix.astype(np.float32)
        # Otherwise row by row, to name the value that is wrong.
        width = shape[1]
        rows = [flat[start : start + width] for start in range(0, len(flat), width)]
        return self._matrix(rows, field="inputs[0].data")

    def _v2_binary_rows(self, tensor, size, tensor_bytes) -> np.ndarray:
        """The rows sent as raw little-endian bytes after the JSON request."""
        field = f"inputs[0].parameters.{V2_BINARY_DATA_SIZE}"
        datatype, shape = tensor["datatype"], tensor["shape"]
        expected = shape[0] * shape[1] * V2_BYTE_ORDER[datatype].itemsize
        if type(size) is not int or size != expected:
            raise InvalidRequest(
                f"{V2_BINARY_DATA_SIZE} is {str(size)[:20]}, a {datatype} tensor of shape {shape} "
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
        values = np.frombuffer(tensor_bytes[:size], dtype=V2_BYTE_ORDER[datatype]).reshape(shape)
        wrong = ~np.isfinite(values) | (np.abs(values) > _FLOAT32_MAX)
        if wrong.any():
            row, column = (int(i) for i in np.argwhere(wrong)[0])
            name = self.names[column]
            raise InvalidRequest(
                f"inputs[0] row {row}, {name} is {float(values[row, column])}, expected a finite "
                f"number ({self._unit(column)}) that fits FP32",
                ErrorCode.INVALID_VALUE,
                field=f"inputs[0].data[{row}].{name}",
                row=row,
            )
        return values.astype(np.float32)

    def _v2_outputs(self, requested, binary_output=False) -> list:
        """The outputs named in the request, each as binary data or not; all
        of them when it names none."""
        if requested is None or requested == []:
            return [V2Output(name, binary_output) for name in V2_OUTPUTS]
        names = (
            [output.get("name") if isinstance(output, dict) else None for output in requested]
            if isinstance(requested, list)
            else [None]
        )
        unknown = [name for name in names if type(name) is not str or name not in V2_OUTPUTS]
        if unknown:
            raise InvalidRequest(
                f"unknown output {str(unknown[0])[:40]}; this model has {', '.join(V2_OUTPUTS)}",
                ErrorCode.INVALID_TENSOR,
                field="outputs",
            )
        if len(set(names)) != len(names):
            raise InvalidRequest(
                "an output is asked for twice; ask for each once", ErrorCode.INVALID_TENSOR, field="outputs"
            )
        outputs = []
        for index, output in enumerate(requested):
            where = f"outputs[{index}].parameters"
            parameters = _v2_parameters(output, where)
            if "classification" in parameters:
                raise InvalidRequest(
                    "the classification extension is not supported: ask for the label output",
                    ErrorCode.INVALID_PARAMETER,
                    field=f"{where}.classification",
                )
            binary = _v2_boolean(parameters, V2_BINARY_DATA, where)
            outputs.append(V2Output(output["name"], binary_output if binary is None else binary))
        return outputs


@dataclass(frozen=True)
class V2Output:
    """An output a V2 request asks for ($request_output), and whether it goes
    back as binary data after the JSON answer."""

    name: str
    binary: bool


def _v2_parameters(message, where) -> dict:
    parameters = message.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"{where} must be an object", ErrorCode.INVALID_PARAMETER, field=where)
    return parameters


def _v2_boolean(parameters, name, where):
    """A boolean parameter of the binary tensor data extension, None when absent."""
    value = parameters.get(name)
    if value is not None and type(value) is not bool:
        raise InvalidRequest(
            f"{where}.{name} is {str(value)[:20]}, expected true or false",
            ErrorCode.INVALID_PARAMETER,
            field=f"{where}.{name}",
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


def _row_field(field, index):
    if field is None:
        return ""
    return f"{field}[{index}]" if field else f"[{index}]"


def _join(where, name):
    return f"{where}.{name}" if where else name

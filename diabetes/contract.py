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
import io
import itertools
import math
from dataclasses import dataclass

import numpy as np

MODEL_NAME = "diabetes"
V2_INPUT_NAME = "features"
V2_INPUT_DATATYPES = ("FP32", "FP64")
V2_OUTPUTS = {"probability": "FP32", "label": "INT64"}
_ALLOWED_VALUE_TYPES = {int, float, type(None)}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class InvalidRequest(Exception):
    """A request the service cannot answer; becomes a JSON error response."""

    def __init__(self, message, code, status=400, field=None, row=None):
        super().__init__(message)
        self.message, self.code, self.status, self.field, self.row = message, code, status, field, row

    def envelope(self) -> dict:
        return {"error": self.message, "code": self.code, "status": self.status,
                "field": self.field, "row": self.row}


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
            raise InvalidRequest('expected a JSON object with a "data" member, e.g. '
                                 '{"data": "1,106,70,28,135,34.2,0.142,22"}', "missing_field", field="data")
        data = body["data"]
        if isinstance(data, str):
            values = data.split(",")
        elif isinstance(data, list):
            values = data
        else:
            raise InvalidRequest(f'"data" must be a string of {len(self.names)} comma-separated numbers '
                                 f"or a list of {len(self.names)} numbers", "invalid_type", field="data")
        if len(values) != len(self.names):
            raise InvalidRequest(f'"data" has {len(values)} values, expected {len(self.names)}: '
                                 + ", ".join(self.names), "wrong_value_count", field="data")
        return np.array([[self._article_number(value, index) for index, value in enumerate(values)]],
                        dtype=np.float32)

    def _article_number(self, value, index) -> float:
        is_text_or_number = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        try:
            number = float(value) if is_text_or_number else math.nan
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
            shown = value if isinstance(value, str) and len(value) <= 20 else type(value).__name__
            raise InvalidRequest(f"data[{index}] ({self.names[index]}) is {shown!r}, expected a finite number",
                                 "invalid_value", field=f"data[{index}]")
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
        raise InvalidRequest("expected a record (an object keyed by feature name), a list of records, or "
                             '{"instances": [[8 numbers], ...]}', "invalid_body")

    def _records_as_rows(self, records, field) -> list:
        names = self.names
        expected = set(names)
        rows = []
        for index, record in enumerate(records):
            where = _row_field(field, index)
            if type(record) is not dict:
                raise InvalidRequest(f"{where or 'the body'} must be an object keyed by feature name "
                                     f"({', '.join(names)})", "invalid_body", field=where or None,
                                     row=None if field is None else index)
            if record.keys() != expected:
                self._raise_for_keys(record, where, None if field is None else index)
            rows.append([record[name] for name in names])
        return rows

    def _raise_for_keys(self, record, where, row):
        missing = [name for name in self.names if name not in record]
        unknown = [name for name in record if name not in self.names]
        prefix = f"{where}: " if where else ""
        if missing:
            raise InvalidRequest(f"{prefix}missing feature(s) {', '.join(missing)}; every record needs all of "
                                 f"{', '.join(self.names)} (null for a value not measured)", "missing_feature",
                                 field=_join(where, missing[0]), row=row)
        raise InvalidRequest(f"{prefix}unknown feature(s) {', '.join(map(str, unknown))}; expected exactly "
                             f"{', '.join(self.names)}", "unknown_feature", field=_join(where, str(unknown[0])),
                             row=row)

    def _check_row_count(self, count):
        if count == 0:
            raise InvalidRequest("the batch is empty: send at least one row", "empty_batch")
        if count > self.max_rows:
            raise InvalidRequest(f"the batch has {count} rows, at most {self.max_rows} are accepted per request: "
                                 "split it", "too_many_rows", status=413)

    def _matrix(self, rows, field) -> np.ndarray:
        """Rows of Python values as float32, None meaning missing; strings,
        booleans, nested lists, infinities and wrong row lengths are refused."""
        width = len(self.names)
        if any(type(row) is not list or len(row) != width for row in rows):
            index = next(i for i, row in enumerate(rows) if type(row) is not list or len(row) != width)
            count = len(rows[index]) if type(rows[index]) is list else None
            raise InvalidRequest(f"{_row_field(field, index) or 'the row'} "
                                 + (f"has {count} values" if count is not None else "is not a list")
                                 + f", expected {width}: {', '.join(self.names)}", "wrong_value_count",
                                 field=_row_field(field, index) or None, row=index if field is not None else None)
        # One pass at C speed over all values; the slow search below runs only
        # to name the value that is wrong.
        if not set(map(type, itertools.chain.from_iterable(rows))) <= _ALLOWED_VALUE_TYPES:
            self._raise_for_value(rows, field, lambda value: type(value) not in _ALLOWED_VALUE_TYPES)
        matrix = np.array(rows, dtype=np.float64)
        if np.abs(np.nan_to_num(matrix)).max(initial=0) > _FLOAT32_MAX:
            self._raise_for_value(rows, field, lambda value: value is not None and abs(value) > _FLOAT32_MAX)
        return matrix.astype(np.float32)

    def _raise_for_value(self, rows, field, is_wrong):
        for index, row in enumerate(rows):
            for column, value in enumerate(row):
                if is_wrong(value):
                    name = self.names[column]
                    where = _join(_row_field(field, index), name)
                    shown = repr(value) if isinstance(value, (str, bool, int, float)) and len(repr(value)) <= 24 \
                        else type(value).__name__
                    raise InvalidRequest(f"{where} is {shown}, expected a number ({name}, "
                                         f"{self._unit(column)}) or null for not measured", "invalid_value",
                                         field=where, row=index if field is not None else None)

    def _unit(self, column) -> str:
        return self.features[column]["unit"]

    # ---- CSV ------------------------------------------------------------------
    def rows_from_csv(self, text: str) -> np.ndarray:
        """Rows of 8 comma-separated values; an optional header naming the
        features (in any order); an empty field means not measured."""
        try:
            lines = [line for line in csv.reader(io.StringIO(text, newline="")) if line]
        except csv.Error as error:
            raise InvalidRequest(f"the body is not valid CSV: {error}", "invalid_csv") from None
        if lines and not _is_numeric_row(lines[0]):
            order = self._csv_header_order(lines[0])
            lines = [[line[i] for i in order] if len(line) == len(order) else line for line in lines[1:]]
            first_line = 2
        else:
            first_line = 1
        self._check_row_count(len(lines))
        width = len(self.names)
        rows = []
        for index, line in enumerate(lines):
            where = f"line {index + first_line}"
            if len(line) != width:
                raise InvalidRequest(f"{where} has {len(line)} values, expected {width}: {', '.join(self.names)}",
                                     "wrong_value_count", field=where, row=index)
            rows.append([self._csv_number(value, where, index, column) for column, value in enumerate(line)])
        return np.array(rows, dtype=np.float32)

    def _csv_header_order(self, header) -> list:
        header = [name.strip() for name in header]
        if sorted(header) != sorted(self.names):
            missing = [name for name in self.names if name not in header]
            unknown = [name for name in header if name not in self.names]
            raise InvalidRequest(f"the CSV header must name each feature once ({', '.join(self.names)}); "
                                 f"missing: {', '.join(missing) or 'none'}, unknown: {', '.join(unknown) or 'none'}",
                                 "unknown_feature" if unknown else "missing_feature", field="line 1")
        return [header.index(name) for name in self.names]

    def _csv_number(self, value, where, index, column):
        value = value.strip()
        if value == "":
            return math.nan
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
            shown = value if len(value) <= 20 else value[:20] + "..."
            raise InvalidRequest(f"{where}, {self.names[column]} is {shown!r}, expected a number "
                                 f"({self._unit(column)}) or an empty field for not measured", "invalid_value",
                                 field=f"{where}, {self.names[column]}", row=index)
        return number

    # ---- Open Inference Protocol V2 --------------------------------------------
    def rows_from_v2(self, body) -> tuple[np.ndarray, list]:
        """The rows of a V2 inference request, and the outputs it asks for."""
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise InvalidRequest('expected an inference request: {"inputs": [{"name": "features", "shape": '
                                 f'[N, {len(self.names)}], "datatype": "FP32", "data": [...]}}]}}',
                                 "invalid_body", field="inputs")
        if len(body["inputs"]) != 1 or not isinstance(body["inputs"][0], dict):
            raise InvalidRequest(f"expected exactly one input tensor, {V2_INPUT_NAME!r}, got "
                                 f"{len(body['inputs'])}", "invalid_tensor", field="inputs")
        tensor = body["inputs"][0]
        for member in ("name", "shape", "datatype", "data"):
            if member not in tensor:
                raise InvalidRequest(f'the input tensor has no "{member}"', "invalid_tensor",
                                     field=f"inputs[0].{member}")
        if tensor["datatype"] not in V2_INPUT_DATATYPES:
            raise InvalidRequest(f"datatype {str(tensor['datatype'])[:20]!r} is not supported, expected one of "
                                 f"{', '.join(V2_INPUT_DATATYPES)}", "invalid_tensor", field="inputs[0].datatype")
        shape = tensor["shape"]
        if (not isinstance(shape, list) or len(shape) != 2 or not all(type(d) is int for d in shape)
                or shape[1] != len(self.names) or shape[0] < 0):
            raise InvalidRequest(f"shape {str(shape)[:40]} is not supported, expected [N, {len(self.names)}]: "
                                 f"N rows of {', '.join(self.names)}", "invalid_tensor", field="inputs[0].shape")
        self._check_row_count(shape[0])
        data = tensor["data"]
        if not isinstance(data, list):
            raise InvalidRequest("the tensor's data must be a list", "invalid_tensor", field="inputs[0].data")
        flat = list(itertools.chain.from_iterable(data)) if data and all(type(r) is list for r in data) else data
        if len(flat) != shape[0] * shape[1]:
            raise InvalidRequest(f"the tensor's data has {len(flat)} values, its shape {shape} needs "
                                 f"{shape[0] * shape[1]}", "invalid_tensor", field="inputs[0].data")
        if None in flat:
            position = flat.index(None)
            raise InvalidRequest(f"inputs[0].data[{position}] is null: {tensor['datatype']} tensors hold numbers "
                                 "only (use the /predict route to send a missing value)", "invalid_value",
                                 field=f"inputs[0].data[{position}]", row=position // shape[1])
        width = shape[1]
        rows = [flat[start:start + width] for start in range(0, len(flat), width)]
        return self._matrix(rows, field="inputs[0].data"), self._v2_outputs(body.get("outputs"))

    def _v2_outputs(self, requested) -> list:
        """The outputs named in the request; all of them when it names none."""
        if requested is None or requested == []:
            return list(V2_OUTPUTS)
        names = [output.get("name") if isinstance(output, dict) else None for output in requested] \
            if isinstance(requested, list) else [None]
        unknown = [name for name in names if type(name) is not str or name not in V2_OUTPUTS]
        if unknown:
            raise InvalidRequest(f"unknown output {str(unknown[0])[:40]}; this model has "
                                 f"{', '.join(V2_OUTPUTS)}", "invalid_tensor", field="outputs")
        return names


def _row_field(field, index):
    if field is None:
        return ""
    return f"{field}[{index}]" if field else f"[{index}]"


def _join(where, name):
    return f"{where}.{name}" if where else name


def _is_numeric_row(values) -> bool:
    for value in values:
        try:
            float(value) if value.strip() else None
        except ValueError:
            return False
    return True

"""metadata.json, declared once: what a training run promises the service about
the model file beside it.

`ModelMetadata` is the contract: every key of the file is a field below, typed
and described in one line; nested parts are types of their own. Training hands
`model_store.publish_version` what it computed, which is parsed into
`ModelMetadata` before anything is written: a key missing, unknown or of the
wrong type refuses the publication, and the message names the key as a JSON
Pointer (`/parameters/min_auc`). The service parses the file again when it
loads a model, and every reader (the model store, the service's contract, the
prediction bundle, the version listing, the sweep, PM2's metrics) takes its
fields from the parsed object, never from the raw JSON.

Formats: a file written through this module says `"format": 2`. Files written
before it have no `format` (format 1): they are read when they hold every key
of format 2 (the shape training has written since its model card), and refused,
naming what is missing, when they are older still. A format newer than
`FORMAT` is refused: this code cannot know what it promises.

Standard library only: PM2's metrics process and the command lines read
metadata without importing numpy or XGBoost.
"""

import dataclasses
import importlib
import json
import platform
import types
import typing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

METADATA_FILE = "metadata.json"  # its name in a model version's folder
FORMAT = 2  # the format this code writes
FIRST_FORMAT = 1  # the files written before the contract was declared, without a `format` key


class MetadataRefused(ValueError):
    """metadata.json does not hold the contract; the message names the key."""


@dataclass(frozen=True)
class Feature:
    """One input of the model, in the model's order."""

    name: str  # the column's name, as requests spell it
    meaning: str  # what was measured, in words
    unit: str  # its unit ("count", "mg/dl", ...)
    zero_means_missing: bool  # a 0 means "not measured", and is read as missing
    training_min: float  # the smallest value among the training rows (missing ones left out)
    training_max: float  # the largest value among the training rows
    training_missing: int  # how many training rows did not measure it


@dataclass(frozen=True)
class Metrics:
    """The held-out test rows' figures (measured once), then the cross-validated ones."""

    test_roc_auc: float  # ROC AUC on the test rows: the quality gate's figure
    test_accuracy: float  # share of test rows labelled right at the threshold
    test_brier: float  # mean squared error of the probability on the test rows
    test_log_loss: float  # log loss on the test rows
    test_accuracy_interval: list[float]  # 95% interval [low, high] of test_accuracy
    test_roc_auc_interval: list[float]  # 95% interval [low, high] of test_roc_auc
    test_brier_uncalibrated: float  # test_brier of the trees before calibration
    cv_roc_auc_mean: float  # ROC AUC over the held-out folds of every seed: mean
    cv_roc_auc_std: float  # ... and spread
    cv_accuracy_mean: float  # accuracy over the held-out folds: mean
    cv_accuracy_std: float  # ... and spread
    cv_brier_mean: float  # Brier score over the held-out folds: mean
    cv_brier_std: float  # ... and spread
    cv_log_loss_mean: float  # log loss over the held-out folds: mean
    cv_log_loss_std: float  # ... and spread


@dataclass(frozen=True)
class CrossValidated:
    """A parameter set measured on the training rows' folds (ours, or the article's)."""

    roc_auc_mean: float  # ROC AUC over the held-out folds: mean
    roc_auc_std: float  # ... and spread
    accuracy_mean: float  # accuracy: mean
    accuracy_std: float  # ... and spread
    brier_mean: float  # Brier score: mean
    brier_std: float  # ... and spread
    log_loss_mean: float  # log loss: mean
    log_loss_std: float  # ... and spread
    trees: int | None = None  # the trees early stopping chose for these parameters (ours: the top-level `trees`)


@dataclass(frozen=True)
class Calibration:
    """How the served probability was calibrated, and why."""

    method: str  # "platt" (folded into the trees) or "none"
    cv_brier: dict[str, float]  # cross-validated Brier score of each calibrator tried ("none", "platt", "isotonic")
    slope: float | None = None  # Platt scaling's slope on the log-odds, when applied
    intercept: float | None = None  # ... and its intercept


@dataclass(frozen=True)
class ModelCard:
    """How the model was chosen and what its numbers mean, in words."""

    chosen_by: str  # what chose the parameters, and what the test rows were used for
    trees: str  # how many trees, and how that number was found
    versus_article: str  # the test accuracy against the original article's
    threshold: str  # the threshold and the costs it assumes
    calibration: str  # the calibration applied, or why none
    explanation: str  # what the served explanations (TreeSHAP) add up to


@dataclass(frozen=True)
class Parameters:
    """The training notebook's parameters that shaped the model."""

    test_size: float  # share of rows held out for the test metrics
    seed: int  # random state of the split, the first folds and XGBoost
    n_estimators: int  # most boosting rounds
    max_depth: int  # deepest a tree may grow
    learning_rate: float  # weight of each new tree
    subsample: float  # share of rows each tree is grown on
    colsample_bytree: float  # share of features each tree may use
    min_child_weight: float  # least hessian a leaf must hold
    reg_lambda: float  # L2 penalty on leaf values
    early_stopping_rounds: int  # rounds without a better held-out log loss before stopping
    cv_folds: int  # folds of the cross-validation
    cv_repeats: int  # seeds the folds were drawn with
    threshold: float  # label 1 at or above it
    calibration: str  # "none", "platt" or "auto", as asked
    min_auc: float  # the quality gate on the test ROC AUC


@dataclass(frozen=True)
class DataSource:
    """The rows the model learned from."""

    source: str  # the file, folder or URL (credentials redacted)
    query: str | None  # the SQL, for a database
    rows: int  # how many rows
    sha256: str  # the hash of the rows in their canonical form
    canonical_form: str  # what the hash is taken over
    snapshot: str | None  # the file in the version's folder that keeps the rows; None: too many to keep
    snapshot_note: str | None  # why no snapshot was kept
    partitions: int | None = None  # read on a cluster: how many partitions


@dataclass(frozen=True)
class Sample:
    """One row and the probability training gave it: the check every load repeats."""

    values: list[float]  # the row's raw values, in the model's order
    probability: float  # what the model in memory answered for it


@dataclass(frozen=True)
class ClusterRun:
    """The Dask cluster a model was trained on."""

    scheduler: str  # its address
    workers: int  # workers when the run started
    threads: int  # their threads in all
    partitions: int  # partitions of the data
    rows: int  # rows of the data
    training_rows: int  # of which training rows
    test_rows: int  # and test rows
    predictions: str  # what predictions.csv holds (a sample)
    approximations: str  # where the cluster's steps differ from the in-process ones


@dataclass(frozen=True)
class ModelMetadata:
    """metadata.json: the model version's contract with the service."""

    format: int  # the contract's format (FORMAT); 1 for files written before it was declared
    version: str  # the version's id: training time and the model file's hash, as its folder is named
    model_file: str  # the model's file in the version's folder (XGBoost's UBJSON)
    model_sha256: str  # the model file's sha256: a file that does not match is refused
    trained_at: str  # when it was trained (ISO 8601, UTC)
    feature_names: list[str]  # the inputs in the model's order
    features: list[Feature]  # the same inputs, described, with their training ranges
    threshold: float  # label 1 when the probability is at or above it
    trees: int  # the trees the model holds
    metrics: Metrics  # how good it is
    comparison: dict[str, CrossValidated]  # our parameters ("ours") against the article's ("article") on the same folds
    calibration: Calibration  # how the probability was calibrated
    model_card: ModelCard  # how it was chosen and what its numbers mean, in words
    parameters: Parameters  # the training parameters
    data: DataSource  # the data it learned from
    sample: Sample  # one row and its recorded probability
    library_versions: dict[str, str]  # versions of Python and the libraries that trained it
    cluster: ClusterRun | None = None  # the cluster it was trained on; None: in one process

    @classmethod
    def parse(cls, document) -> "ModelMetadata":
        """The contract read from a decoded metadata.json, or MetadataRefused
        naming the first key that is missing, unknown or of the wrong type."""
        if not isinstance(document, dict):
            raise MetadataRefused(f"metadata.json holds {_json_type(document)}, not an object")
        written_in = document.get("format", FIRST_FORMAT)
        if type(written_in) is not int or not FIRST_FORMAT <= written_in <= FORMAT:
            raise MetadataRefused(
                f"metadata.json is in format {written_in!r}; this code reads formats {FIRST_FORMAT} to {FORMAT}"
            )
        try:
            return _parsed(cls, {**document, "format": written_in}, "")
        except MetadataRefused as error:
            if written_in == FIRST_FORMAT and "format" not in document:
                raise MetadataRefused(
                    f"{error}; this metadata has no format: it was written before the contract of "
                    f"format {FORMAT} (diabetes/model_metadata.py), by a version of training that "
                    "recorded less: train the model again"
                ) from None
            raise

    def as_json(self) -> dict:
        """The document metadata.json holds (and GET /metadata serves): an
        optional part that is None is left out, as training always wrote it."""
        return _as_json(self)


def described_features(features, ranges) -> list[dict]:
    """The features (diabetes.features.FEATURES) with their training ranges: a
    table indexed by feature name with columns min, max and missing."""
    return [
        {
            "name": feature.name,
            "meaning": feature.meaning,
            "unit": feature.unit,
            "zero_means_missing": feature.zero_means_missing,
            "training_min": float(ranges.loc[feature.name, "min"]),
            "training_max": float(ranges.loc[feature.name, "max"]),
            "training_missing": int(ranges.loc[feature.name, "missing"]),
        }
        for feature in features
    ]


def recorded_parameters(namespace: dict) -> dict:
    """The training notebook's parameters that `Parameters` records, taken
    from its variables (`globals()`)."""
    names = [item.name for item in dataclasses.fields(Parameters)]
    missing = [name for name in names if name not in namespace]
    if missing:
        raise MetadataRefused(f"the training run has no parameter {', '.join(missing)} to record in /parameters")
    return {name: namespace[name] for name in names}


# The libraries a training run records the versions of: {name: module}.
TRAINING_LIBRARIES = {"xgboost": "xgboost", "scikit-learn": "sklearn", "pandas": "pandas", "numpy": "numpy"}


def library_versions() -> dict[str, str]:
    """Python's version and those of the training libraries (a training run
    has imported them already)."""
    return {"python": platform.python_version()} | {
        name: importlib.import_module(module).__version__ for name, module in TRAINING_LIBRARIES.items()
    }


def now() -> str:
    """The time of a publication, as `trained_at` records it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def read(model_dir) -> ModelMetadata:
    """The contract in the metadata.json of the version in `model_dir`;
    MetadataRefused (a ValueError) says what is wrong."""
    path = Path(model_dir) / METADATA_FILE
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise MetadataRefused(f"{path} is not JSON: {error}") from error
    return ModelMetadata.parse(document)


def write(metadata: ModelMetadata, model_dir):
    (Path(model_dir) / METADATA_FILE).write_text(json.dumps(metadata.as_json(), indent=2) + "\n")


# ---- parsing: JSON values checked against the annotations above ---------------
def _parsed(kind, value, pointer: str):
    """`value` as `kind` (a dataclass above, list[...], dict[str, ...], X | None,
    str, int, float or bool), or MetadataRefused naming `pointer`."""
    if dataclasses.is_dataclass(kind):
        return _parsed_object(kind, value, pointer)
    origin, arguments = typing.get_origin(kind), typing.get_args(kind)
    if origin is types.UnionType:
        if value is None and type(None) in arguments:
            return None
        [kind] = [argument for argument in arguments if argument is not type(None)]
        return _parsed(kind, value, pointer)
    if origin is list and isinstance(value, list):
        return [_parsed(arguments[0], item, f"{pointer}/{index}") for index, item in enumerate(value)]
    if origin is dict and isinstance(value, dict):
        return {key: _parsed(arguments[1], item, f"{pointer}/{_escaped(key)}") for key, item in value.items()}
    if kind is float and type(value) in (int, float):
        return float(value)
    if kind in (str, int, bool) and type(value) is kind:
        return value
    raise MetadataRefused(f"{pointer or '/'} is {_json_type(value)}, not {_json_name(kind)}")


def _parsed_object(kind, value, pointer: str):
    if not isinstance(value, dict):
        raise MetadataRefused(f"{pointer or '/'} is {_json_type(value)}, not an object")
    fields = {item.name: item for item in dataclasses.fields(kind)}
    problems = [
        f"{pointer}/{name} is missing"
        for name, item in fields.items()
        if name not in value and item.default is dataclasses.MISSING
    ] + [f"{pointer}/{_escaped(str(key))} is not a key of the contract" for key in value if key not in fields]
    if problems:
        raise MetadataRefused("; ".join(problems))
    hints = typing.get_type_hints(kind)
    return kind(**{name: _parsed(hints[name], item, f"{pointer}/{name}") for name, item in value.items()})


def _as_json(value):
    if dataclasses.is_dataclass(value):
        return {
            item.name: _as_json(getattr(value, item.name))
            for item in dataclasses.fields(value)
            if not (item.default is None and getattr(value, item.name) is None)
        }
    if isinstance(value, list):
        return [_as_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _as_json(item) for key, item in value.items()}
    return value


def _escaped(key: str) -> str:
    """A key as a JSON Pointer's reference token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int | float):
        return f"a number ({value!r})"
    if isinstance(value, str):
        return f"a string ({value[:40]!r})"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _json_name(kind) -> str:
    if typing.get_origin(kind) is list:
        return "an array"
    if typing.get_origin(kind) is dict:
        return "an object"
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}.get(kind, str(kind))

"""A trained model on disk: one folder per version, a `latest` link to the
newest version that passed its quality gate, and a `current` link to the
version being served.

    build/models/
        20261129T040000Z-1a2b3c4d/   model.ubj  metadata.json  predictions.csv  train.ipynb  train.html
        20261129T050000Z-5e6f7a8b/   ...
        latest  -> 20261129T050000Z-5e6f7a8b   (written by training)
        current -> 20261129T040000Z-1a2b3c4d   (switched by a deploy or a rollback, once the version
                                                loads and passes its sample check)

Models are stored in XGBoost's own format (never pickled) and are refused when
the file does not match the sha256 recorded in its metadata.
"""

import ctypes
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import treelite
import xgboost as xgb
from treelite.core import _LIB, _check_call
from treelite.gtil.gtil import GTILConfig

from diabetes.features import FEATURE_NAMES, to_model_input

MODEL_FILE = "model.ubj"
METADATA_FILE = "metadata.json"
CURRENT_LINK = "current"
LATEST_LINK = "latest"
# Up to this many rows, Treelite's tree walker answers faster than XGBoost,
# whose fixed cost per call (~140 us) dominates small batches; above it,
# XGBoost's vectorised predictor wins (measured by `make bench`).
SMALL_BATCH_ROWS = 32
_FLOAT32_POINTER = ctypes.POINTER(ctypes.c_float)


class ModelRefused(Exception):
    """The model on disk cannot be trusted or used; the message says why."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_version_id(model_bytes: bytes) -> str:
    """Sortable by training time, and unique to the model's content."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{sha256_of(model_bytes)[:8]}"


def publish_version(booster: xgb.Booster, metadata: dict, models_dir, extra_files=()) -> Path:
    """Write a new version and make it the latest one.

    The version folder is complete before it gets its final name, and the
    link is swapped with a rename: a reader sees the old version or the new
    one, never half of one. `extra_files` are (name, writer) pairs, each
    writer called with the path to write."""
    models_dir = Path(models_dir)
    model_bytes = bytes(booster.save_raw(raw_format="ubj"))
    version = new_version_id(model_bytes)
    metadata = {**metadata, "version": version, "model_file": MODEL_FILE, "model_sha256": sha256_of(model_bytes)}

    staging = models_dir / f".{version}.partial"
    staging.mkdir(parents=True)
    (staging / MODEL_FILE).write_bytes(model_bytes)
    (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    for name, write in extra_files:
        write(staging / name)
    version_dir = models_dir / version
    staging.rename(version_dir)
    point_link(models_dir, LATEST_LINK, version)
    return version_dir


def point_link(models_dir, link: str, version: str):
    """Make `models_dir/link` name `version`, atomically."""
    models_dir = Path(models_dir)
    next_link = models_dir / f".{link}.next"
    next_link.unlink(missing_ok=True)
    next_link.symlink_to(version, target_is_directory=True)
    next_link.rename(models_dir / link)


class TreelitePredictor:
    """Treelite's General Tree Inference Library, called with a configuration
    built once: `treelite.gtil.predict` parses a new one from JSON on every
    call, which is two thirds of its ~29 us for one row (this takes ~10 us).
    The result is the same (the tests compare every row with XGBoost's)."""

    def __init__(self, model: treelite.Model):
        if (model.input_type, model.output_type) != ("float32", "float32"):
            raise ModelRefused(
                f"Treelite reads this model as {model.input_type} -> {model.output_type}, expected float32 -> float32"
            )
        self.model = model
        self.config = GTILConfig(predict_type="default", nthread=1)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for a C-contiguous float32 matrix of rows."""
        output = np.empty(len(matrix), dtype=np.float32)
        _check_call(
            _LIB.TreeliteGTILPredict(
                self.model.handle,
                matrix.ctypes.data_as(_FLOAT32_POINTER),
                b"float32",
                ctypes.c_uint64(len(matrix)),
                output.ctypes.data_as(_FLOAT32_POINTER),
                self.config.handle,
            )
        )
        return output


@dataclass(frozen=True)
class ModelBundle:
    """A loaded model: XGBoost's booster (the reference, and the fast path for
    large batches) and the same trees in Treelite (the fast path for a few rows)."""

    booster: xgb.Booster
    metadata: dict

    @property
    def version(self) -> str:
        return self.metadata["version"]

    @cached_property
    def small_batch_predictor(self) -> "TreelitePredictor":
        return TreelitePredictor(treelite.frontend.from_xgboost(self.booster))

    def sample_check_passes(self) -> bool:
        """Does the model give the sample row the probability its training run recorded?"""
        sample = self.metadata["sample"]
        return abs(float(self.predict_proba([sample["values"]])[0]) - sample["probability"]) <= 1e-6

    def predict_proba(self, rows) -> np.ndarray:
        """Probability of diabetes (class 1) for each row of 8 raw values."""
        matrix = to_model_input(rows)
        if len(matrix) <= SMALL_BATCH_ROWS:
            return self.small_batch_predictor.predict(matrix)
        return self.booster.inplace_predict(matrix)

    def contributions(self, rows) -> np.ndarray:
        """XGBoost's TreeSHAP for each row: one column per feature, then the
        base value; each row sums to the margin (log-odds) of its prediction."""
        matrix = xgb.DMatrix(to_model_input(rows), feature_names=list(FEATURE_NAMES), nthread=1)
        return self.booster.predict(matrix, pred_contribs=True)


def load_metadata(model_dir) -> dict:
    return json.loads((Path(model_dir) / METADATA_FILE).read_text())


def check_metadata(metadata: dict):
    """Refuse metadata that the service would misread: features in another
    order than the model's, a threshold outside (0, 1), a model file that is
    not a plain name in the version's folder."""
    if tuple(metadata.get("feature_names", ())) != FEATURE_NAMES:
        raise ModelRefused(
            f"the model expects features {metadata.get('feature_names')}, this code sends {list(FEATURE_NAMES)}"
        )
    described = tuple(feature.get("name") for feature in metadata.get("features", ()))
    if described != FEATURE_NAMES:
        raise ModelRefused(
            f"the metadata describes features {list(described)}, in another order than the "
            f"model's {list(FEATURE_NAMES)}"
        )
    threshold = metadata.get("threshold")
    if type(threshold) not in (int, float) or not 0 < threshold < 1:
        raise ModelRefused(f"threshold {threshold!r} is not a probability strictly between 0 and 1")
    model_file = metadata.get("model_file")
    if not isinstance(model_file, str) or Path(model_file).name != model_file or model_file in ("", ".", ".."):
        raise ModelRefused(f"model_file {model_file!r} is not a plain file name")


def load_bundle(model_dir) -> ModelBundle:
    """Load a version folder (or the `current` link), refusing a model whose
    file does not match its recorded sha256 or whose features differ."""
    # Resolved once: a promotion that switches the link while this loads must
    # not pair one version's metadata with another's model file.
    model_dir = Path(model_dir).resolve()
    try:
        metadata = load_metadata(model_dir)
        check_metadata(metadata)
        model_bytes = (model_dir / metadata["model_file"]).read_bytes()
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelRefused(f"cannot read the model in {model_dir}: {error}") from error
    if sha256_of(model_bytes) != metadata.get("model_sha256"):
        raise ModelRefused(f"{model_dir / metadata['model_file']} does not match the sha256 in its metadata")
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(model_bytes))
    except xgb.core.XGBoostError as error:
        raise ModelRefused(f"XGBoost cannot load {model_dir}: {error}") from error
    if booster.num_features() != len(FEATURE_NAMES):
        raise ModelRefused(
            f"the model in {model_dir} reads {booster.num_features()} features, not {len(FEATURE_NAMES)}"
        )
    # One thread per prediction: the server runs several workers, and XGBoost's
    # default of one OpenMP thread per core would make them fight for the cores.
    booster.set_param({"nthread": 1})
    return ModelBundle(booster, metadata)

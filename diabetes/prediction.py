"""A loaded model that predicts: XGBoost's booster, the same trees folded into
step functions when each splits on one feature (diabetes.additive_trees), and
otherwise in Treelite for small batches. The files it is loaded from, and the checks they
pass first, are diabetes.model_store's."""

import ctypes
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import treelite
import xgboost as xgb
from treelite.core import _LIB, _check_call
from treelite.gtil.gtil import GTILConfig

from diabetes.additive_trees import AdditiveTrees, fold_trees
from diabetes.features import FEATURE_NAMES, FEW_ROWS, to_model_input, to_model_input_rows
from diabetes.model_metadata import ModelMetadata
from diabetes.model_store import ModelRefused, read_checked_model

_FLOAT32_POINTER = ctypes.POINTER(ctypes.c_float)


class TreelitePredictor:
    """Treelite's General Tree Inference Library (GTIL) with one thread."""

    def __init__(self, model: treelite.Model):
        if (model.input_type, model.output_type) != ("float32", "float32"):
            raise ModelRefused(
                f"Treelite reads this model as {model.input_type} -> {model.output_type}, expected float32 -> float32"
            )
        self.model = model
        self.config = GTILConfig(predict_type="default", nthread=1)

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities for a C-contiguous float32 matrix of rows."""
        # Treelite's private C entry point, with a configuration parsed once:
        # its public `treelite.gtil.predict` parses a new configuration from
        # JSON, checks and copies the input and asks the library for the
        # output's shape at every call, which for one row costs about as much
        # as walking the trees; Treelite has no public call that keeps them.
        # Treelite is pinned, and the tests compare every row with XGBoost's.
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
    """A loaded model: XGBoost's booster (the reference), its trees folded into
    step functions when they are additive (the fast path for any batch), and
    otherwise the same trees in Treelite (the fast path for a few rows)."""

    booster: xgb.Booster
    metadata: ModelMetadata
    additive_trees: AdditiveTrees | None = None

    @property
    def version(self) -> str:
        return self.metadata.version

    @cached_property
    def small_batch_predictor(self) -> "TreelitePredictor":
        return TreelitePredictor(treelite.frontend.from_xgboost(self.booster))

    def sample_check_passes(self) -> bool:
        """Does the model give the sample row the probability its training run recorded?"""
        sample = self.metadata.sample
        return abs(float(self.predict_proba([sample.values])[0]) - sample.probability) <= 1e-6

    def predict_proba(self, rows) -> np.ndarray:
        """Probability of diabetes (class 1) for each row of 8 raw values."""
        if self.additive_trees is not None:
            if len(rows) <= FEW_ROWS:
                return self.additive_trees.predict_rows(to_model_input_rows(rows))
            return self.additive_trees.predict(to_model_input(rows))
        matrix = to_model_input(rows)
        if len(matrix) <= FEW_ROWS:
            return self.small_batch_predictor.predict(matrix)
        return self.booster.inplace_predict(matrix)

    def contributions(self, rows) -> np.ndarray:
        """XGBoost's TreeSHAP for each row: one column per feature, then the
        base value; each row sums to the margin (log-odds) of its prediction."""
        matrix = xgb.DMatrix(to_model_input(rows), feature_names=list(FEATURE_NAMES), nthread=1)
        return self.booster.predict(matrix, pred_contribs=True)


def load_bundle(model_dir) -> ModelBundle:
    """Load a version folder (or the `current` link), refusing a model whose
    file does not match its recorded sha256 or whose features differ."""
    model_dir, metadata, model_bytes = read_checked_model(model_dir)
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
    return ModelBundle(booster, metadata, fold_trees(booster))

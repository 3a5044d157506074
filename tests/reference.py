"""What a model version must answer, computed without any of the service's
code: XGBoost's own Booster loaded from the version's model file, the
threshold from its metadata.json, and "not measured" as that metadata
declares it (null, or 0 for a feature whose zero means missing)."""

import json
from functools import cache
from pathlib import Path

import numpy as np
import xgboost as xgb

# Probabilities are float32; for a few rows the service walks the trees with
# Treelite, which adds them up in another order than XGBoost: a few ulps.
PROBABILITY_TOLERANCE = 1e-6
# Margins and TreeSHAP contributions are sums over every tree, in float32.
MARGIN_TOLERANCE = 1e-5


class ReferenceModel:
    def __init__(self, model_dir: Path):
        self.metadata = json.loads((model_dir / "metadata.json").read_text())
        self.version = self.metadata["version"]
        self.threshold = self.metadata["threshold"]
        self.names = [feature["name"] for feature in self.metadata["features"]]
        self.zero_means_missing = np.array([feature["zero_means_missing"] for feature in self.metadata["features"]])
        self.booster = xgb.Booster(model_file=str(model_dir / self.metadata["model_file"]))
        self.booster.set_param({"nthread": 1})

    def matrix(self, rows) -> xgb.DMatrix:
        """Rows of the 8 raw values in the model's order, None for not measured."""
        values = np.array([[np.nan if value is None else value for value in row] for row in rows], dtype=np.float32)
        assert values.shape[1:] == (len(self.names),), values.shape
        missing = values[:, self.zero_means_missing]
        values[:, self.zero_means_missing] = np.where(missing == 0, np.nan, missing)
        return xgb.DMatrix(values, missing=np.nan, nthread=1)

    def probabilities(self, rows) -> np.ndarray:
        return self.booster.predict(self.matrix(rows))

    def labels(self, rows) -> np.ndarray:
        return (self.probabilities(rows) >= self.threshold).astype(np.int64)

    def margins(self, rows) -> np.ndarray:
        return self.booster.predict(self.matrix(rows), output_margin=True)

    def contributions(self, rows) -> np.ndarray:
        """TreeSHAP: one column per feature, then the base value."""
        return self.booster.predict(self.matrix(rows), pred_contribs=True)

    def assert_probabilities(self, rows, answered):
        answered = np.asarray(answered, dtype=np.float64)
        expected = self.probabilities(rows)
        assert answered.shape == expected.shape, (answered.shape, expected.shape)
        np.testing.assert_allclose(answered, expected, rtol=0, atol=PROBABILITY_TOLERANCE)

    def assert_labels(self, rows, answered, answered_probabilities=None):
        """Each label is 1 when the model's probability is at or above the threshold.
        A row within float error of the threshold may go either way, but then its
        label must agree with the probability answered beside it, if any."""
        answered = np.asarray(answered)
        expected_probabilities = self.probabilities(rows)
        assert answered.shape == expected_probabilities.shape
        assert set(np.unique(answered)) <= {0, 1}, np.unique(answered)
        clear = np.abs(expected_probabilities - self.threshold) > PROBABILITY_TOLERANCE
        assert np.array_equal(answered[clear], (expected_probabilities[clear] >= self.threshold).astype(np.int64))
        if answered_probabilities is not None:
            assert np.array_equal(answered, (np.asarray(answered_probabilities) >= self.threshold).astype(np.int64))

    def assert_explanations(self, rows, explanations):
        """/predict's explanations: XGBoost's TreeSHAP contribution of each named
        feature, the base value, and their sum, the margin."""
        expected = self.contributions(rows)
        margins = self.margins(rows)
        assert len(explanations) == len(expected)
        for explanation, contributions, margin in zip(explanations, expected, margins):
            assert list(explanation["contributions"]) == self.names
            np.testing.assert_allclose(
                [explanation["contributions"][name] for name in self.names],
                contributions[:-1],
                rtol=0,
                atol=MARGIN_TOLERANCE,
            )
            assert abs(explanation["base_value"] - contributions[-1]) <= MARGIN_TOLERANCE
            assert abs(explanation["margin"] - margin) <= MARGIN_TOLERANCE


@cache
def reference_model(model_dir: Path) -> ReferenceModel:
    return ReferenceModel(model_dir)

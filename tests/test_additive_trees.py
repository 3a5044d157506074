"""Trees folded into step functions answer what XGBoost answers, row for row,
and models that are not additive are left to XGBoost."""

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from diabetes.additive_trees import fold_trees
from diabetes.features import FEATURE_NAMES

DATA = "data/pima-indians-diabetes.data.csv"


@pytest.fixture(scope="module")
def pima():
    table = pd.read_csv(DATA, header=None)
    rows = table.iloc[:, :8].to_numpy(np.float32)
    # Missing values in training give the trees default branches of both kinds.
    rows[np.random.default_rng(1).random(rows.shape) < 0.1] = np.nan
    return rows, table.iloc[:, 8].to_numpy()


def train(pima, **parameters) -> xgb.Booster:
    rows, labels = pima
    data = xgb.DMatrix(rows, labels, feature_names=list(FEATURE_NAMES))
    settings = {"objective": "binary:logistic", "eta": 0.1, "subsample": 0.7, "seed": 0, "nthread": 1}
    return xgb.train({**settings, **parameters}, data, num_boost_round=120)


def hard_rows(booster: xgb.Booster, pima) -> np.ndarray:
    """The training rows, random rows with NaN, and every split threshold
    itself and the float32 values on either side of it."""
    rows, _ = pima
    rng = np.random.default_rng(2)
    scattered = rows[rng.integers(0, len(rows), 2000)] * rng.uniform(0, 2, (2000, 8)).astype(np.float32)
    scattered[rng.random(scattered.shape) < 0.2] = np.nan
    splits = booster.trees_to_dataframe().query("Feature != 'Leaf'")
    edges = []
    for feature, threshold in zip(splits.Feature, splits.Split):
        at = np.float32(threshold)
        for value in (np.nextafter(at, np.float32(-np.inf)), at, np.nextafter(at, np.float32(np.inf))):
            row = rows[0].copy()
            row[FEATURE_NAMES.index(feature)] = value
            edges.append(row)
    return np.ascontiguousarray(np.vstack([rows, scattered, np.array(edges, dtype=np.float32)]))


@pytest.mark.parametrize(
    "parameters",
    [
        {"max_depth": 1},
        {"max_depth": 1, "base_score": 0.2},
        # Deeper trees, each kept to one feature by the constraints.
        {"max_depth": 3, "interaction_constraints": str([[i] for i in range(8)])},
    ],
    ids=["stumps", "stumps with a base score", "one feature per tree, depth 3"],
)
def test_folded_trees_give_xgboosts_probability_for_every_row(pima, parameters):
    booster = train(pima, **parameters)
    folded = fold_trees(booster)
    assert folded is not None
    rows = hard_rows(booster, pima)
    assert np.abs(folded.predict(rows) - booster.inplace_predict(rows)).max() < 1e-6
    one_row = rows[:1]
    assert np.abs(folded.predict(one_row) - booster.inplace_predict(one_row)).max() < 1e-6


@pytest.mark.parametrize(
    "parameters",
    [{"max_depth": 3}, {"max_depth": 1, "objective": "reg:squarederror"}, {"max_depth": 1, "booster": "dart"}],
    ids=["trees with interactions", "another objective", "another booster"],
)
def test_models_that_are_not_additive_are_not_folded(pima, parameters):
    assert fold_trees(train(pima, **parameters)) is None

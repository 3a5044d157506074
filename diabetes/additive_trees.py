"""Trees that each split on one feature, folded into one step function per
feature: the fast path for large batches.

A boosted model whose every tree tests a single feature (stumps, the default
model, are the usual case) is an additive model: its margin is a constant plus
one function of each feature, and each of those functions is a step function
whose steps sit at the trees' split thresholds. Folding the trees into one
table per feature turns a prediction into one binary search per feature,
instead of a walk through every tree: the cost no longer grows with the number
of trees.

The tables reproduce XGBoost's own decisions exactly: a value goes left when it
is below the split threshold, compared in float32 as XGBoost compares it, and a
missing value (NaN) takes each tree's default branch. Only the order in which
the trees' outputs are added differs (here in float64), so the probabilities
agree with XGBoost's to float32 rounding; the tests compare every row.

A model this cannot fold (trees that split on two features, categorical
splits, another objective or booster) gets `None` from `fold_trees`, and is
predicted by XGBoost itself.
"""

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np
import xgboost as xgb

from diabetes.features import FEW_ROWS

_NO_CHILD = -1


@dataclass(frozen=True)
class StepFunction:
    """One feature's share of the margin: `values[k]` for a value with `k`
    thresholds at or below it, `missing` for NaN."""

    feature: int
    thresholds: np.ndarray  # float32, ascending
    values: np.ndarray  # float64, len(thresholds) + 1
    missing: float
    # The same as Python lists, for a few rows, where NumPy's cost per call
    # outweighs its speed per value; float32 values compare exactly as floats.
    threshold_list: list = field(init=False, repr=False)
    value_list: list = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "threshold_list", self.thresholds.tolist())
        object.__setattr__(self, "value_list", self.values.tolist())


@dataclass(frozen=True)
class AdditiveTrees:
    constant_margin: float
    steps: tuple[StepFunction, ...]

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities (float32) for a float32 matrix of rows, as XGBoost's
        binary:logistic gives them."""
        if len(matrix) <= FEW_ROWS:
            return self.predict_rows(matrix.tolist())
        return self.predict_columns(matrix)

    def predict_columns(self, matrix: np.ndarray) -> np.ndarray:
        """`predict` with NumPy over whole columns, for any number of rows."""
        margin = np.full(len(matrix), self.constant_margin)
        for step in self.steps:
            column = matrix[:, step.feature]
            contribution = step.values[np.searchsorted(step.thresholds, column, side="right")]
            missing = np.isnan(column)
            if missing.any():
                contribution[missing] = step.missing
            margin += contribution
        return (1.0 / (1.0 + np.exp(-margin))).astype(np.float32)

    def predict_rows(self, rows: list[list[float]]) -> np.ndarray:
        """`predict` for a few rows given as Python lists of float32 values."""
        return np.array([self._probability_of_row(row) for row in rows], dtype=np.float32)

    def _probability_of_row(self, row: list) -> float:
        margin = self.constant_margin
        for step in self.steps:
            value = row[step.feature]
            if math.isnan(value):
                margin += step.missing
            else:
                margin += step.value_list[bisect_right(step.threshold_list, value)]
        return 1.0 / (1.0 + math.exp(-margin))


def fold_trees(booster: xgb.Booster) -> AdditiveTrees | None:
    """The booster's trees as step functions, or None when they are not additive."""
    learner = json.loads(booster.save_raw(raw_format="json"))["learner"]
    if learner["objective"]["name"] != "binary:logistic" or learner["gradient_booster"]["name"] != "gbtree":
        return None
    parameters = learner["learner_model_param"]
    if parameters["num_class"] != "0" or parameters.get("num_target", "1") != "1":
        return None
    base_score = float(parameters["base_score"].strip("[]"))
    constant_margin = float(np.log(base_score / (1.0 - base_score)))
    trees_by_feature: dict[int, list[dict]] = {}
    for tree in learner["gradient_booster"]["model"]["trees"]:
        if any(tree["split_type"]) or tree["categories_nodes"]:
            return None
        features = {feature for node, feature in enumerate(tree["split_indices"]) if not _is_leaf(tree, node)}
        if not features:
            constant_margin += tree["split_conditions"][0]
        elif len(features) == 1:
            trees_by_feature.setdefault(features.pop(), []).append(tree)
        else:
            return None
    steps = tuple(_step_function(feature, trees) for feature, trees in sorted(trees_by_feature.items()))
    return AdditiveTrees(constant_margin, steps)


def _is_leaf(tree: dict, node: int) -> bool:
    return tree["left_children"][node] == _NO_CHILD


def _step_function(feature: int, trees: list[dict]) -> StepFunction:
    thresholds = np.unique(
        np.array(
            [
                tree["split_conditions"][node]
                for tree in trees
                for node in range(len(tree["left_children"]))
                if not _is_leaf(tree, node)
            ],
            dtype=np.float32,
        )
    )
    # Every value in [thresholds[k - 1], thresholds[k]) takes the same branches,
    # so the interval's lower end stands for all of it.
    representatives = np.concatenate([[-np.inf], thresholds]).astype(np.float32)
    values = np.zeros(len(representatives))
    missing = 0.0
    for tree in trees:
        values += [_leaf_value(tree, value) for value in representatives]
        missing += _leaf_value(tree, np.float32(np.nan))
    return StepFunction(feature, thresholds, values, missing)


def _leaf_value(tree: dict, value: np.float32) -> float:
    node = 0
    while not _is_leaf(tree, node):
        if np.isnan(value):
            go_left = bool(tree["default_left"][node])
        else:
            go_left = value < np.float32(tree["split_conditions"][node])
        node = tree["left_children"][node] if go_left else tree["right_children"][node]
    return tree["split_conditions"][node]

"""The model's inputs: names, meaning and units, in the order the model reads them."""

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Feature:
    name: str
    meaning: str
    unit: str
    zero_means_missing: bool = False


# Names as the original endpoint spelled them (serum_insuling included); the
# data set records "not measured" as 0 for five of them.
FEATURES = (
    Feature("times_pregnant", "number of times pregnant", "count"),
    Feature("glucose", "plasma glucose, 2 h oral glucose tolerance test", "mg/dl", True),
    Feature("blood_pressure", "diastolic blood pressure", "mm Hg", True),
    Feature("skin_fold_thick", "triceps skin fold thickness", "mm", True),
    Feature("serum_insuling", "2-hour serum insulin", "mu U/ml", True),
    Feature("mass_index", "body mass index", "kg/m^2", True),
    Feature("diabetes_pedigree", "diabetes pedigree function", "score"),
    Feature("age", "age", "years"),
)
FEATURE_NAMES = tuple(feature.name for feature in FEATURES)
LABEL_NAME = "class_var"
# A batch of at most this many rows goes the fast path for a few rows, one row
# or one value at a time in plain Python (or Treelite), where NumPy's (or
# XGBoost's) cost per call outweighs its speed per value: checking the values,
# predicting, counting the predictions, writing the answer. Every such path
# takes its cut-off from here, and tests/test_fast_paths.py holds each equal
# to its reference path on both sides of it. Why 16, measured: the paths
# cross over at different sizes (checking JSON numbers, the cheapest, at about
# 10 rows; Treelite against XGBoost at 8 to 35, earlier the larger the model;
# the others at 24 to 90). Up to 16 every other path is faster than its other
# way, and those two lose little there, while the usual request (a row to a
# dozen) takes the fast way everywhere.
FEW_ROWS = 16

_ZERO_MEANS_MISSING = np.array([feature.zero_means_missing for feature in FEATURES])
_ZERO_MEANS_MISSING_COLUMNS = tuple(np.flatnonzero(_ZERO_MEANS_MISSING).tolist())


def to_model_input(rows) -> np.ndarray:
    """Rows of the 8 raw values, as the model reads them: float32, with the
    zeros that mean "not measured" turned into NaN, which XGBoost treats as
    missing and routes down the branch it learned for missing values."""
    matrix = np.array(rows, dtype=np.float32, ndmin=2, order="C")
    if matrix.shape[1] != len(FEATURES):
        raise ValueError(f"expected {len(FEATURES)} values per row, got {matrix.shape[1]}")
    # One masked write over the whole matrix: selecting the columns by a mask
    # copies them, and for a row or a few that copying is most of the work.
    np.putmask(matrix, (matrix == 0) & _ZERO_MEANS_MISSING, np.nan)
    return matrix


def to_model_input_rows(rows) -> list[list[float]]:
    """`to_model_input` as Python lists, for a few rows, where NumPy's cost per
    call outweighs its speed per value: the same float32 values (as floats)
    and NaN for the same zeros."""
    lists = np.asarray(rows, dtype=np.float32).reshape(-1, len(FEATURES)).tolist()
    for row in lists:
        for column in _ZERO_MEANS_MISSING_COLUMNS:
            if row[column] == 0:
                row[column] = math.nan
    return lists

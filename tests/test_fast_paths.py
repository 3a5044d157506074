"""Every fast path gives what its reference path gives, on any input hypothesis
draws, and on both sides of the one cut-off for a few rows (FEW_ROWS): the
model's input as lists or as a matrix; trees folded into step functions, row
by row or over whole columns; Treelite and the folded trees against XGBoost;
a loaded model's choice among them; predictions counted one by one or in a
batch; the numbers checked a few at a time, or all at once by NumPy, against
each value read alone.

Two more pairs are held equal beside their own tests: /predict's answer
written from the probabilities' text or from dicts (test_responses.py), and a
body's values checked by `Contract.matrix` or value by value, with or without
the scan of its text (test_contract.py).

No trained model is needed: small boosters are trained here, on the data set.
"""

import collections
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diabetes.additive_trees import fold_trees
from diabetes.features import FEATURE_NAMES, FEW_ROWS, to_model_input, to_model_input_rows
from diabetes.number_checks import FLOAT32_MAX, few_numbers, number_of, numbers_at_c_speed
from diabetes.observability import count_predictions
from diabetes.prediction import ModelBundle

DATA = "data/pima-indians-diabetes.data.csv"
WIDTH = len(FEATURE_NAMES)
# Batches from one row to well past the cut-off, so that both paths are drawn often.
BATCH_SIZES = st.integers(min_value=1, max_value=2 * FEW_ROWS + 1)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pima():
    table = pd.read_csv(DATA, header=None)
    return table.iloc[:, :WIDTH].to_numpy(np.float32), table.iloc[:, WIDTH].to_numpy()


def trained(pima, rounds, **parameters) -> xgb.Booster:
    rows, labels = pima
    settings = {"objective": "binary:logistic", "eta": 0.1, "subsample": 0.7, "seed": 0, "nthread": 1}
    booster = xgb.train({**settings, **parameters}, xgb.DMatrix(rows, labels), num_boost_round=rounds)
    booster.set_param({"nthread": 1})
    return booster


@dataclass(frozen=True)
class Model:
    booster: xgb.Booster
    bundle: ModelBundle  # as load_bundle makes it: the booster, and its trees folded when they are additive
    split_values: list  # every split threshold, and the float32 values on either side of it


def model(booster: xgb.Booster) -> Model:
    splits = np.float32(booster.trees_to_dataframe().query("Feature != 'Leaf'").Split)
    around = {
        float(value)
        for at in splits
        for value in (np.nextafter(at, np.float32(-np.inf)), at, np.nextafter(at, np.float32(np.inf)))
    }
    return Model(booster, ModelBundle(booster, metadata={}, additive_trees=fold_trees(booster)), sorted(around))


@pytest.fixture(scope="module")
def stumps(pima) -> Model:
    """An additive model, as the default training makes."""
    return model(trained(pima, 60, max_depth=1))


@pytest.fixture(scope="module")
def deep_trees(pima) -> Model:
    """A model whose trees split on several features: Treelite's and XGBoost's."""
    return model(trained(pima, 30, max_depth=4))


def raw_rows(draw, model: Model, size=BATCH_SIZES) -> np.ndarray:
    """Rows of raw values as the contract makes them (float32, NaN for a value
    not measured): zeros (which mean "not measured" for five features), NaN,
    the model's split thresholds and their neighbours, anything between."""
    value = st.one_of(
        st.just(0.0),
        st.just(math.nan),
        st.sampled_from(model.split_values),
        st.floats(min_value=-10, max_value=1000, width=32),
    )
    count = draw(size)
    return np.array(draw(st.lists(value, min_size=count * WIDTH, max_size=count * WIDTH)), np.float32).reshape(
        count, WIDTH
    )


# ---- the model's input -------------------------------------------------------------------
@FAST
@given(data=st.data())
def test_the_model_input_as_lists_holds_the_values_of_the_model_input_as_a_matrix(stumps, data):
    rows = raw_rows(data.draw, stumps)
    lists = to_model_input_rows(rows)
    assert all(type(value) is float for row in lists for value in row)
    assert np.array_equal(np.array(lists, dtype=np.float64), to_model_input(rows).astype(np.float64), equal_nan=True)


# ---- the three back ends ---------------------------------------------------------------
@FAST
@given(data=st.data())
def test_folded_trees_row_by_row_give_what_they_give_over_whole_columns(stumps, data):
    folded = stumps.bundle.additive_trees
    rows = raw_rows(data.draw, stumps)
    by_rows = folded.predict_rows(to_model_input_rows(rows))
    by_columns = folded.predict_columns(to_model_input(rows))
    assert by_rows.dtype == by_columns.dtype == np.float32
    assert np.abs(by_rows - by_columns).max() <= 1e-7
    assert np.abs(by_columns - stumps.booster.inplace_predict(to_model_input(rows))).max() < 1e-6


@FAST
@given(data=st.data())
def test_treelite_gives_xgboosts_probability_for_every_row(deep_trees, data):
    walker = deep_trees.bundle.small_batch_predictor
    matrix = to_model_input(raw_rows(data.draw, deep_trees))
    assert np.abs(walker.predict(matrix) - deep_trees.booster.inplace_predict(matrix)).max() < 1e-6


@pytest.mark.parametrize("name", ["stumps", "deep_trees"])
@FAST
@given(data=st.data())
def test_a_loaded_model_gives_xgboosts_probabilities_for_a_batch_of_any_size(request, name, data):
    model = request.getfixturevalue(name)
    assert (model.bundle.additive_trees is not None) == (name == "stumps")
    rows = raw_rows(data.draw, model)
    probabilities = model.bundle.predict_proba(rows)
    assert probabilities.shape == (len(rows),)
    assert np.abs(probabilities - model.booster.inplace_predict(to_model_input(rows))).max() < 1e-6


# ---- the predictions counted for the metrics --------------------------------------------
@FAST
@given(
    probabilities=BATCH_SIZES.flatmap(
        lambda size: st.lists(st.floats(min_value=0, max_value=1, width=32), min_size=size, max_size=size)
    ),
    threshold=st.floats(min_value=0, max_value=1) | st.sampled_from([0.5, 0.1, 0.3, 0.7]),
)
def test_predictions_counted_in_a_batch_are_counted_as_one_by_one(probabilities, threshold):
    probabilities = np.array(probabilities, dtype=np.float32)
    in_a_batch, one_by_one = collections.Counter(), collections.Counter()
    count_predictions(probabilities, threshold, in_a_batch)
    for index in range(len(probabilities)):
        count_predictions(probabilities[index : index + 1], threshold, one_by_one)
    assert in_a_batch == one_by_one
    assert in_a_batch.total() == len(probabilities)


# ---- the numbers of a body --------------------------------------------------------------
JSON_VALUE = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(),
    st.floats(width=32),
    st.sampled_from([None, True, False, "1", "", FLOAT32_MAX, -FLOAT32_MAX, 3.4028236e38, 1e39, [], {}]),
)
TEXT_VALUE = st.text(alphabet="0123456789+-.eE \t,_n\u0662\uff12", max_size=8) | st.sampled_from(
    ["1e38", "3.4028235e38", "3.5e38", "1e400", "nan", "inf", ".5", "5.", "+.5e-3", "1e", " 7 ", "\t", ""]
)


def flat_values(value):
    """A batch's values, flat: one to well past the cut-off rows of them."""
    return BATCH_SIZES.flatmap(lambda rows: st.lists(value, min_size=rows * WIDTH, max_size=rows * WIDTH))


def each_alone(flat, texts, missing_allowed) -> list | None:
    """The reference: each value read alone; None when one is refused."""
    numbers = [number_of(value, texts, missing_allowed) for value in flat]
    return None if None in numbers else numbers


def assert_the_same_numbers(fast, reference):
    assert fast is None or reference is not None, "the fast path took a value that the reference refuses"
    if fast is not None:
        assert np.array_equal(np.asarray(fast, dtype=np.float64), np.array(reference), equal_nan=True)


@FAST
@given(flat=flat_values(JSON_VALUE) | flat_values(st.floats(-1e6, 1e6)), missing_allowed=st.booleans())
def test_json_numbers_checked_a_few_or_all_at_once_are_those_read_one_by_one(flat, missing_allowed):
    reference = each_alone(flat, False, missing_allowed)
    assert_the_same_numbers(few_numbers(flat, texts=False), each_alone(flat, False, missing_allowed=False))
    assert_the_same_numbers(numbers_at_c_speed(flat, False, missing_allowed), reference)
    if all(type(value) is float and abs(value) <= FLOAT32_MAX for value in flat):
        assert few_numbers(flat, texts=False) is not None
        assert numbers_at_c_speed(flat, False, missing_allowed) is not None


@FAST
@given(flat=flat_values(TEXT_VALUE) | flat_values(st.floats(-1e6, 1e6).map(str)), missing_allowed=st.booleans())
def test_texts_checked_a_few_or_all_at_once_are_the_numbers_read_one_by_one(flat, missing_allowed):
    reference = each_alone(flat, True, missing_allowed)
    assert_the_same_numbers(few_numbers(flat, texts=True), each_alone(flat, True, missing_allowed=False))
    assert_the_same_numbers(numbers_at_c_speed(flat, True, missing_allowed), reference)
    if reference is not None and "e" not in "".join(flat).lower():
        assert numbers_at_c_speed(flat, True, missing_allowed) is not None


@FAST
@given(flat=flat_values(st.floats()), datatype=st.sampled_from(["<f4", "<f8"]))
def test_binary_numbers_checked_a_few_or_all_at_once_are_those_read_one_by_one(flat, datatype):
    with np.errstate(over="ignore"):
        tensor = np.array(flat, dtype=np.float64).astype(datatype)
    reference = each_alone(tensor.tolist(), False, missing_allowed=False)
    assert_the_same_numbers(few_numbers(tensor, texts=False), reference)
    assert_the_same_numbers(numbers_at_c_speed(tensor, False, missing_allowed=False), reference)

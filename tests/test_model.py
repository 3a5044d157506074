"""Loading a published model, and its prediction paths: the trees folded into
step functions (the tests' model, like the default one, is made of stumps),
and for trees that cannot be folded, Treelite for a few rows and XGBoost for
more."""

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest

from diabetes.features import FEATURE_NAMES, FEW_ROWS, to_model_input
from diabetes.model_store import MODEL_FILE, ModelRefused
from diabetes.prediction import load_bundle

pytestmark = pytest.mark.model


@pytest.fixture(scope="module", params=["folded", "not folded"])
def bundle_and_rows(trained, request):
    latest = trained["models_dir"] / "latest"
    rows = pd.read_csv(latest / "predictions.csv")[list(FEATURE_NAMES)].to_numpy()
    bundle = load_bundle(latest)
    assert bundle.additive_trees is not None
    if request.param == "not folded":
        bundle = dataclasses.replace(bundle, additive_trees=None)
    return bundle, rows


def test_one_row_at_a_time_gives_xgboosts_probability_for_every_row(bundle_and_rows):
    bundle, rows = bundle_and_rows
    reference = bundle.booster.inplace_predict(to_model_input(rows))
    one_by_one = np.array([bundle.predict_proba(row[None, :])[0] for row in rows])
    assert np.abs(one_by_one - reference).max() < 1e-6


@pytest.mark.parametrize("size", [FEW_ROWS, FEW_ROWS + 1, 768])
def test_batches_on_either_side_of_the_switch_give_xgboosts_probabilities(bundle_and_rows, size):
    bundle, rows = bundle_and_rows
    reference = bundle.booster.inplace_predict(to_model_input(rows[:size]))
    assert np.abs(bundle.predict_proba(rows[:size]) - reference).max() < 1e-6


@pytest.mark.parametrize("damage", ["tampered", "truncated", "missing"])
def test_a_damaged_model_file_is_refused(trained, tmp_path, damage):
    copy = shutil.copytree((trained["models_dir"] / "latest").resolve(), tmp_path / "version")
    model = copy / MODEL_FILE
    content = model.read_bytes()
    if damage == "tampered":
        model.write_bytes(content[:100] + bytes([content[100] ^ 1]) + content[101:])
    elif damage == "truncated":
        model.write_bytes(content[: len(content) // 2])
    else:
        model.unlink()
    with pytest.raises(ModelRefused):
        load_bundle(copy)

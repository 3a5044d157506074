"""The training notebook, run by papermill through `make train`."""

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from diabetes import training
from diabetes.data import read_training_data
from diabetes.features import FEATURE_NAMES, FEW_ROWS, LABEL_NAME, to_model_input
from diabetes.model_store import publish_version
from diabetes.prediction import load_bundle
from tests.conftest import FAST_PARAMS, PROJECT, make


@pytest.mark.model
def test_training_publishes_a_loadable_model_with_its_metadata(trained):
    latest = trained["models_dir"] / "latest"
    bundle = load_bundle(latest)
    metadata = bundle.metadata

    assert latest.is_symlink() and latest.resolve().name == bundle.version
    assert metadata.feature_names == list(FEATURE_NAMES)
    assert 0.7 <= metadata.metrics.test_roc_auc <= 1
    assert 0 < metadata.metrics.test_accuracy <= 1
    assert metadata.metrics.cv_roc_auc_std >= 0
    assert metadata.parameters.n_estimators == 60, "the fast parameter file was not applied"
    assert metadata.parameters.cv_folds == 2 and metadata.parameters.cv_repeats == 1
    assert metadata.data.source == "data/pima-indians-diabetes.data.csv" and metadata.data.query is None
    assert metadata.data.sha256 == read_training_data(PROJECT / "data/pima-indians-diabetes.data.csv").sha256
    assert set(metadata.library_versions) >= {"python", "xgboost", "scikit-learn", "pandas", "numpy"}
    assert all(f.training_min <= f.training_max for f in metadata.features)
    assert 1 <= bundle.booster.num_boosted_rounds() == metadata.trees <= 60


@pytest.mark.model
def test_the_metadata_reports_cv_test_intervals_calibration_and_the_article(trained):
    metadata = load_bundle(trained["models_dir"] / "latest").metadata
    metrics = metadata.metrics
    for name in ("roc_auc", "accuracy", "brier", "log_loss"):
        assert getattr(metrics, f"cv_{name}_std") >= 0 and 0 < getattr(metrics, f"cv_{name}_mean")
    for name in ("roc_auc", "accuracy"):
        low, high = getattr(metrics, f"test_{name}_interval")
        assert low <= getattr(metrics, f"test_{name}") <= high and high - low > 0.02
    assert 0 < metrics.test_brier < 0.25 and 0 < metrics.test_brier_uncalibrated < 0.25
    assert set(metadata.calibration.cv_brier) == {"none", "platt", "isotonic"}
    assert metadata.calibration.method in ("none", "platt")
    assert metadata.comparison["article"].trees >= 1
    assert metadata.threshold == metadata.parameters.threshold == 0.5
    card = metadata.model_card
    assert "78.74%" in card.versus_article and "0.5" in card.threshold and "TreeSHAP" in card.explanation


@pytest.mark.model
def test_the_version_keeps_a_snapshot_of_its_rows_and_their_out_of_fold_predictions(trained):
    latest = (trained["models_dir"] / "latest").resolve()
    data = load_bundle(latest).metadata.data
    snapshot = latest / data.snapshot
    assert hashlib.sha256(snapshot.read_bytes()).hexdigest() == data.sha256
    assert len(pd.read_csv(snapshot)) == data.rows == 768
    out_of_fold = pd.read_csv(latest / "cv_predictions.csv")
    assert len(out_of_fold) == 514 and out_of_fold["probability"].between(0, 1).all()


def test_cross_validated_early_stopping_stops_where_the_mean_held_out_loss_is_lowest():
    rows = read_training_data(PROJECT / "data/pima-indians-diabetes.data.csv").rows
    X, y = to_model_input(rows[list(FEATURE_NAMES)].to_numpy()), rows[LABEL_NAME].to_numpy()
    folds = training.repeated_folds(y, 3, [0, 1])
    parameters = training.booster_parameters(2, 0.3, 0.8, 1.0, 1.0, 1.0, seed=0, threads=1)
    cv = training.cross_validate(parameters, X, y, folds, max_trees=200, early_stopping_rounds=10)
    assert len(cv.folds) == 6 and cv.trees == int(np.argmin(cv.curve)) + 1 < 200
    assert all(not np.isnan(probabilities).any() for probabilities in cv.out_of_fold.values())
    same = training.cross_validate(parameters, X, y, folds, max_trees=200, early_stopping_rounds=10)
    assert same.folds == cv.folds, "the same folds and parameters should give the same figures"


def test_platt_scaling_folded_into_the_trees_is_served_alike_by_every_path(tmp_path):
    rows = read_training_data(PROJECT / "data/pima-indians-diabetes.data.csv").rows
    X, y = to_model_input(rows[list(FEATURE_NAMES)].to_numpy()), rows[LABEL_NAME].to_numpy()
    booster = training.fit(training.booster_parameters(2, 0.1, 0.8, 1.0, 1.0, 1.0, seed=0, threads=1), X, y, 40)
    slope, intercept = 0.8, -0.3
    calibrated = training.calibrated_booster(booster, slope, intercept)
    margin = booster.inplace_predict(X, predict_type="margin")
    assert np.abs(calibrated.inplace_predict(X, predict_type="margin") - (slope * margin + intercept)).max() < 1e-4

    sample = [1, 106, 70, 28, 135, 34.2, 0.142, 22]
    # A training run's metadata (tests/metadata/format-2.json), but for this model's trees and sample.
    metadata = {
        **json.loads((PROJECT / "tests" / "metadata" / "format-2.json").read_text()),
        "trees": 40,
        "sample": {"values": sample, "probability": float(calibrated.inplace_predict(to_model_input(sample))[0])},
    }
    bundle = load_bundle(publish_version(calibrated, metadata, tmp_path))
    raw = rows[list(FEATURE_NAMES)].to_numpy()
    expected = calibrated.inplace_predict(X)
    assert np.abs(bundle.predict_proba(raw) - expected).max() < 1e-6
    assert np.abs(bundle.predict_proba(raw[:FEW_ROWS]) - expected[:FEW_ROWS]).max() < 1e-6
    contributions = bundle.contributions(raw[:50])
    assert np.abs(contributions.sum(axis=1) - calibrated.inplace_predict(X[:50], predict_type="margin")).max() < 1e-4


def test_bootstrap_intervals_hold_the_figure_and_narrow_with_more_rows():
    generator = np.random.default_rng(0)
    y = generator.integers(0, 2, 2000)
    probability = np.clip(y * 0.3 + generator.random(2000) * 0.7, 0, 1)
    small = training.bootstrap_interval(y[:200], probability[:200], training.fast_roc_auc, resamples=500)
    large = training.bootstrap_interval(y, probability, training.fast_roc_auc, resamples=500)
    assert small[0] <= training.fast_roc_auc(y[:200], probability[:200]) <= small[1]
    assert large[1] - large[0] < small[1] - small[0]


@pytest.mark.model
def test_the_run_record_is_kept_beside_the_model(trained):
    latest = trained["models_dir"] / "latest"
    executed = json.loads((latest / "train.ipynb").read_text())
    assert executed["metadata"]["papermill"]["parameters"]["models_dir"] == str(trained["models_dir"])
    images = [
        output
        for cell in executed["cells"]
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 2, "the ROC, confusion, importance and learning-curve plots are missing"
    assert "<html" in (latest / "train.html").read_text()[:1000].lower()


@pytest.mark.model
def test_the_published_model_predicts_what_the_notebook_predicted(trained):
    latest = trained["models_dir"] / "latest"
    predictions = pd.read_csv(latest / "predictions.csv")
    assert len(predictions) == 768
    served = load_bundle(latest).predict_proba(predictions[list(FEATURE_NAMES)])
    assert abs(served - predictions["probability"]).max() < 1e-6


@pytest.mark.model
def test_a_second_make_train_with_nothing_changed_trains_nothing(trained):
    variables = trained["variables"]
    result = make("train", *[f"{name}={value}" for name, value in variables.items()])
    assert "papermill" not in result.stdout


@pytest.mark.model
def test_a_run_below_min_auc_fails_and_publishes_nothing(trained, tmp_path):
    models_dir = trained["models_dir"]
    before = (models_dir / "latest").resolve()
    versions_before = sorted(models_dir.iterdir())
    impossible = tmp_path / "impossible-gate.yaml"
    impossible.write_text("min_auc: 1.01\n")

    result = make(
        "train",
        f"MODELS_DIR={models_dir}",
        f"RUNS_DIR={tmp_path / 'runs'}",
        f"TRAIN_PARAMS={FAST_PARAMS} {impossible}",
        check=False,
    )

    assert result.returncode != 0
    assert "quality gate failed" in result.stdout + result.stderr
    assert (models_dir / "latest").resolve() == before
    assert sorted(models_dir.iterdir()) == versions_before
    assert (tmp_path / "runs" / "train.ipynb").exists(), "the failed run's record should be kept"


@pytest.mark.model
@pytest.mark.parametrize("parameters", ["max_dept: 3\n", "min_AUC: 0.5\n"])
def test_an_unknown_parameter_name_fails_before_training(tmp_path, parameters):
    typo = tmp_path / "typo.yaml"
    typo.write_text(parameters)
    result = make(
        "train",
        f"MODELS_DIR={tmp_path / 'models'}",
        f"RUNS_DIR={tmp_path / 'runs'}",
        f"TRAIN_PARAMS=params/train.yaml {typo}",
        check=False,
    )
    assert result.returncode != 0
    assert parameters.split(":")[0] in result.stderr
    assert not (tmp_path / "models").exists()


@pytest.mark.model
def test_make_models_shows_cv_auc_accuracy_with_its_interval_beside_the_article_and_brier(trained):
    listing = make("models", f"MODELS_DIR={trained['models_dir']}").stdout
    metrics = load_bundle(trained["models_dir"] / "latest").metadata.metrics
    header, line = listing.splitlines()[0], next(line for line in listing.splitlines() if "latest" in line)
    assert "CV AUC" in header and "article 78.74%" in header and "Brier" in header
    low, high = metrics.test_accuracy_interval
    assert f"{metrics.cv_roc_auc_mean:.4f} ± {metrics.cv_roc_auc_std:.4f}" in line
    assert f"{metrics.test_accuracy:.2%} [{low:.2%}, {high:.2%}]" in line
    assert f"{metrics.test_brier:.4f}" in line

"""The training notebook, run by papermill through `make train`."""

import json

import pandas as pd
import pytest

from conftest import FAST_PARAMS, PROJECT, make
from diabetes.bundle import load_bundle
from diabetes.features import FEATURE_NAMES


def test_training_publishes_a_loadable_model_with_its_metadata(trained):
    latest = trained["models_dir"] / "latest"
    bundle = load_bundle(latest)
    metadata = bundle.metadata

    assert latest.is_symlink() and latest.resolve().name == bundle.version
    assert metadata["feature_names"] == list(FEATURE_NAMES)
    assert 0.7 <= metadata["metrics"]["test_roc_auc"] <= 1
    assert 0 < metadata["metrics"]["test_accuracy"] <= 1
    assert metadata["metrics"]["cv_roc_auc_std"] >= 0
    assert metadata["parameters"]["n_estimators"] == 60, "the fast parameter file was not applied"
    assert metadata["data"]["sha256"] == "6bfe5d0f379d17a0e0819b996407e3c09bf80febd4287f2ed212190dfff154af"
    assert set(metadata["library_versions"]) >= {"python", "xgboost", "scikit-learn", "pandas", "numpy"}
    assert all(f["training_min"] <= f["training_max"] for f in metadata["features"])
    assert 1 <= bundle.booster.num_boosted_rounds() == metadata["trees"] <= 60


def test_the_run_record_is_kept_beside_the_model(trained):
    latest = trained["models_dir"] / "latest"
    executed = json.loads((latest / "train.ipynb").read_text())
    assert executed["metadata"]["papermill"]["parameters"]["models_dir"] == str(trained["models_dir"])
    images = [output for cell in executed["cells"] for output in cell.get("outputs", [])
              if "image/png" in output.get("data", {})]
    assert len(images) >= 2, "the ROC, confusion, importance and learning-curve plots are missing"
    assert "<html" in (latest / "train.html").read_text()[:1000].lower()


def test_the_published_model_predicts_what_the_notebook_predicted(trained):
    latest = trained["models_dir"] / "latest"
    predictions = pd.read_csv(latest / "predictions.csv")
    assert len(predictions) == 768
    served = load_bundle(latest).predict_proba(predictions[list(FEATURE_NAMES)])
    assert abs(served - predictions["probability"]).max() < 1e-6


def test_a_second_make_train_with_nothing_changed_trains_nothing(trained):
    variables = trained["variables"]
    result = make("train", *[f"{name}={value}" for name, value in variables.items()])
    assert "papermill" not in result.stdout


def test_a_run_below_min_auc_fails_and_publishes_nothing(trained, tmp_path):
    models_dir = trained["models_dir"]
    before = (models_dir / "latest").resolve()
    versions_before = sorted(models_dir.iterdir())
    impossible = tmp_path / "impossible-gate.yaml"
    impossible.write_text("min_auc: 1.01\n")

    result = make("train", f"MODELS_DIR={models_dir}", f"RUNS_DIR={tmp_path / 'runs'}",
                  f"TRAIN_PARAMS={FAST_PARAMS} {impossible}", check=False)

    assert result.returncode != 0
    assert "quality gate failed" in result.stdout + result.stderr
    assert (models_dir / "latest").resolve() == before
    assert sorted(models_dir.iterdir()) == versions_before
    assert (tmp_path / "runs" / "train.ipynb").exists(), "the failed run's record should be kept"


@pytest.mark.parametrize("parameters", ["max_dept: 3\n", "min_AUC: 0.5\n"])
def test_an_unknown_parameter_name_fails_before_training(tmp_path, parameters):
    typo = tmp_path / "typo.yaml"
    typo.write_text(parameters)
    result = make("train", f"MODELS_DIR={tmp_path / 'models'}", f"RUNS_DIR={tmp_path / 'runs'}",
                  f"TRAIN_PARAMS=params/train.yaml {typo}", check=False)
    assert result.returncode != 0
    assert parameters.split(":")[0] in result.stderr
    assert not (tmp_path / "models").exists()

"""`make sweep`: the training notebook over a small grid, run by papermill in
parallel, compared in a report; a failed run is a row; PUBLISH=best goes
through `make train`. Small grids of the fast parameter set (3 runs, then 1)."""

import json

import pandas as pd
import pytest
import yaml

from diabetes.prediction import load_bundle
from diabetes.sweep import SweepError, check_names, parameter_sets
from tests.conftest import PROJECT, make

FAST_BASE = ["params/train.yaml", "tests/params/fast.yaml"]


def sweep_file(tmp_path, grid: dict, runs: dict | None = None):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": FAST_BASE, "mode": "grid", "grid": grid, "runs": runs or {}}))
    return path


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """Two depths and a run whose data file does not exist."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    spec = sweep_file(tmp_path, {"max_depth": [1, 2]}, {"broken": {"data_url": "no/such/file.csv"}})
    result = make(
        "sweep", f"SWEEP={spec}", f"SWEEPS_DIR={tmp_path / 'sweeps'}", f"MODELS_DIR={tmp_path / 'models'}", timeout=600
    )
    return {"result": result, "dir": (tmp_path / "sweeps" / "latest").resolve(), "tmp": tmp_path}


@pytest.mark.model
def test_a_sweep_writes_one_row_per_run_and_a_failed_run_is_a_row(small_sweep):
    results = pd.read_csv(small_sweep["dir"] / "results.csv", dtype={"run": str})
    assert list(results["run"]) == ["001", "002", "broken"]
    ok = results[results["status"] == "ok"]
    assert list(ok["max_depth"]) == [1, 2]
    assert ok["cv_roc_auc_mean"].between(0.7, 1).all() and (ok["duration_s"] > 0).all()
    [broken] = results[results["run"] == "broken"].to_dict("records")
    assert broken["status"] == "failed"
    assert "DataSourceError" in broken["error"] and "no/such/file.csv" in broken["error"]
    for run in results["run"]:
        assert (small_sweep["dir"] / "runs" / run / "train.ipynb").exists(), "each executed notebook is kept"


@pytest.mark.model
def test_a_sweep_shows_its_progress_and_publishes_nothing(small_sweep):
    output = small_sweep["result"].stdout
    assert "[  3/3]" in output and "best 0." in output and "s left" in output
    assert "FAILED: DataSourceError" in output
    assert not (small_sweep["tmp"] / "models").exists()


@pytest.mark.model
def test_the_report_ranks_the_runs_and_names_the_winner(small_sweep):
    results = pd.read_csv(small_sweep["dir"] / "results.csv", dtype={"run": str})
    winner = results.sort_values("cv_roc_auc_mean", ascending=False).iloc[0]
    report = (small_sweep["dir"] / "report.html").read_text()
    assert "<html" in report.lower() and f"winner: run {winner['run']}" in report
    assert report.count("data:image/png") >= 2, "the metric-against-parameter and ROC/calibration plots"
    assert "no/such/file.csv" in report, "the failed run is in the table"
    best = yaml.safe_load((small_sweep["dir"] / "best.yaml").read_text())
    assert best == {"max_depth": int(winner["max_depth"])}


@pytest.mark.model
def test_publish_best_trains_the_winner_through_make_train(tmp_path):
    spec = sweep_file(tmp_path, {"learning_rate": [0.2]})
    make(
        "sweep",
        f"SWEEP={spec}",
        f"SWEEPS_DIR={tmp_path / 'sweeps'}",
        f"MODELS_DIR={tmp_path / 'models'}",
        f"RUNS_DIR={tmp_path / 'runs'}",
        "PUBLISH=best",
        timeout=600,
    )
    published = load_bundle(tmp_path / "models" / "latest")
    assert published.metadata.parameters.learning_rate == 0.2
    assert published.metadata.parameters.min_auc == 0.7, "the gate of the base parameters, not the sweep's"
    executed = json.loads((tmp_path / "runs" / "train.ipynb").read_text())
    assert executed["metadata"]["papermill"]["parameters"]["learning_rate"] == 0.2


def test_random_mode_draws_distinct_combinations_of_the_grid_repeatably():
    spec = {
        "mode": "random",
        "samples": 5,
        "seed": 3,
        "grid": {"max_depth": [1, 2, 3], "learning_rate": [0.02, 0.05, 0.1], "subsample": [0.6, 0.8]},
    }
    drawn = [parameters for _, parameters in parameter_sets(spec)]
    assert len(drawn) == 5 and len({tuple(sorted(p.items())) for p in drawn}) == 5
    assert all(p["max_depth"] in (1, 2, 3) and p["subsample"] in (0.6, 0.8) for p in drawn)
    assert drawn == [parameters for _, parameters in parameter_sets(spec)]
    assert drawn != [parameters for _, parameters in parameter_sets({**spec, "seed": 4})]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"grid": {"max_dept": [2, 3]}}, "max_dept"),
        ({"grid": {"max_depth": 3}}, "non-empty list"),
        ({"mode": "bayesian", "grid": {"max_depth": [2]}}, "grid or random"),
    ],
)
def test_a_wrong_sweep_file_is_refused_before_any_run(spec, message):
    with pytest.raises(SweepError, match=message):
        runs = parameter_sets(spec)
        check_names(spec, runs)


def test_the_committed_sweep_file_names_only_parameters_the_notebook_has():
    spec = yaml.safe_load((PROJECT / "params" / "sweep.yaml").read_text())
    check_names(spec, parameter_sets(spec))

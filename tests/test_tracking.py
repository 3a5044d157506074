"""MLflow tracking, seen with MLflow's own client (tests/mlflow_view.py, in
the tracking venv) in a store of this module's own: one `make train`, one
`make sweep PUBLISH=best` of two runs (which trains its winner through
`make train`), `make serve` after each, then `make rollback`; `make mlflow`'s
page in headless Chromium; and a server that does not answer."""

import json
import os
import signal
import stat
import subprocess
import sys

import pytest
import requests
import yaml

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.model_metadata import read as read_metadata
from diabetes.tracking import TRACKING_VENV, WINNER_TAG, notebook_parameters
from tests.conftest import FAST_PARAMS, PROJECT, make, needs
from tests.processes import clean_environment, free_port, port_is_open, wait_until

TRACKING_PYTHON = TRACKING_VENV / "bin" / "python"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
    "--virtual-time-budget=30000",
]


def view(store: str, *arguments) -> dict | list:
    """What MlflowClient sees in the store (tests/mlflow_view.py)."""
    result = subprocess.run(
        [str(TRACKING_PYTHON), "-m", "tests.mlflow_view", arguments[0], store, *arguments[1:]],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def serving(url: str) -> dict:
    """The version /metadata says is served, and its answer to the article's row."""
    version = requests.get(url + "/metadata", timeout=10).json()["version"]
    probability = requests.post(url + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10).json()["prediction"]
    return {"version": version, "probability": probability}


@pytest.fixture(scope="module")
@needs("model", "pm2")
def tracked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracking")
    store = f"sqlite:///{tmp / 'mlflow' / 'mlflow.db'}"
    tracking = tmp / "tracking.yaml"
    tracking.write_text(yaml.safe_dump({"tracking_uri": store}))
    sweep = tmp / "sweep.yaml"
    base = [*FAST_PARAMS.split(), str(tracking)]
    sweep.write_text(yaml.safe_dump({"base": base, "mode": "grid", "grid": {"max_depth": [2, 3]}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    variables = [
        f"MODELS_DIR={tmp / 'models'}",
        f"RUNS_DIR={tmp / 'runs'}",
        f"SCRIPTS_DIR={tmp / 'scripts'}",
        f"PM2_HOME={tmp / 'pm2'}",
        f"LOG_DIR={tmp / 'logs'}",
        f"TRAIN_PARAMS={' '.join(base)}",
        f"SWEEP={sweep}",
        f"SWEEPS_DIR={tmp / 'sweeps'}",
    ]
    env = clean_environment(DIABETES_PORT=str(port))
    try:
        train = make("train", *variables, env=env)
        first = (tmp / "models" / "latest").resolve()
        make("serve", *variables, env=env)
        make("sweep", "PUBLISH=best", *variables, env=env, timeout=900)
        make("serve", *variables, env=env)
        before = {"serving": serving(url), "registry": view(store, "registry")}
        make("rollback", *variables, env=env)
        after = {"serving": serving(url), "registry": view(store, "registry")}
        yield {
            "store": store,
            "tmp": tmp,
            "train_output": train.stdout + train.stderr,
            "first": first,
            "sweep_dir": (tmp / "sweeps" / "latest").resolve(),
            "before_rollback": before,
            "after_rollback": after,
            "runs": view(store, "runs"),
        }
    finally:
        make("stop", *variables, env=env, check=False)


def run_named(tracked, name: str) -> dict:
    [run] = [run for run in tracked["runs"] if run["name"] == name]
    return run


@pytest.mark.model
@pytest.mark.pm2
def test_make_train_logs_every_parameter_metric_and_record_of_the_run(tracked):
    first = tracked["first"]
    run = run_named(tracked, f"train {first.name}")
    metadata = read_metadata(first)
    parameters = notebook_parameters(first / "train.ipynb")
    assert run["params"] == {name: str(value) for name, value in parameters.items()}
    assert {"tracking_uri", "data_url", "max_depth", "min_auc"} <= set(run["params"])
    assert run["metrics"]["cv_roc_auc_mean"] == metadata.metrics.cv_roc_auc_mean
    assert run["metrics"]["cv_roc_auc_std"] == metadata.metrics.cv_roc_auc_std
    assert [run["metrics"]["test_roc_auc_interval_low"], run["metrics"]["test_roc_auc_interval_high"]] == (
        metadata.metrics.test_roc_auc_interval
    )
    assert run["metrics"]["test_brier"] == metadata.metrics.test_brier
    assert run["tags"]["model_version"] == first.name
    assert run["tags"]["data.source"] == metadata.data.source
    assert run["tags"]["data.sha256"] == metadata.data.sha256
    artifacts = set(run["artifacts"])
    assert {f"model_version/{path.name}" for path in first.iterdir()} <= artifacts
    assert {"model_version/train.ipynb", "model_version/train.html", "model_version/model.ubj"} <= artifacts
    assert len([path for path in artifacts if path.startswith("plots/") and path.endswith(".png")]) >= 3


@pytest.mark.model
@pytest.mark.pm2
def test_the_local_store_holding_the_rows_is_its_owners_alone(tracked):
    """The store keeps copies of the version's rows, predictions and executed
    notebook: kept as the version folder keeps them (issue 22), whatever the umask."""
    store = tracked["tmp"] / "mlflow"
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    records = [path for name in ("data.csv", "predictions.csv", "train.ipynb") for path in store.rglob(name)]
    assert any(path.name == "data.csv" for path in records), "the run's rows were not logged"
    for path in records:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


@pytest.mark.model
@pytest.mark.pm2
def test_a_sweep_is_a_parent_run_with_a_child_per_parameter_set_and_the_winner_tagged(tracked):
    sweep_dir = tracked["sweep_dir"]
    parent = run_named(tracked, f"sweep {sweep_dir.name}")
    children = [run for run in tracked["runs"] if run["parent"] == parent["id"]]
    assert sorted(run["tags"]["sweep.run"] for run in children) == ["001", "002"]
    assert sorted(run["params"]["max_depth"] for run in children) == ["2", "3"]
    assert all(
        "cv_roc_auc_mean" in run["metrics"] and "model_version/model.ubj" in run["artifacts"] for run in children
    )
    assert {"results.csv", "report.html", "sweep.yaml"} <= set(parent["artifacts"])
    winners = [run for run in children if run["tags"].get(WINNER_TAG) == "true"]
    assert len(winners) == 1
    [winner] = winners
    assert winner["metrics"]["cv_roc_auc_mean"] == max(run["metrics"]["cv_roc_auc_mean"] for run in children)
    assert parent["tags"][WINNER_TAG] == winner["tags"]["sweep.run"]
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert winner["params"]["max_depth"] == str(best["max_depth"])


@pytest.mark.model
@pytest.mark.pm2
def test_each_published_version_is_registered_with_its_id_and_the_very_model_file(tracked):
    registry = tracked["after_rollback"]["registry"]
    models_dir = tracked["tmp"] / "models"
    published = sorted(path.name for path in models_dir.iterdir() if not path.is_symlink())
    assert sorted(version["tags"]["model_version"] for version in registry["versions"]) == published
    for version in registry["versions"]:
        metadata = read_metadata(models_dir / version["tags"]["model_version"])
        assert version["model_sha256"] == metadata.model_sha256, "the registered file is the published model.ubj"
        assert "MLmodel" in version["files"]


@pytest.mark.model
@pytest.mark.pm2
def test_champion_names_what_metadata_says_is_serving_before_and_after_a_rollback(tracked):
    def champion_id(state):
        [version] = [v for v in state["registry"]["versions"] if v["version"] == state["registry"]["champion"]]
        return version["tags"]["model_version"]

    before, after = tracked["before_rollback"], tracked["after_rollback"]
    assert champion_id(before) == before["serving"]["version"]
    assert champion_id(after) == after["serving"]["version"] == tracked["first"].name
    assert before["serving"]["version"] != after["serving"]["version"]


@pytest.mark.model
@pytest.mark.pm2
def test_mlflow_pyfunc_loads_the_champion_and_answers_the_services_probability(tracked):
    [probability] = view(tracked["store"], "predict", ARTICLE_BODY["data"])
    assert abs(probability - tracked["after_rollback"]["serving"]["probability"]) < 1e-6


@pytest.mark.model
@pytest.mark.pm2
@pytest.mark.server
def test_make_mlflow_shows_the_experiment_and_its_runs_in_headless_chromium(tracked, tmp_path):
    port = free_port()
    log = tmp_path / "mlflow.log"
    with open(log, "w") as output:
        ui = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(PROJECT), "mlflow", f"MLFLOW_PORT={port}"]
            + [f"MLFLOW_STORE={tracked['store']}"],
            env=clean_environment(),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_until(lambda: port_is_open(port) or ui.poll() is not None, 90) and ui.poll() is None, (
            f"make mlflow did not start:\n{log.read_text()[-3000:]}"
        )
        page = f"http://127.0.0.1:{port}/#/experiments/1/runs"
        chromium = ["chromium", *CHROMIUM_FLAGS]
        dom = subprocess.run(
            [*chromium, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", page],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        screenshot = tmp_path / "mlflow.png"
        subprocess.run(
            [*chromium, f"--user-data-dir={tmp_path / 'profile-shot'}", f"--screenshot={screenshot}", page],
            capture_output=True,
            timeout=120,
        )
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    assert f"MLflow's UI on {tracked['store']}: http://127.0.0.1:{port}" in log.read_text()
    assert "diabetes" in dom, "the experiment"
    top_level = [run["name"] for run in tracked["runs"] if run["parent"] is None]
    assert len(top_level) == 3, "two make train, one sweep (its children folded under it)"
    for name in top_level:
        assert name in dom
    assert screenshot.stat().st_size > 10_000


@pytest.mark.model
def test_an_unreachable_tracking_server_is_a_warning_and_the_model_is_still_published(tmp_path):
    closed_port = free_port()
    unreachable = tmp_path / "unreachable.yaml"
    unreachable.write_text(f"tracking_uri: http://127.0.0.1:{closed_port}\n")
    env = clean_environment(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="2")
    result = make(
        "train",
        f"MODELS_DIR={tmp_path / 'models'}",
        f"RUNS_DIR={tmp_path / 'runs'}",
        f"TRAIN_PARAMS={FAST_PARAMS} {unreachable}",
        env=env,
    )
    assert "tracking: WARNING, train not tracked" in result.stderr
    assert (tmp_path / "models" / "latest" / "model.ubj").exists()


@pytest.mark.model
@pytest.mark.pm2
def test_a_step_wants_the_tracking_venv_only_where_its_notebook_tracks(tracked, trained):
    """What the Makefile asks with the service's venv before it installs the
    tracking venv: yes where the step's notebook has a tracking_uri, no
    where it is empty (the fast parameters)."""

    def wanted(step: str, folder) -> int:
        command = [sys.executable, "-m", "diabetes.tracking", "wanted", step, str(folder)]
        return subprocess.run(command, cwd=PROJECT, timeout=60).returncode

    assert wanted("train", tracked["first"]) == 0
    assert wanted("sweep", tracked["sweep_dir"]) == 0
    assert wanted("champion", tracked["first"]) == 0
    assert wanted("train", trained["models_dir"] / "latest") == 1
    assert wanted("train", tracked["tmp"] / "no-such-version") == 1

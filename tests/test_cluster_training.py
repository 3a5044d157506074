"""Training on a Dask cluster: a real `dask scheduler` and two `dask worker`
processes on 127.0.0.1 train 1 M synthetic rows through `make train`, and
`make serve` serves the model; a worker killed in the middle of the boosting
fails the run with a clear error that publishes nothing. Every process is
stopped at the end (its process group), every wait is bounded.

What it costs: `make bigdata` of 1 M rows (a few seconds), one cluster run of
the notebook (folds 2 x 1, a few dozen stumps: about a minute on two busy
cores), a `make serve` of that model, and a run killed within seconds.
"""

import json
import re
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import requests
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from diabetes import cluster_training, trainers, training
from diabetes.data import DataSourceError, read_training_data
from diabetes.features import FEATURE_NAMES, LABEL_NAME, to_model_input
from diabetes.prediction import load_bundle
from tests.conftest import FAST_PARAMS, PROJECT, make, needs
from tests.dask_cluster import ExternalDaskCluster
from tests.processes import clean_environment, free_port, kill_process_group

ROWS = 1_000_000
ROUTE = "/katana-ml/api/v1.0/diabetes"
CLUSTER_PARAMS = "n_estimators: 40\ncompare_with_article: false\n"


@pytest.fixture(scope="module")
def bigdata(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bigdata") / "parts"
    make("bigdata", f"ROWS={ROWS}", f"BIGDATA_DIR={folder}", timeout=120)
    return folder


@pytest.fixture(scope="module")
@needs("dask")
def external_cluster(tmp_path_factory):
    with ExternalDaskCluster(workers=2, log_dir=tmp_path_factory.mktemp("dask-logs")) as cluster:
        yield cluster
    assert all(process.poll() is not None for process in [cluster.scheduler, *cluster.worker_processes])


def train_on(cluster, data_dir, tmp_path, extra="", check=True, background=False):
    parameters = tmp_path / "cluster.yaml"
    parameters.write_text(f"dask_scheduler: {cluster.address}\ndata_url: {data_dir}\n{CLUSTER_PARAMS}{extra}")
    arguments = [
        "train",
        f"MODELS_DIR={tmp_path / 'models'}",
        f"RUNS_DIR={tmp_path / 'runs'}",
        f"TRAIN_PARAMS={FAST_PARAMS} {parameters}",
    ]
    if background:
        return subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(PROJECT), *arguments],
            env=clean_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    return make(*arguments, check=check, timeout=600)


@pytest.fixture(scope="module")
def trained_on_cluster(external_cluster, bigdata, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster-run")
    train_on(external_cluster, bigdata, folder)
    return folder


@pytest.mark.model
@pytest.mark.dask
def test_make_bigdata_writes_partitions_whose_labels_follow_the_real_rows(bigdata):
    files = sorted(bigdata.glob("*.parquet"))
    assert len(files) == 2, "500 000 rows per partition"
    synthetic = pd.read_parquet(files[0])
    real = read_training_data(str(PROJECT / "data/pima-indians-diabetes.data.csv")).rows
    assert list(synthetic.columns) == list(real.columns) and len(synthetic) == 500_000
    assert abs(synthetic[LABEL_NAME].mean() - real[LABEL_NAME].mean()) < 0.01
    assert abs((synthetic["serum_insuling"] == 0).mean() - (real["serum_insuling"] == 0).mean()) < 0.01
    assert (synthetic["age"] == synthetic["age"].round()).all() and (synthetic[list(FEATURE_NAMES)] >= 0).all().all()
    # Labels consistent with the features: trees fit on synthetic rows rank the real ones as well as the data allows.
    sample = synthetic.sample(50_000, random_state=0)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "eta": 0.1, "nthread": 1},
        xgb.DMatrix(to_model_input(sample[list(FEATURE_NAMES)].to_numpy()), sample[LABEL_NAME]),
        50,
    )
    real_probability = booster.inplace_predict(to_model_input(real[list(FEATURE_NAMES)].to_numpy()))
    assert roc_auc_score(real[LABEL_NAME], real_probability) > 0.8


@pytest.mark.model
@pytest.mark.dask
def test_two_external_workers_train_a_million_rows_through_the_notebook(trained_on_cluster, external_cluster):
    latest = trained_on_cluster / "models" / "latest"
    bundle = load_bundle(latest)
    metadata = bundle.metadata
    assert metadata.cluster.scheduler == external_cluster.address
    assert metadata.cluster.workers == 2 and metadata.cluster.threads == 2
    assert metadata.cluster.partitions == 2 and metadata.cluster.rows == ROWS
    test_rows = metadata.cluster.test_rows
    assert abs(test_rows - 0.33 * ROWS) <= 2 * 2, "a stratified third per partition, to a row per label"
    assert metadata.cluster.training_rows + test_rows == ROWS
    assert metadata.data.rows == ROWS and metadata.data.snapshot is None
    assert metadata.metrics.test_roc_auc >= metadata.parameters.min_auc
    low, high = metadata.metrics.test_accuracy_interval
    assert low < metadata.metrics.test_accuracy < high and high - low < 0.01, "a third of a million rows"
    assert 1 <= bundle.booster.num_boosted_rounds() == metadata.trees <= 40
    # Both workers boosted: XGBoost gave each a rank in the training's communicator.
    logs = "".join(path.read_text() for path in external_cluster.log_dir.glob("worker-*.log"))
    assert re.search(r"got rank 0", logs) and re.search(r"got rank 1", logs)
    assert len(pd.read_csv(latest / "predictions.csv")) > 1000


def test_the_histogram_auc_is_the_exact_auc_to_within_its_bound():
    generator = np.random.default_rng(0)
    label = generator.integers(0, 2, 200_000)
    probability = np.clip(label * 0.2 + generator.random(200_000) * 0.8, 0, 1).astype(np.float32)
    bins = np.minimum((probability * cluster_training.AUC_BINS).astype(int), cluster_training.AUC_BINS - 1)
    positive = np.bincount(bins[label == 1], minlength=cluster_training.AUC_BINS)
    negative = np.bincount(bins[label == 0], minlength=cluster_training.AUC_BINS)
    bound = 0.5 * np.sum(positive * negative) / (positive.sum() * negative.sum())
    assert abs(cluster_training.binned_roc_auc(positive, negative) - roc_auc_score(label, probability)) <= bound


@pytest.mark.model
@pytest.mark.dask
@pytest.mark.pm2
def test_the_model_trained_on_the_cluster_is_served_by_make_serve(trained_on_cluster, tmp_path):
    models_dir = trained_on_cluster / "models"
    port = free_port()
    env = clean_environment(DIABETES_PORT=str(port))
    variables = [
        f"MODELS_DIR={models_dir}",
        f"RUNS_DIR={trained_on_cluster / 'runs'}",
        f"TRAIN_PARAMS={FAST_PARAMS} {trained_on_cluster / 'cluster.yaml'}",
        f"PM2_HOME={tmp_path / 'pm2'}",
        f"LOG_DIR={tmp_path / 'logs'}",
        f"SCRIPTS_DIR={tmp_path / 'scripts'}",
    ]
    try:
        result = make("serve", *variables, env=env, timeout=300)
        assert "papermill notebooks/train.ipynb" not in result.stdout, "make serve should not train again"
        expected = pd.read_csv(models_dir / "current" / "predictions.csv").head(200)
        with requests.Session() as session:
            answers = [
                session.post(f"http://127.0.0.1:{port}{ROUTE}", json={"data": ",".join(map(repr, row))}, timeout=5)
                for row in expected[list(FEATURE_NAMES)].itertuples(index=False)
            ]
        assert {answer.headers["X-Model-Version"] for answer in answers} == {(models_dir / "latest").resolve().name}
        served = np.array([answer.json()["prediction"] for answer in answers])
        assert np.abs(served - expected["probability"].to_numpy()).max() < 1e-6
    finally:
        make("stop", *variables, env=env, check=False)


@pytest.mark.model
@pytest.mark.dask
def test_a_worker_killed_while_boosting_fails_the_run_clearly_and_publishes_nothing(bigdata, tmp_path):
    # Deep trees and many rounds, so that the boosting is still going when the worker dies.
    with ExternalDaskCluster(workers=2, log_dir=tmp_path / "dask-logs") as cluster:
        run = train_on(cluster, bigdata, tmp_path, extra="n_estimators: 3000\nmax_depth: 6\n", background=True)
        try:
            worker_log = cluster.log_dir / "worker-1.log"
            deadline = time.monotonic() + 240
            while "got rank" not in worker_log.read_text():
                assert run.poll() is None, f"the run ended before the boosting began:\n{run.stdout.read()[-3000:]}"
                assert time.monotonic() < deadline, "the boosting did not begin within 240 s"
                time.sleep(0.5)
            time.sleep(2)
            cluster.kill_worker(1)
            output, _ = run.communicate(timeout=300)
        finally:
            kill_process_group(run.pid)
        assert cluster.connected_workers() == ["worker-0"]
    assert run.returncode != 0
    assert "a worker left the cluster during training (2 workers at its start, 1 now)" in output
    assert "Nothing was published" in output
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
    executed = json.loads((tmp_path / "runs" / "train.ipynb").read_text())
    assert executed["metadata"]["papermill"]["exception"], "the run's record shows where it stopped"


@pytest.mark.model
@pytest.mark.dask
def test_partitions_read_from_sql_by_read_sql_table_are_the_csv_rows(tmp_path):
    db = tmp_path / "diabetes.sqlite"
    make("db", f"DB={db}")
    from_sql = cluster_training.read_training_partitions(f"sqlite:///{db}")
    from_csv = cluster_training.read_training_partitions(str(PROJECT / "data/pima-indians-diabetes.data.csv"))
    assert from_sql.row_count == from_csv.row_count == 768
    assert from_sql.query == "read_sql_table pima_diabetes on index row_id"
    assert from_sql.rows.compute().reset_index(drop=True).equals(from_csv.rows.compute().reset_index(drop=True))
    assert from_sql.sha256 == from_csv.sha256, "the same rows in one partition each"


@pytest.mark.model
@pytest.mark.dask
@pytest.mark.parametrize(
    "data_url, data_query, expected",
    [
        ("{tmp}/nothing/*.parquet", "", "no Parquet or CSV file matches"),
        ("sqlite:///{tmp}/diabetes.sqlite", "SELECT * FROM pima_diabetes", "data_query names the table"),
        ("sqlite:///{tmp}/diabetes.sqlite", "no_such_table", "cannot read table no_such_table"),
    ],
)
def test_a_source_the_cluster_cannot_read_is_a_clear_error(tmp_path, data_url, data_query, expected):
    make("db", f"DB={tmp_path / 'diabetes.sqlite'}")
    with pytest.raises(DataSourceError, match=re.escape(expected)):
        cluster_training.read_training_partitions(data_url.format(tmp=tmp_path), data_query)


@pytest.mark.model
@pytest.mark.dask
def test_one_model_measured_again_and_again_on_the_cluster_gives_the_same_figures(external_cluster):
    # The notebook measures the model, then the uncalibrated one: the same model when calibration is off.
    cluster = cluster_training.connect(external_cluster.address)
    try:
        data = cluster_training.read_training_partitions(str(PROJECT / "data/pima-indians-diabetes.data.csv"))
        splits = cluster_training.split(data, 0.33, 0, 2, [0])
        parameters = training.booster_parameters(2, 0.1, 0.8, 1.0, 1.0, 1.0, seed=0, threads=1)
        booster = cluster_training.fit(cluster, parameters, splits, 20)
        figures = [cluster_training.evaluate(cluster, booster, splits.test, 0.5).metrics for _ in range(10)]
    finally:
        cluster.close()
    assert all(measured == figures[0] for measured in figures)


@pytest.mark.model
@pytest.mark.dask
def test_both_trainers_take_the_data_set_through_the_same_steps_to_the_same_figures(external_cluster):
    csv = str(PROJECT / "data/pima-indians-diabetes.data.csv")
    parameters = training.booster_parameters(2, 0.1, 0.8, 1.0, 1.0, 1.0, seed=0, threads=1)
    runs = {}
    for where in ("in process", "on the cluster"):
        trainer = trainers.trainer_for("" if where == "in process" else external_cluster.address)
        try:
            run = {"trainer": trainer, "data": trainer.read(csv, ""), "zeros": trainer.zeros_that_mean_missing()}
            run["training_rows"], run["test_rows"] = trainer.split(0.33, 0, 2, fold_seeds=[0, 1])
            run["cv"] = trainer.cross_validate(parameters, 60, 10, 0.5)
            run["booster"] = trainer.fit(parameters, run["cv"].trees)
            run["held_out"] = trainer.test(run["booster"], run["booster"], 0.5, seed=0)
            run["ranges"], run["record"] = trainer.feature_ranges(), trainer.run_record()
            run["versions"] = trainer.library_versions()
        finally:
            trainer.close()
        runs[where] = run
    in_process, on_cluster = runs["in process"], runs["on the cluster"]
    assert isinstance(in_process["trainer"], trainers.InProcessTrainer)
    assert isinstance(on_cluster["trainer"], trainers.ClusterTrainer)
    assert in_process["zeros"].equals(on_cluster["zeros"]), "the same rows hold the same zeros"
    for run in runs.values():
        held_out, cv = run["held_out"], run["cv"]
        assert run["data"].provenance()["rows"] == run["training_rows"] + run["test_rows"] == 768
        assert abs(run["test_rows"] - 0.33 * 768) <= 2
        assert len(cv.folds) == 4 and run["booster"].num_boosted_rounds() == cv.trees
        # 768 rows are all in the cluster's sample: out-of-fold rows are every training row either way.
        assert all(
            len(probability) == len(cv.labels) == run["training_rows"] for probability in cv.out_of_fold.values()
        )
        assert list(held_out.metrics) == list(in_process["held_out"].metrics), "the metadata's names, in its order"
        assert held_out.metrics["test_brier_uncalibrated"] == held_out.metrics["test_brier"], "the same model"
        assert held_out.metrics["test_roc_auc"] > 0.75 and len(held_out.labels) == len(held_out.probability)
        low, high = held_out.metrics["test_accuracy_interval"]
        assert low <= held_out.metrics["test_accuracy"] <= high
        predictions = held_out.predictions
        assert list(predictions.columns) == [*FEATURE_NAMES, LABEL_NAME, "probability"]
        expected = run["booster"].inplace_predict(to_model_input(predictions[list(FEATURE_NAMES)].to_numpy()))
        assert np.abs(predictions["probability"] - expected).max() < 1e-6
        assert list(run["ranges"].index) == list(FEATURE_NAMES) and (run["ranges"]["min"] <= run["ranges"]["max"]).all()
    assert len(in_process["held_out"].predictions) == 768, "every row of the data set"
    assert len(on_cluster["held_out"].predictions) == on_cluster["test_rows"], "the sample of test rows: all of them"
    assert in_process["record"] == {} and in_process["versions"] == {}
    assert on_cluster["record"]["cluster"]["rows"] == 768 and on_cluster["record"]["cluster"]["workers"] == 2
    assert set(on_cluster["versions"]) == {"dask", "distributed"}

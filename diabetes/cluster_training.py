"""The training notebook's steps on a Dask cluster, for data that one process
should not hold: XGBoost's own Dask integration (`xgboost.dask`) on a
`distributed` cluster.

The notebook reaches these steps through `diabetes.trainers.ClusterTrainer`
when `dask_scheduler` is set. `connect(dask_scheduler)` picks where: `local`,
a LocalCluster of one single-threaded worker per core that the notebook starts
and stops; `tcp://host:port`, an existing scheduler (empty: None, in process).

The rows are read as partitions (`read_training_partitions`: Parquet or CSV
files by glob or folder, or a SQL table by `read_sql_table` on its `row_id`
index) and stay on the workers. What comes back to the notebook is bounded:
counts, sums, histograms, and a sample of at most `SAMPLE_ROWS` rows.

Where the cluster path differs from the in-process one, and why:

- Splits are drawn per partition: in each partition, each label's rows are
  shuffled (seeded by the seed and the partition's number) and a `test_size`
  share of them set aside; the training rows of each label are dealt into
  `cv_folds` folds per seed the same way. Each partition is stratified, so the
  whole is too, to within one row per label per partition; the rows chosen
  differ from scikit-learn's (which needs every label at once), and depend on
  how the data is partitioned.
- ROC AUC is computed from histograms of the probability per label
  (`AUC_BINS` bins, summed over partitions): pairs whose probabilities fall
  in one bin count a half, as tied pairs do in the exact AUC. The difference
  from the exact figure is at most half the share of pairs that share a bin.
  Accuracy, Brier score and log loss are exact sums.
- The test intervals are normal approximations (the binomial for accuracy,
  Hanley and McNeil's standard error for AUC) instead of the bootstrap, whose
  2000 resamples of millions of rows would cost more than the training; with
  this many rows they are narrow either way.
- Calibration and the threshold are chosen on a random sample of the
  out-of-fold rows (the same rows for every seed), and the plots and the
  predictions kept beside the model are of a sample of the test rows.
- The data's sha256 is of its partitions, not of the CSV canonical form: the
  sha256 of each partition's float64 features and int64 labels, in row
  order, then the sha256 of those, in partition order.
"""

import atexit
import glob as globbing
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from diabetes.credentials import redacted, scrubbed
from diabetes.data import COLUMNS, ROW_ID, TABLE, DataSourceError, checked_rows, connect_url_of, is_database_url
from diabetes.features import FEATURE_NAMES, FEATURES, LABEL_NAME, to_model_input
from diabetes.training import CrossValidation, early_stopping_point

# Rows brought back to the notebook: out-of-fold rows for calibration and the
# threshold, test rows for the plots and for predictions.csv.
SAMPLE_ROWS = 100_000
AUC_BINS = 2**16
# How long to wait for a scheduler to answer and for its first worker.
CONNECT_TIMEOUT_SECONDS = 60
# How long a worker waits for the others in one of XGBoost's collective
# operations: a lost worker stops the training after this, rather than never
# (XGBoost's own default is half an hour).
COLLECTIVE_TIMEOUT_SECONDS = 120
ROW = "row"  # a row's number: its partition's number times 2**32 plus its place in the partition
TEST = "test"  # set aside for the test metrics
SAMPLED = "sampled"  # in the sample brought back to the notebook


class ClusterError(Exception):
    """The cluster cannot be reached or lost what training needed; the message says which."""


@dataclass
class Cluster:
    client: object  # distributed.Client
    scheduler: str  # the address the notebook connected to, or "local"
    local_cluster: object = None  # the LocalCluster this notebook started, stopped by close()

    def describe(self) -> dict:
        """Workers and threads as the scheduler sees them now."""
        threads = self.client.nthreads()
        return {"scheduler": self.scheduler, "workers": len(threads), "threads": sum(threads.values())}

    def close(self):
        self.client.close()
        if self.local_cluster is not None:
            self.local_cluster.close()


def connect(dask_scheduler: str, local_workers: int | None = None) -> Cluster | None:
    """None for "" (in process); else a client of a LocalCluster ("local": `local_workers`, by default one
    per core) or of the scheduler at tcp://..."""
    if not dask_scheduler:
        return None
    from distributed import Client, LocalCluster

    if dask_scheduler == "local":
        # One single-threaded worker process per core: XGBoost's threads and
        # Dask's would otherwise compete for the same cores.
        local = LocalCluster(
            n_workers=local_workers or os.cpu_count(),
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
        cluster = Cluster(Client(local), "local", local)
    elif dask_scheduler.startswith("tcp://"):
        try:
            client = Client(dask_scheduler, timeout=CONNECT_TIMEOUT_SECONDS)
        except (OSError, TimeoutError) as error:
            raise ClusterError(
                f"no Dask scheduler answers at {dask_scheduler} within {CONNECT_TIMEOUT_SECONDS} s: {error}"
            ) from None
        cluster = Cluster(client, dask_scheduler)
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_SECONDS)
        except TimeoutError:
            cluster.close()
            raise ClusterError(
                f"the scheduler at {dask_scheduler} has no worker after {CONNECT_TIMEOUT_SECONDS} s"
            ) from None
    else:
        raise ClusterError(
            f'dask_scheduler {dask_scheduler!r}: expected "" (in process), "local" '
            "or a scheduler's address tcp://host:port"
        )
    atexit.register(cluster.close)
    return cluster


# ---- The data ------------------------------------------------------------------


@dataclass
class PartitionedData:
    rows: object  # dask DataFrame of COLUMNS, checked per partition as data.py checks a frame
    source: str
    query: str | None
    partition_rows: list  # rows in each partition
    partition_sha256: list  # see the module's docstring
    summary: pd.DataFrame = field(repr=False)  # count, mean, min and max per column

    @property
    def row_count(self) -> int:
        return int(sum(self.partition_rows))

    @property
    def partitions(self) -> int:
        return len(self.partition_rows)

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.partition_sha256).encode()).hexdigest()

    def provenance(self) -> dict:
        return {
            "source": self.source,
            "query": self.query,
            "rows": self.row_count,
            "sha256": self.sha256,
            "partitions": self.partitions,
            "canonical_form": "partitions: sha256 of each partition's features as float64 and label as "
            "int64 (little-endian, row-major, columns "
            + ",".join(COLUMNS)
            + "), then sha256 of those hex digests joined by newlines",
            "snapshot": None,
            "snapshot_note": f"{self.row_count} rows in {self.partitions} partitions read on a Dask "
            "cluster: no copy kept; the sha256 names the rows",
        }


def read_training_partitions(data_url: str, data_query: str = "") -> PartitionedData:
    """The rows as a dask DataFrame, checked and measured in one pass on the cluster."""
    import dask
    import dask.dataframe as dd

    data_url = str(data_url)
    if is_database_url(data_url):
        table = data_query or TABLE
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", table):
            raise DataSourceError(
                "on a Dask cluster the rows are read by read_sql_table, a whole table "
                f"partitioned on its {ROW_ID} column: data_query names the table "
                f"(empty: {TABLE}), not {table!r}"
            )
        source, query = redacted(data_url), f"read_sql_table {table} on index {ROW_ID}"
        # The workers connect: they get the URL with its references expanded (dask wants a string).
        url = connect_url_of(data_url)
        try:
            frame = dd.read_sql_table(table, url.render_as_string(hide_password=False), index_col=ROW_ID)
        except Exception as error:  # sqlalchemy's errors: no such table, no connection, no driver
            message = f"{error.__class__.__name__}: {scrubbed(str(error), url).splitlines()[0]}"
            raise DataSourceError(f"cannot read table {table} of {source}: {message}") from None
    else:
        source, query = data_url, None
        frame = _read_files(data_url)
    rows = frame.map_partitions(
        checked_rows,
        source,
        meta=pd.DataFrame({name: pd.Series(dtype=np.int64 if name == LABEL_NAME else np.float64) for name in COLUMNS}),
    )
    measured = dask.compute(*[dask.delayed(_measure_partition)(part) for part in rows.to_delayed()])
    summary = pd.DataFrame(
        {
            "count": sum(m["count"] for m in measured),
            "mean": sum(m["sum"] for m in measured) / sum(m["count"] for m in measured),
            "min": pd.concat([m["min"] for m in measured], axis=1).min(axis=1),
            "max": pd.concat([m["max"] for m in measured], axis=1).max(axis=1),
        }
    )
    return PartitionedData(rows, source, query, [m["rows"] for m in measured], [m["sha256"] for m in measured], summary)


def _read_files(data_url: str):
    import dask.dataframe as dd

    path = Path(data_url)
    files = (
        sorted(str(p) for p in path.iterdir() if p.suffix in (".parquet", ".csv"))
        if path.is_dir()
        else sorted(globbing.glob(data_url))
    )
    if not files:
        raise DataSourceError(
            f"no Parquet or CSV file matches {data_url} (data_url on a cluster: a file, "
            "a glob such as build/bigdata/*.parquet, a folder of partitions, or a SQLAlchemy URL)"
        )
    kinds = {Path(file).suffix for file in files}
    if kinds == {".parquet"}:
        return dd.read_parquet(files)
    if kinds == {".csv"}:  # the data set's own layout: no header, the columns in order
        return dd.read_csv(files, header=None, names=list(COLUMNS), blocksize="64MB")
    raise DataSourceError(
        f"{data_url} names {', '.join(sorted(kinds)) or 'files without extension'}: "
        "expected Parquet files (.parquet) or CSV files (.csv), one kind"
    )


def _measure_partition(part: pd.DataFrame) -> dict:
    hashed = hashlib.sha256(part[list(FEATURE_NAMES)].to_numpy(np.float64).astype("<f8").tobytes())
    hashed.update(part[LABEL_NAME].to_numpy(np.int64).astype("<i8").tobytes())
    return {
        "rows": len(part),
        "sha256": hashed.hexdigest(),
        "count": part.count(),
        "sum": part.sum(),
        "min": part.min(),
        "max": part.max(),
    }


# ---- The splits ----------------------------------------------------------------


@dataclass
class Splits:
    frame: object  # dask DataFrame: the model's input (zeros that mean "not measured" as NaN),
    # the label, ROW, TEST, SAMPLED and a fold_<seed> column per seed
    training_rows: int
    test_rows: int
    fold_seeds: list

    @property
    def training(self):
        return self.frame[~self.frame[TEST]]

    @property
    def test(self):
        return self.frame[self.frame[TEST]]


def split(data: PartitionedData, test_size: float, seed: int, n_folds: int, fold_seeds) -> Splits:
    """The test rows and the cross-validation folds, drawn per partition (see the module's docstring)."""
    import dask
    import dask.dataframe as dd

    fold_seeds = list(fold_seeds)
    sample_share = min(1.0, SAMPLE_ROWS / data.row_count)
    parts = [
        dask.delayed(_split_partition)(part, number, test_size, seed, n_folds, fold_seeds, sample_share)
        for number, part in enumerate(data.rows.to_delayed())
    ]
    meta = _split_partition(data.rows._meta, 0, test_size, seed, n_folds, fold_seeds, sample_share)
    frame = dd.from_delayed(parts, meta=meta, verify_meta=False)
    test_rows = int(frame[TEST].sum().compute())
    return Splits(frame, data.row_count - test_rows, test_rows, fold_seeds)


def _split_partition(part, number, test_size, seed, n_folds, fold_seeds, sample_share) -> pd.DataFrame:
    label = part[LABEL_NAME].to_numpy()
    frame = pd.DataFrame(to_model_input(part[list(FEATURE_NAMES)].to_numpy()), columns=list(FEATURE_NAMES))
    frame[LABEL_NAME] = label
    frame[ROW] = (np.int64(number) << 32) + np.arange(len(part), dtype=np.int64)
    generator = np.random.default_rng([seed, number])
    test = np.zeros(len(part), dtype=bool)
    for value in (0, 1):
        rows = generator.permutation(np.flatnonzero(label == value))
        test[rows[: int(round(test_size * len(rows)))]] = True
    frame[TEST] = test
    frame[SAMPLED] = np.random.default_rng([seed, number, 1]).random(len(part)) < sample_share
    for fold_seed in fold_seeds:
        generator = np.random.default_rng([fold_seed, number, 2])
        fold = np.full(len(part), -1, dtype=np.int8)
        for value in (0, 1):
            rows = generator.permutation(np.flatnonzero((label == value) & ~test))
            fold[rows] = np.arange(len(rows)) % n_folds
        frame[f"fold_{fold_seed}"] = fold
    return frame


# ---- Training and measuring ----------------------------------------------------


def cross_validate(
    cluster: Cluster,
    parameters: dict,
    splits: Splits,
    n_folds: int,
    max_trees: int,
    early_stopping_rounds: int,
    threshold: float = 0.5,
) -> CrossValidation:
    """`training.cross_validate` on the cluster: each fold boosted to `max_trees`
    by xgboost.dask, the trees chosen by the mean held-out log loss, each fold
    measured there; out-of-fold probabilities (and labels) of the sampled rows only."""
    training = splits.training
    boosters, curves, held_outs = [], [], []
    for seed in splits.fold_seeds:
        for fold in range(n_folds):
            fit = training[training[f"fold_{seed}"] != fold]
            held_out = training[training[f"fold_{seed}"] == fold]
            result = _train(cluster, {**parameters, "seed": seed}, fit, max_trees, evals=held_out)
            boosters.append(result["booster"])
            curves.append(result["history"]["held_out"]["logloss"])
            held_outs.append((seed, held_out))
    curve = np.mean(curves, axis=0)
    trees = early_stopping_point(curve, early_stopping_rounds)
    results, sampled = [], {}
    for booster, (seed, held_out) in zip(boosters, held_outs):
        evaluation = evaluate(cluster, booster, held_out, threshold, trees)
        results.append({"seed": seed, **evaluation.metrics})
        sampled.setdefault(seed, []).append(evaluation.sample)
    out_of_fold, labels = {}, None
    for seed, samples in sampled.items():
        sample = pd.concat(samples).sort_values(ROW)
        out_of_fold[seed] = sample["probability"].to_numpy()
        labels = sample[LABEL_NAME].to_numpy()
    return CrossValidation(trees, results, out_of_fold, curve, labels)


def fit(cluster: Cluster, parameters: dict, splits: Splits, trees: int) -> xgb.Booster:
    """The final model: all the training rows, the chosen number of trees."""
    return _train(cluster, parameters, splits.training, trees)["booster"]


def _train(cluster: Cluster, parameters: dict, rows, rounds: int, evals=None) -> dict:
    from distributed import KilledWorker
    from xgboost import dask as dxgb
    from xgboost.collective import Config

    client = cluster.client
    features = list(FEATURE_NAMES)
    workers_at_start = cluster.describe()["workers"]
    try:
        train = dxgb.DaskDMatrix(client, rows[features], rows[LABEL_NAME])
        watched = (
            [(dxgb.DaskDMatrix(client, evals[features], evals[LABEL_NAME]), "held_out")] if evals is not None else None
        )
        return dxgb.train(
            client,
            parameters,
            train,
            num_boost_round=rounds,
            evals=watched,
            verbose_eval=False,
            coll_cfg=Config(timeout=COLLECTIVE_TIMEOUT_SECONDS, tracker_timeout=COLLECTIVE_TIMEOUT_SECONDS),
        )
    except (KilledWorker, xgb.core.XGBoostError, OSError) as error:
        workers_now = _workers_after_failure(cluster, workers_at_start)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        if workers_now < workers_at_start:
            raise ClusterError(
                f"a worker left the cluster during training ({workers_at_start} workers at its start, "
                f"{workers_now} now), and the training stopped: XGBoost's workers boost together, each on "
                "its own partitions, exchanging histograms every round, and a lost worker's share cannot be "
                "replaced in the middle of a run. Nothing was published; run it again (the partitions are "
                f"read again from the source). XGBoost said: {first_line}"
            ) from error
        raise ClusterError(
            f"training on the cluster failed ({error.__class__.__name__}: {first_line}); nothing was published"
        ) from error


def _workers_after_failure(cluster: Cluster, workers_at_start: int, wait_seconds: float = 5) -> int:
    """The workers now; a lost one may reach the scheduler a moment after its peers' error does."""
    import time

    deadline = time.monotonic() + wait_seconds
    while (workers := cluster.describe()["workers"]) >= workers_at_start and time.monotonic() < deadline:
        time.sleep(0.2)
    return workers


@dataclass
class Evaluation:
    metrics: dict  # those of `training.classification_metrics`, over all the rows
    sample: pd.DataFrame  # the sampled rows: features, label, ROW and probability
    positives: int
    negatives: int


def evaluate(cluster: Cluster, booster: xgb.Booster, rows, threshold: float, trees: int | None = None) -> Evaluation:
    """Predict and measure every row on the workers (see the module's docstring for the AUC)."""
    import dask

    trees = trees or booster.num_boosted_rounds()
    # A key of its own (hash=False): scattered by content, a model measured twice
    # in a row (the uncalibrated one is the same model when calibration is
    # off) got the key whose release the first call had just sent, and the
    # second call lost its data ("lost dependencies").
    model = cluster.client.scatter(bytes(booster.save_raw(raw_format="ubj")), broadcast=True, hash=False)
    parts = dask.compute(
        *[dask.delayed(_evaluate_partition)(part, model, trees, threshold) for part in rows.to_delayed()]
    )
    total = {
        name: sum(part[name] for part in parts)
        for name in ("rows", "correct", "squared_error", "log_loss", "positive_bins", "negative_bins")
    }
    if total["rows"] == 0:
        raise ClusterError("no rows to measure")
    metrics = {
        "roc_auc": binned_roc_auc(total["positive_bins"], total["negative_bins"]),
        "accuracy": total["correct"] / total["rows"],
        "brier": total["squared_error"] / total["rows"],
        "log_loss": total["log_loss"] / total["rows"],
    }
    return Evaluation(
        metrics,
        pd.concat([part["sample"] for part in parts], ignore_index=True),
        int(total["positive_bins"].sum()),
        int(total["negative_bins"].sum()),
    )


def _evaluate_partition(part, model: bytes, trees: int, threshold: float) -> dict:
    booster = xgb.Booster(params={"nthread": 1}, model_file=bytearray(model))
    probability = booster.inplace_predict(part[list(FEATURE_NAMES)].to_numpy(np.float32), iteration_range=(0, trees))
    label = part[LABEL_NAME].to_numpy()
    bins = np.minimum((probability * AUC_BINS).astype(np.int64), AUC_BINS - 1)
    # log_loss clips as scikit-learn does, at the probability's own precision.
    eps = np.finfo(probability.dtype).eps
    clipped = np.clip(probability.astype(np.float64), eps, 1 - eps)
    sampled = part[SAMPLED].to_numpy()
    sample = part.loc[sampled, [*FEATURE_NAMES, LABEL_NAME, ROW]].assign(probability=probability[sampled])
    return {
        "rows": len(part),
        "correct": int(np.sum(label == (probability >= threshold))),
        "squared_error": float(np.sum((probability.astype(np.float64) - label) ** 2)),
        "log_loss": float(-np.sum(label * np.log(clipped) + (1 - label) * np.log(1 - clipped))),
        "positive_bins": np.bincount(bins[label == 1], minlength=AUC_BINS),
        "negative_bins": np.bincount(bins[label == 0], minlength=AUC_BINS),
        "sample": sample,
    }


def binned_roc_auc(positive_bins, negative_bins) -> float:
    """ROC AUC from per-bin counts of positives and negatives (ties within a bin count a half)."""
    positive_bins, negative_bins = np.asarray(positive_bins, np.float64), np.asarray(negative_bins, np.float64)
    negatives_below = np.cumsum(negative_bins) - negative_bins
    wins = np.sum(positive_bins * (negatives_below + negative_bins / 2))
    return float(wins / (positive_bins.sum() * negative_bins.sum()))


def normal_intervals(evaluation: Evaluation, level_z: float = 1.96) -> dict:
    """95% intervals of test accuracy (binomial) and ROC AUC (Hanley and McNeil, 1982)."""
    positives, negatives = evaluation.positives, evaluation.negatives
    n = positives + negatives
    accuracy, auc = evaluation.metrics["accuracy"], evaluation.metrics["roc_auc"]
    accuracy_se = np.sqrt(accuracy * (1 - accuracy) / n)
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    auc_se = np.sqrt(
        (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / (positives * negatives)
    )
    interval = lambda value, se: [round(float(value - level_z * se), 4), round(float(value + level_z * se), 4)]
    return {"test_accuracy_interval": interval(accuracy, accuracy_se), "test_roc_auc_interval": interval(auc, auc_se)}


def run_record(cluster: Cluster, data: PartitionedData, splits: Splits, evaluation: Evaluation) -> dict:
    """What a model's metadata records about the cluster it was trained on."""
    return {
        **cluster.describe(),
        "partitions": data.partitions,
        "rows": data.row_count,
        "training_rows": splits.training_rows,
        "test_rows": splits.test_rows,
        "predictions": f"predictions.csv holds a random sample of {len(evaluation.sample)} test rows",
        "approximations": "splits per partition, AUC from histograms, intervals from formulas, "
        "calibration on a sample: see diabetes/cluster_training.py",
    }


def feature_ranges(splits: Splits) -> pd.DataFrame:
    """min, max and missing of each feature over the training rows, computed on the cluster."""
    import dask

    features = splits.training[list(FEATURE_NAMES)]
    low, high, missing = dask.compute(features.min(), features.max(), features.isna().sum())
    return pd.DataFrame({"min": low, "max": high, "missing": missing})


def raw_rows(sample: pd.DataFrame) -> pd.DataFrame:
    """Sampled rows as a client sends them: "not measured" back to 0."""
    raw = sample.copy()
    for feature in FEATURES:
        if feature.zero_means_missing:
            raw[feature.name] = raw[feature.name].fillna(0.0)
    return raw.drop(columns=[ROW])


def versions() -> dict:
    import dask
    import distributed

    return {"dask": dask.__version__, "distributed": distributed.__version__}

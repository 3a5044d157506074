"""Where the training notebook's steps run: one `Trainer`, two implementations.

`trainer_for(dask_scheduler)` chooses once, from the notebook's parameter:

- `InProcessTrainer` ("", the default): the rows in one pandas frame, the
  splits by scikit-learn, the boosting and the measures of `diabetes.training`
  (exact AUC, bootstrap intervals).
- `ClusterTrainer` ("local" or tcp://host:port): the rows as partitions that
  stay on a Dask cluster's workers, boosted by XGBoost's Dask integration and
  measured there (`diabetes.cluster_training` says where and why its figures
  are approximations).

The notebook then calls the same steps in the same order, whichever it got:
`read`, `split`, `cross_validate`, `fit`, `test`, and what publishing needs
(`feature_ranges`, `run_record`, `library_versions`), then `close`. What is
common to both (calibration, the threshold, the gate, the metadata) stays in
the notebook.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.model_selection import train_test_split

from diabetes import cluster_training, training
from diabetes.data import read_training_data
from diabetes.features import FEATURE_NAMES, FEATURES, LABEL_NAME, to_model_input

# The features whose 0 means "not measured" (counted before they become NaN).
ZERO_MEANS_MISSING = [feature.name for feature in FEATURES if feature.zero_means_missing]


@dataclass
class HeldOutMetrics:
    """The final model on the test rows, measured once."""

    metrics: dict  # test_<metric>, its intervals and test_brier_uncalibrated, as the metadata records them
    labels: object = field(repr=False)  # the test rows' labels, for the plots (a sample on a cluster)
    probability: np.ndarray = field(repr=False)  # the model's probability for those rows
    predictions: pd.DataFrame = field(repr=False)  # the rows kept as predictions.csv, as a client sends them


def held_out_metrics(measured, intervals, brier_uncalibrated, labels, probability, predictions) -> HeldOutMetrics:
    """The test figures rounded as the metadata keeps them, in its order."""
    metrics = {
        **{f"test_{name}": round(float(value), 4) for name, value in measured.items()},
        **intervals,
        "test_brier_uncalibrated": round(float(brier_uncalibrated), 4),
    }
    return HeldOutMetrics(metrics, labels, probability, predictions)


class Trainer(ABC):
    """The training notebook's steps, called in this order."""

    @abstractmethod
    def describe(self) -> str:
        """Where the training runs."""

    @abstractmethod
    def read(self, data_url: str, data_query: str):
        """Read and check the rows; their data object (`provenance()` for the metadata)."""

    @abstractmethod
    def describe_data(self) -> str:
        """One line: how many rows, from where, their sha256."""

    @abstractmethod
    def data_summary(self) -> pd.DataFrame:
        """Count, mean, min and max (at least) of every column."""

    @abstractmethod
    def zeros_that_mean_missing(self) -> pd.Series:
        """How many zeros each feature of ZERO_MEANS_MISSING holds."""

    @abstractmethod
    def split(self, test_size: float, seed: int, n_folds: int, fold_seeds) -> tuple[int, int]:
        """Set the stratified test rows aside and deal the training rows into
        `n_folds` folds per seed of `fold_seeds`; (training rows, test rows)."""

    @abstractmethod
    def cross_validate(
        self, parameters: dict, max_trees: int, early_stopping_rounds: int, threshold: float
    ) -> training.CrossValidation:
        """`training.cross_validate` on the folds of `split`."""

    @abstractmethod
    def fit(self, parameters: dict, trees: int) -> xgb.Booster:
        """The final model: all the training rows, `trees` trees."""

    @abstractmethod
    def test(self, booster: xgb.Booster, uncalibrated: xgb.Booster, threshold: float, seed: int) -> HeldOutMetrics:
        """`booster` measured on the test rows, with 95% intervals (in process a
        bootstrap drawn with `seed`, on a cluster formulas), and the Brier
        score the `uncalibrated` one would have had."""

    @abstractmethod
    def feature_ranges(self) -> pd.DataFrame:
        """min, max and missing of each feature over the training rows."""

    @abstractmethod
    def run_record(self) -> dict:
        """What the metadata records about where the model was trained, beyond the data's provenance."""

    @abstractmethod
    def library_versions(self) -> dict:
        """Versions of the libraries this way of training adds."""

    @abstractmethod
    def close(self):
        """Release what `trainer_for` started."""


class InProcessTrainer(Trainer):
    """Every row in this process: scikit-learn's splits, exact measures, bootstrap intervals."""

    def describe(self) -> str:
        return "in this process"

    def read(self, data_url, data_query):
        self.data = read_training_data(data_url, data_query)
        self.rows = self.data.rows
        self.X = pd.DataFrame(to_model_input(self.rows[list(FEATURE_NAMES)].to_numpy()), columns=FEATURE_NAMES)
        self.y = self.rows[LABEL_NAME].to_numpy()
        return self.data

    def describe_data(self):
        return (
            f"{len(self.rows)} rows from {self.data.source}, {self.rows[LABEL_NAME].mean():.1%} positive, "
            f"sha256 {self.data.sha256}"
        )

    def data_summary(self):
        return self.rows.describe().T

    def zeros_that_mean_missing(self):
        return (self.rows[ZERO_MEANS_MISSING] == 0).sum()

    def split(self, test_size, seed, n_folds, fold_seeds):
        self.X_train, self.X_test, self.y_train, self.y_test = train_test_split(
            self.X, self.y, test_size=test_size, stratify=self.y, random_state=seed
        )
        self.folds = training.repeated_folds(self.y_train, n_folds, fold_seeds)
        return len(self.X_train), len(self.X_test)

    def cross_validate(self, parameters, max_trees, early_stopping_rounds, threshold):
        return training.cross_validate(
            parameters, self.X_train, self.y_train, self.folds, max_trees, early_stopping_rounds, threshold
        )

    def fit(self, parameters, trees):
        return training.fit(parameters, self.X_train, self.y_train, trees)

    def test(self, booster, uncalibrated, threshold, seed):
        probability = booster.inplace_predict(self.X_test.to_numpy())
        accuracy_at = lambda labels, probability: np.mean(labels == (probability >= threshold))
        intervals = {
            "test_accuracy_interval": training.bootstrap_interval(self.y_test, probability, accuracy_at, seed=seed),
            "test_roc_auc_interval": training.bootstrap_interval(
                self.y_test, probability, training.fast_roc_auc, seed=seed
            ),
        }
        uncalibrated_probability = uncalibrated.inplace_predict(self.X_test.to_numpy())
        return held_out_metrics(
            training.classification_metrics(self.y_test, probability, threshold),
            intervals,
            training.classification_metrics(self.y_test, uncalibrated_probability, threshold)["brier"],
            self.y_test,
            probability,
            # Every row of the data set, which the tests send to the service.
            self.rows.assign(probability=booster.inplace_predict(self.X.to_numpy())),
        )

    def feature_ranges(self):
        X = self.X_train
        return pd.DataFrame({"min": X.min(), "max": X.max(), "missing": X.isna().sum()})

    def run_record(self):
        return {}  # the data's provenance says it all

    def library_versions(self):
        return {}

    def close(self):
        pass  # nothing was started


class ClusterTrainer(Trainer):
    """The rows stay on a Dask cluster's workers; what comes back is bounded
    (counts, metrics, samples). See `diabetes.cluster_training` for how each
    step differs from the in-process one, and why."""

    def __init__(self, cluster: cluster_training.Cluster):
        self.cluster = cluster

    def describe(self):
        where = self.cluster.describe()
        return f"on the Dask cluster at {where['scheduler']}: {where['workers']} workers, {where['threads']} threads"

    def read(self, data_url, data_query):
        self.data = cluster_training.read_training_partitions(data_url, data_query)
        return self.data

    def describe_data(self):
        return (
            f"{self.data.row_count} rows in {self.data.partitions} partitions from {self.data.source}, "
            f"sha256 {self.data.sha256}"
        )

    def data_summary(self):
        return self.data.summary

    def zeros_that_mean_missing(self):
        return (self.data.rows[ZERO_MEANS_MISSING] == 0).sum().compute()

    def split(self, test_size, seed, n_folds, fold_seeds):
        self.splits = cluster_training.split(self.data, test_size, seed, n_folds, fold_seeds)
        self.n_folds = n_folds
        return self.splits.training_rows, self.splits.test_rows

    def cross_validate(self, parameters, max_trees, early_stopping_rounds, threshold):
        return cluster_training.cross_validate(
            self.cluster, parameters, self.splits, self.n_folds, max_trees, early_stopping_rounds, threshold
        )

    def fit(self, parameters, trees):
        return cluster_training.fit(self.cluster, parameters, self.splits, trees)

    def test(self, booster, uncalibrated, threshold, seed):
        self.evaluation = cluster_training.evaluate(self.cluster, booster, self.splits.test, threshold)
        sample = self.evaluation.sample
        return held_out_metrics(
            self.evaluation.metrics,
            cluster_training.normal_intervals(self.evaluation),
            cluster_training.evaluate(self.cluster, uncalibrated, self.splits.test, threshold).metrics["brier"],
            sample[LABEL_NAME],
            sample["probability"].to_numpy(),
            cluster_training.raw_rows(sample),
        )

    def feature_ranges(self):
        return cluster_training.feature_ranges(self.splits)

    def run_record(self):
        return {"cluster": cluster_training.run_record(self.cluster, self.data, self.splits, self.evaluation)}

    def library_versions(self):
        return cluster_training.versions()

    def close(self):
        self.cluster.close()


def trainer_for(dask_scheduler: str) -> Trainer:
    """In this process for "", else on the cluster `cluster_training.connect` reaches or starts."""
    if not dask_scheduler:
        return InProcessTrainer()
    return ClusterTrainer(cluster_training.connect(dask_scheduler))

"""A synthetic data set shaped like Pima, as many rows as asked, in Parquet
partitions: what `make bigdata ROWS=10000000` writes to train on a cluster.

Each row is a real row of the data set drawn at random, its label kept, its
measurements moved by Gaussian noise (`NOISE` times the feature's spread
within that row's class, so the classes stay apart as they are in the real
data): the labels stay consistent with the features. A measurement that is
0 for "not measured" stays 0; counts (pregnancies, age) stay whole; nothing
goes below 0.

    python -m diabetes.bigdata ROWS OUT_DIR [--partition-rows N] [--seed S]
"""

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from diabetes.data import read_training_data
from diabetes.features import FEATURE_NAMES, FEATURES, LABEL_NAME

SOURCE = Path(__file__).resolve().parents[1] / "data" / "pima-indians-diabetes.data.csv"
NOISE = 0.1
PARTITION_ROWS = 500_000
WHOLE_NUMBERS = ("times_pregnant", "age")


def synthetic_partition(real: pd.DataFrame, rows: int, generator: np.random.Generator) -> pd.DataFrame:
    drawn = real.iloc[generator.integers(0, len(real), rows)].reset_index(drop=True)
    spread = real.groupby(LABEL_NAME)[list(FEATURE_NAMES)].std()
    out = {}
    for feature in FEATURES:
        values = drawn[feature.name].to_numpy()
        noise = generator.normal(0, 1, rows) * NOISE * spread[feature.name].loc[drawn[LABEL_NAME]].to_numpy()
        moved = np.maximum(values + noise, 0)
        if feature.name in WHOLE_NUMBERS:
            moved = np.round(moved)
        if feature.zero_means_missing:
            moved = np.where(values == 0, 0.0, np.maximum(moved, np.finfo(np.float64).tiny))
        out[feature.name] = moved
    out[LABEL_NAME] = drawn[LABEL_NAME].to_numpy(np.int64)
    return pd.DataFrame(out)


def write(rows: int, out_dir, partition_rows: int = PARTITION_ROWS, seed: int = 0) -> list[Path]:
    """Write part-00000.parquet, ... (replacing the folder); returns the files."""
    out_dir = Path(out_dir)
    real = read_training_data(str(SOURCE)).rows
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    files = []
    for number, start in enumerate(range(0, rows, partition_rows)):
        generator = np.random.default_rng([seed, number])
        part = synthetic_partition(real, min(partition_rows, rows - start), generator)
        path = staging / f"part-{number:05d}.parquet"
        part.to_parquet(path, index=False)
        files.append(out_dir / path.name)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    return files


def main(argv) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic Pima-shaped data set as Parquet partitions.")
    parser.add_argument("rows", type=int)
    parser.add_argument("out_dir")
    parser.add_argument("--partition-rows", type=int, default=PARTITION_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    files = write(args.rows, args.out_dir, args.partition_rows, args.seed)
    print(f"{args.rows} rows in {len(files)} Parquet partitions in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

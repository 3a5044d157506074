"""Training time and peak memory per process, in process and on Dask clusters.

    python -m bench.train_on_cluster [--rows 1000000 10000000] [--data-dir build/bench-train]

For each size, `diabetes.bigdata` writes the synthetic rows as Parquet
partitions (once; kept in the data folder), and the training steps of the
notebook run in three setups, each in a fresh process so that its peak is its
own:

- in process: the rows read into one pandas frame, split and cross-validated
  by `diabetes.training` (the notebook's default path);
- a LocalCluster of 2 single-threaded workers started by that process;
- an external cluster: `dask scheduler` and 2 `dask worker` processes started
  here (bench.dask_cluster), which that process joins.

Timed: reading and splitting the rows, then the training itself
(cross-validated early stopping, 2 folds, then the refit). Peak memory is each
process's high-water mark of resident memory (VmHWM): the training process
(the client on a cluster) and every worker. Writes results.json and
results.md to the data folder and prints the table.

The parameters are the notebook's defaults with the tests' fast set on top
(few stumps): the point is how time and memory grow with the rows, not the
model.
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import yaml

from tests.dask_cluster import ExternalDaskCluster
from tests.processes import run_bounded

PROJECT = Path(__file__).resolve().parents[1]
SETUPS = ("in process", "LocalCluster", "external scheduler")
LOCAL_WORKERS = 2
RUN_TIMEOUT_SECONDS = 1800
PARAMETER_FILES = ("params/train.yaml", "tests/params/fast.yaml")


def peak_megabytes(pid="self") -> float:
    """VmHWM: the most resident memory the process has held."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc status")


def notebook_parameters() -> dict:
    parameters = {}
    for path in PARAMETER_FILES:
        parameters.update(yaml.safe_load((PROJECT / path).read_text()))
    return parameters


def train_once(setup: str, data_dir: str, scheduler: str = "") -> dict:
    """One measured run, in this process (the child of `main`)."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from diabetes import cluster_training, training
    from diabetes.features import FEATURE_NAMES, LABEL_NAME, to_model_input

    p = notebook_parameters()
    parameters = training.booster_parameters(
        p["max_depth"],
        p["learning_rate"],
        p["subsample"],
        p["colsample_bytree"],
        p["min_child_weight"],
        p["reg_lambda"],
        p["seed"],
        p["threads"] if "threads" in p else 1,
    )
    seeds = range(p["seed"], p["seed"] + p["cv_repeats"])
    started = time.monotonic()
    result = {"setup": setup}
    if setup == "in process":
        raw = pd.read_parquet(data_dir)
        X = to_model_input(raw[list(FEATURE_NAMES)].to_numpy())
        y = raw[LABEL_NAME].to_numpy()
        del raw
        X_train, _, y_train, _ = train_test_split(X, y, test_size=p["test_size"], stratify=y, random_state=p["seed"])
        folds = training.repeated_folds(y_train, p["cv_folds"], seeds)
        read = time.monotonic()
        cv = training.cross_validate(parameters, X_train, y_train, folds, p["n_estimators"], p["early_stopping_rounds"])
        training.fit(parameters, X_train, y_train, cv.trees)
        result.update(rows=len(y), partitions=len(list(Path(data_dir).glob("*.parquet"))), workers=0)
    else:
        cluster = cluster_training.connect(scheduler or "local", local_workers=LOCAL_WORKERS)
        data = cluster_training.read_training_partitions(data_dir)
        splits = cluster_training.split(data, p["test_size"], p["seed"], p["cv_folds"], seeds)
        read = time.monotonic()
        cv = cluster_training.cross_validate(
            cluster, parameters, splits, p["cv_folds"], p["n_estimators"], p["early_stopping_rounds"]
        )
        cluster_training.fit(cluster, parameters, splits, cv.trees)
        result.update(rows=data.row_count, partitions=data.partitions, **cluster.describe())
        result["worker_peak_mb"] = sorted(cluster.client.run(peak_megabytes).values())
    finished = time.monotonic()
    result.update(
        read_seconds=round(read - started, 1),
        train_seconds=round(finished - read, 1),
        trees=cv.trees,
        process_peak_mb=peak_megabytes(),
    )
    if setup != "in process":
        cluster.close()
    return result


def ensure_data(rows: int, data_dir: Path) -> Path:
    folder = data_dir / f"rows-{rows}"
    if not (folder / ".complete").exists():
        from diabetes import bigdata

        bigdata.write(rows, folder)
        (folder / ".complete").touch()
    return folder


def run_child(setup: str, folder: Path, scheduler: str = "") -> dict:
    result = run_bounded(
        [sys.executable, "-m", "bench.train_on_cluster", "--one", setup, str(folder), "--scheduler", scheduler],
        timeout=RUN_TIMEOUT_SECONDS,
        cwd=PROJECT,
    )
    if result.returncode != 0:
        return {"setup": setup, "error": (result.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(results: list[dict]) -> str:
    lines = [
        "| setup | rows | partitions | workers | read+split s | train s | training process peak MB "
        "| each worker's peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['setup']} | {r.get('rows', '')} | | | | | failed: {r['error']} | |")
            continue
        workers = ", ".join(f"{peak:.0f}" for peak in r.get("worker_peak_mb", [])) or "-"
        lines.append(
            f"| {r['setup']} | {r['rows']:,} | {r['partitions']} | {r['workers']} | {r['read_seconds']} "
            f"| {r['train_seconds']} | {r['process_peak_mb']:.0f} | {workers} |"
        )
    return "\n".join(lines)


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--data-dir", default="build/bench-train")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    parser.add_argument("--one", nargs=2, metavar=("SETUP", "DATA"), help=argparse.SUPPRESS)
    parser.add_argument("--scheduler", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(train_once(args.one[0], args.one[1], args.scheduler)))
        return 0
    data_dir = Path(args.data_dir)
    results = []
    for rows in args.rows:
        folder = ensure_data(rows, data_dir)
        for setup in args.setups:
            print(f"{rows:,} rows, {setup} ...", file=sys.stderr, flush=True)
            if setup == "external scheduler":
                with ExternalDaskCluster(
                    workers=LOCAL_WORKERS, log_dir=data_dir / "dask-logs", memory_limit="6GB"
                ) as cluster:
                    result = run_child(setup, folder, cluster.address)
                    result["scheduler_peak_mb"] = peak_megabytes(cluster.scheduler.pid)
            else:
                result = run_child(setup, folder)
            results.append(result)
            print(table([result]).splitlines()[-1], file=sys.stderr, flush=True)
    report = (
        f"Training time and peak memory per process ({platform.node()}, {os.cpu_count()} cores; "
        f"parameters {' + '.join(PARAMETER_FILES)})\n\n{table(results)}\n"
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (data_dir / "results.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

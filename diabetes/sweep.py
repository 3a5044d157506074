"""Sweeps: the training notebook run by papermill once per parameter set,
in parallel, compared in one report.

    python -m diabetes.sweep params/sweep.yaml [--sweeps-dir build/sweeps] [--jobs N]

The sweep file holds `base` (parameter files applied first, as `make train`
applies TRAIN_PARAMS), `mode` (`grid`: every combination of the `grid`
lists; `random`: `samples` combinations drawn from them with `seed`), and
optional named `runs` (e.g. the article's parameters) added to them.

Each run trains on the training rows only and is ranked by its cross-validated
ROC AUC; it writes its model in its own folder of the sweep (never in
build/models: a sweep publishes nothing) with the quality gate off, so that a
weak run is still a row of the table. A run that fails is a row with its error.

    build/sweeps/<id>/
        sweep.yaml         the sweep file
        results.csv        one row per run: parameters, metrics, duration, status, error
        report.ipynb/.html the report notebook (notebooks/sweep_report.ipynb), run by papermill
        best.yaml          the best run's parameters; train-params: the files `make train` needs to train it
        base/              copies of the base files that hold a data URL with a credential, redacted
        runs/<n>/          params.yaml, the executed train.ipynb, models/
    build/sweeps/latest -> <id>

Everything the sweep writes or prints holds a data URL's credentials redacted
(diabetes/credentials.py): each run's papermill reads redacted parameter
files, and the URLs themselves reach only the environment of that run's
processes. A best run whose own parameters held a credential is written with
it redacted: name it by reference (`${NAME}`) for `PUBLISH=best` to train it.
"""

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import papermill
import yaml

from diabetes import credentials
from diabetes.model_store import load_metadata, point_link

PROJECT = Path(__file__).resolve().parents[1]
NOTEBOOK = str(PROJECT / "notebooks" / "train.ipynb")
REPORT_NOTEBOOK = str(PROJECT / "notebooks" / "sweep_report.ipynb")
LATEST_LINK = "latest"
# Set by the sweep for every run: its own models folder, no quality gate (every
# run is measured), one XGBoost thread (runs go in parallel), and no article
# comparison (the sweep file adds the article's parameters as a run of their own).
RUN_SETTINGS = {"min_auc": 0.0, "threads": 1, "compare_with_article": False}
METRICS = (
    "cv_roc_auc_mean",
    "cv_roc_auc_std",
    "cv_accuracy_mean",
    "cv_accuracy_std",
    "cv_brier_mean",
    "cv_log_loss_mean",
    "test_roc_auc",
    "test_accuracy",
    "test_brier",
)


class SweepError(Exception):
    """The sweep file is wrong; the message says how."""


def parameter_sets(spec: dict) -> list[tuple[str, dict]]:
    """(name, parameters) of every run of the sweep file, in order."""
    grid = spec.get("grid") or {}
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"grid: {name} must be a non-empty list of values")
    names = list(grid)
    combinations = [dict(zip(names, values)) for values in itertools.product(*grid.values())]
    mode = spec.get("mode", "grid")
    if mode == "random":
        samples = int(spec.get("samples", 10))
        combinations = random.Random(spec.get("seed", 0)).sample(combinations, min(samples, len(combinations)))
    elif mode != "grid":
        raise SweepError(f"mode: {mode!r}; expected grid or random")
    runs = [(f"{index:03d}", parameters) for index, parameters in enumerate(combinations, 1)]
    runs += [(str(name), dict(parameters or {})) for name, parameters in (spec.get("runs") or {}).items()]
    if not runs:
        raise SweepError("no runs: give a grid or runs")
    return runs


def check_names(spec: dict, runs):
    """A parameter the notebook does not have is an error, as in `make train`."""
    known = set(papermill.inspect_notebook(NOTEBOOK))
    named = {name for _, parameters in runs for name in parameters}
    for path in spec.get("base", []):
        named |= set(yaml.safe_load(Path(path).read_text()) or {})
    unknown = sorted(named - known)
    if unknown:
        raise SweepError(f"unknown parameters for {NOTEBOOK}: {', '.join(unknown)} (it has: {', '.join(known)})")


def papermill_command(notebook, executed, *options: tuple) -> list[str]:
    """papermill run as the Makefile runs it, with `options` such as ("-f", path)."""
    command = [sys.executable, "-m", "papermill", "-k", "python3", "--no-progress-bar", str(notebook), str(executed)]
    return command + [str(part) for option in options for part in option]


def run_one(name: str, parameters: dict, base: list, run_dir: Path, timeout: float, hidden: dict | None = None) -> dict:
    """Train with papermill; the row of the results table, whatever happens.
    `base` holds no credential (see private_base); `hidden` maps the redacted
    URLs of `base` to the URLs, which only the run's environment gets."""
    run_dir.mkdir(parents=True)
    settings = {**parameters, **RUN_SETTINGS, "models_dir": str(run_dir / "models")}
    record, found = credentials.private_parameters(settings)
    hidden = {**(hidden or {}), **found}
    (run_dir / "params.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    parameter_files = [*base, run_dir / "params.yaml"]
    command = papermill_command(NOTEBOOK, run_dir / "train.ipynb", *[("-f", path) for path in parameter_files])
    started = time.monotonic()
    shown = {key: record[key] for key in parameters}
    row = {"run": name, **shown, "status": "failed", "error": "", "notebook": str(run_dir / "train.ipynb")}
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=credentials.environment(hidden, {**os.environ, "OMP_NUM_THREADS": "1"}),
        )
        if result.returncode == 0:
            metadata = load_metadata(run_dir / "models" / "latest")
            row.update(
                status="ok",
                trees=metadata.trees,
                model_dir=str((run_dir / "models" / "latest").resolve()),
                **{metric: getattr(metadata.metrics, metric) for metric in METRICS},
            )
        else:
            row["error"] = notebook_error(run_dir / "train.ipynb") or result.stderr.strip().splitlines()[-1]
    except subprocess.TimeoutExpired:
        row["error"] = f"timed out after {timeout:.0f} s"
    except (OSError, ValueError, KeyError) as error:
        row["error"] = f"{error.__class__.__name__}: {error}"
    for url in hidden.values():
        row["error"] = credentials.scrubbed(row["error"], url)
    row["duration_s"] = round(time.monotonic() - started, 1)
    return row


def private_base(base: list[str], folder: Path) -> tuple[list[str], dict]:
    """The base parameter files the runs read: a redacted copy in `folder` of
    each that holds a data URL with a credential; and {redacted URL: URL}."""
    files, hidden = [], {}
    for index, path in enumerate(base):
        record, found = credentials.private_parameters(yaml.safe_load(Path(path).read_text()) or {})
        if found:
            folder.mkdir(exist_ok=True)
            path = folder / f"{index}-{Path(path).name}"
            path.write_text(f"# {base[index]}, its credentials redacted\n" + yaml.safe_dump(record, sort_keys=False))
            hidden.update(found)
        files.append(str(path))
    return files, hidden


def redacted_values(value):
    """The value (a sweep file, parameters) with every data URL in it redacted."""
    if isinstance(value, dict):
        return {key: redacted_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redacted_values(item) for item in value]
    return credentials.redacted(value) if credentials.is_url(value) else value


def notebook_error(path: Path) -> str | None:
    """The error a failed notebook shows, as `Name: message`."""
    try:
        notebook = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                return f"{output['ename']}: {output['evalue']}".strip()
    return None


def best_run(results: pd.DataFrame) -> pd.Series | None:
    """The highest cross-validated ROC AUC (the test rows choose nothing); ties: the lower CV log loss."""
    done = results[results["status"] == "ok"]
    if done.empty:
        return None
    return done.sort_values(["cv_roc_auc_mean", "cv_log_loss_mean"], ascending=[False, True]).iloc[0]


def progress(done: int, total: int, row: dict, best, started: float) -> str:
    elapsed = time.monotonic() - started
    left = elapsed / done * (total - done)
    figure = f"CV AUC {row['cv_roc_auc_mean']:.4f}" if row["status"] == "ok" else f"FAILED: {row['error'][:80]}"
    best_text = f"best {best['cv_roc_auc_mean']:.4f} (run {best['run']})" if best is not None else "no best yet"
    return (
        f"[{done:>3}/{total}] run {row['run']} {row['duration_s']:>5.1f} s  {figure} | {best_text} | ~{left:.0f} s left"
    )


def sweep(
    sweep_file: Path, sweeps_dir: Path, jobs: int | None = None, timeout: float = 1800, report: bool = True
) -> Path:
    spec = yaml.safe_load(Path(sweep_file).read_text()) or {}
    base = [str(path) for path in spec.get("base", [])]
    runs = parameter_sets(spec)
    check_names(spec, runs)
    jobs = max(1, min(jobs or len(os.sched_getaffinity(0)), len(runs)))
    sweep_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    sweep_dir = Path(sweeps_dir) / sweep_id
    # Each run's executed notebook shows training rows: the runs are the user's alone.
    (sweep_dir / "runs").mkdir(parents=True, mode=0o700)
    shown_spec = redacted_values(spec)
    (sweep_dir / "sweep.yaml").write_text(
        Path(sweep_file).read_text()
        if shown_spec == spec
        else f"# {sweep_file}, its credentials redacted\n" + yaml.safe_dump(shown_spec, sort_keys=False)
    )
    run_base, hidden = private_base(base, sweep_dir / "base")
    print(f"sweep {sweep_id}: {len(runs)} runs of {NOTEBOOK}, {jobs} at a time, one XGBoost thread each", flush=True)

    started, rows = time.monotonic(), []
    with ThreadPoolExecutor(jobs) as pool:
        futures = [
            pool.submit(run_one, name, parameters, run_base, sweep_dir / "runs" / name, timeout, hidden)
            for name, parameters in runs
        ]
        for future in as_completed(futures):
            rows.append(future.result())
            best = best_run(pd.DataFrame(rows)) if any(row["status"] == "ok" for row in rows) else None
            print(progress(len(rows), len(runs), rows[-1], best, started), flush=True)

    order = {name: index for index, (name, _) in enumerate(runs)}
    results = pd.DataFrame(sorted(rows, key=lambda row: order[row["run"]]))
    swept = [
        name
        for name in results.columns
        if name not in {"run", "status", "error", "notebook", "model_dir", "duration_s", "trees", *METRICS}
    ]
    results = results.reindex(
        columns=["run", *swept, "status", "trees", *METRICS, "duration_s", "error", "notebook", "model_dir"]
    )
    results.to_csv(sweep_dir / "results.csv", index=False)
    best = best_run(results)
    if best is not None:
        parameters = dict(next(parameters for name, parameters in runs if name == best["run"]))
        shown = redacted_values(parameters)
        (sweep_dir / "best.yaml").write_text(
            f"# The best run ({best['run']}) of sweep {sweep_id}, by cross-validated ROC AUC\n"
            + (
                ""
                if shown == parameters
                else "# A credential of its data URL is redacted: name it by reference (${NAME}) to train it.\n"
            )
            + yaml.safe_dump(shown, sort_keys=False)
        )
        (sweep_dir / "train-params").write_text(" ".join([*base, str(sweep_dir / "best.yaml")]) + "\n")
    point_link(Path(sweeps_dir), LATEST_LINK, sweep_id)
    failed = int((results["status"] != "ok").sum())
    print(
        f"{len(results) - failed} runs ok, {failed} failed, in {time.monotonic() - started:.0f} s; "
        + (
            f"best: run {best['run']}, CV AUC {best['cv_roc_auc_mean']:.4f} ± {best['cv_roc_auc_std']:.4f}"
            if best is not None
            else "no run succeeded"
        ),
        flush=True,
    )
    if report:
        write_report(sweep_dir)
    return sweep_dir


def write_report(sweep_dir: Path):
    """The report notebook, run by papermill, and its HTML (nbconvert)."""
    executed = sweep_dir / "report.ipynb"
    subprocess.run(
        papermill_command(REPORT_NOTEBOOK, executed, ("-p", "sweep_dir", sweep_dir)), check=True, timeout=600
    )
    subprocess.run(
        [sys.executable, "-m", "nbconvert", "--to", "html", "--no-input", "--log-level=WARN", str(executed)],
        check=True,
        timeout=300,
    )
    print(f"report: {sweep_dir / 'report.html'}", flush=True)


def main(argv) -> int:
    parser = argparse.ArgumentParser(description="Run the training notebook over a grid of parameters.")
    parser.add_argument("sweep_file", type=Path)
    parser.add_argument("--sweeps-dir", type=Path, default=Path("build/sweeps"))
    parser.add_argument("--jobs", type=int, help="runs at a time (default: the number of cores)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a run may take")
    args = parser.parse_args(argv)
    try:
        sweep_dir = sweep(args.sweep_file, args.sweeps_dir, args.jobs, args.timeout)
    except (SweepError, OSError, yaml.YAMLError) as error:
        print(f"sweep: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"sweep: the report failed ({error})", file=sys.stderr)
        return 1
    return 0 if (sweep_dir / "best.yaml").exists() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Benchmark the article's route side by side, over HTTP, with wrk.

    python -m bench.run [--quick] [--mlflow] [--output-dir DIR]

Servers, one at a time, each on a free port of 127.0.0.1: the article's
endpoint as the article wrote it, this project's service as `make serve` runs
it, the same gunicorn stack answering a constant (the ceiling), and with
--mlflow `mlflow models serve` when MLflow is installed. Every round starts,
loads and stops each server in turn, so that noise on the machine hits all of
them; ratios compare servers within a round. Writes results.json and
results.md to build/bench/ and prints the table.
"""

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.measure import WRK_THREADS, measure_load, run_bounded, run_wrk, write_wrk_script
from bench.report import markdown, ratios, summarize
from bench.servers import (PROJECT, ArticleServer, CeilingServer, MlflowServer, ServerFailed, ServiceUnderPM2,
                           prepare_models_copy, running)
from diabetes.catalog import ARTICLE_PATH
from diabetes.settings import notebook_defaults

PROJECT_MODELS = PROJECT / "build" / "models"
DEFAULT_OUTPUT = PROJECT / "build" / "bench"
WRK_MISSING = ("wrk is not installed; the benchmark loads the servers with it. "
               "Install it with: apt-get install -y wrk")


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: int          # of each measured load
    warmup_seconds: int   # of a discarded load after each start (wrk counts whole seconds)
    connection_counts: tuple = (16, 64)
    wrk_threads: int = WRK_THREADS


# About 2.5 minutes, and under 1 minute, start-ups included (3 servers, 2 cores).
NORMAL = Plan(rounds=3, seconds=5, warmup_seconds=1)
QUICK = Plan(rounds=1, seconds=2, warmup_seconds=1)

# The article's baseline loads a pickle, as the article did; it is written
# here, in the benchmark's temporary folder, from the project's model file.
_PICKLE_CLASSIFIER = """\
import pickle, sys
from xgboost import XGBClassifier
classifier = XGBClassifier()
classifier.load_model(sys.argv[1])
with open(sys.argv[2], "wb") as file:
    pickle.dump(classifier, file)
"""


def log(message: str):
    print(message, file=sys.stderr, flush=True)


def stop_cleanly_on_signals():
    """Ctrl-C or SIGTERM unwinds through the `finally` blocks that stop the
    servers. Further signals are ignored meanwhile: they would cut a stop
    short, and every step of it has its own timeout."""
    def interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log(f"{signal.Signals(signum).name}: stopping the servers")
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def write_article_pickle(model_file: Path, destination: Path) -> Path:
    # In a child process: the benchmark itself never imports XGBoost, whose
    # threads would make forking the servers unsafe.
    result = run_bounded([sys.executable, "-c", _PICKLE_CLASSIFIER, str(model_file), str(destination)],
                         timeout=120, cwd=PROJECT)
    if result.returncode != 0:
        raise ServerFailed(f"could not pickle the article's classifier:\n{result.stderr[-2000:]}")
    return destination


def models_to_serve(workdir: Path) -> Path:
    """A copy of the project's current model version; when there is none,
    `make serve` first trains and deploys one in the project, as for a user."""
    models = prepare_models_copy(PROJECT_MODELS, workdir / "models")
    if models is None:
        log("no model in build/models/current: `make serve` trains and deploys one first")
        with running(ServiceUnderPM2(workdir / "first-serve", models_dir=None)):
            pass
        models = prepare_models_copy(PROJECT_MODELS, workdir / "models")
    if models is None:
        raise ServerFailed("make serve left no model in build/models/current")
    return models


def rotated(servers: list, round_: int) -> list:
    """A different server goes first in each round."""
    shift = round_ % len(servers)
    return servers[shift:] + servers[:shift]


def benchmark(plan: Plan, workdir: Path, with_mlflow: bool) -> dict:
    models = models_to_serve(workdir)
    model_dir = (models / "current").resolve()
    model_version = json.loads((model_dir / "metadata.json").read_text())["version"]
    pickle_path = write_article_pickle(model_dir / "model.ubj", workdir / "article-model.pkl")
    servers = [ArticleServer(workdir, pickle_path), ServiceUnderPM2(workdir, models),
               CeilingServer(workdir, workers=notebook_defaults()["workers"])]
    skipped = []
    if with_mlflow:
        if importlib.util.find_spec("mlflow") is None:
            skipped.append("mlflow: not installed in this environment")
            log("skipped mlflow models serve: mlflow is not installed in this environment")
        else:
            servers.append(MlflowServer(workdir, model_dir / "model.ubj"))
    scripts = {server.key: write_wrk_script(workdir / f"{server.key}.lua", server.body) for server in servers}

    runs, answers = [], {}
    for round_ in range(plan.rounds):
        for server in rotated(servers, round_):
            log(f"round {round_ + 1}/{plan.rounds}: starting {server.label}")
            with running(server):
                answers.setdefault(server.key, server.answer)
                run_wrk(server.url, scripts[server.key], plan.connection_counts[0], plan.warmup_seconds)
                for connections in plan.connection_counts:
                    load = measure_load(server.url, scripts[server.key], connections, plan.seconds,
                                        server.root_pid, server.supervisor_pid)
                    runs.append({"server": server.key, "round": round_, "connections": connections, **load})
                    log(f"  {connections:>3} connections: {load['requests_per_second']:8.0f} requests/s, "
                        f"p99 {load['p99_ms']:.1f} ms, errors {sum(load['errors'].values())}")

    return {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "path": ARTICLE_PATH,
        "plan": asdict(plan),
        "model_version": model_version,
        "servers": {server.key: {
            "label": server.label,
            "answer": answers.get(server.key),
            "by_connections": {str(connections): summarize([run for run in runs if run["server"] == server.key
                                                            and run["connections"] == connections])
                               for connections in plan.connection_counts},
            "runs": [run for run in runs if run["server"] == server.key],
        } for server in servers},
        "ratios": ratios(runs, plan.connection_counts),
        "skipped": skipped,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round: under a minute")
    parser.add_argument("--mlflow", action="store_true", help="add `mlflow models serve` if MLflow is installed")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT, help="where results.json and .md go")
    arguments = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        log(WRK_MISSING)
        return 2
    stop_cleanly_on_signals()
    plan = QUICK if arguments.quick else NORMAL
    started = time.monotonic()
    machine = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0],
               "python": platform.python_version(), "platform": platform.platform()}
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        results = benchmark(plan, workdir, arguments.mlflow)
    except (ServerFailed, RuntimeError, subprocess.TimeoutExpired) as error:
        log(f"benchmark failed: {error}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: every server was stopped, nothing was written")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["machine"] = machine
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    table = markdown(results)
    arguments.output_dir.mkdir(parents=True, exist_ok=True)
    (arguments.output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (arguments.output_dir / "results.md").write_text(table)
    print(table)
    log(f"done in {results['elapsed_seconds']:.0f} s; wrote {arguments.output_dir}/results.json and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

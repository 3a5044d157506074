"""Benchmark the article's route side by side, over HTTP, with wrk.

    python -m bench.run [--quick] [--mlflow] [--output-dir DIR]

Servers, one at a time, each on a free port of 127.0.0.1: the article's
endpoint as the article wrote it, this project's service as `make serve` runs
it (PM2, the HAProxy edge, gunicorn), the same edge and gunicorn stack
answering a constant (the ceiling), main as it was before the edge (a git
worktree of that commit, its own `make serve`), HAProxy alone answering a
constant (the machine's limit for HTTP), MLServer when installed, with
--mlflow `mlflow models serve` of the registered model's champion when
the tracking venv is installed (build/tracking-venv, `make setup`), and the stack
(`make stack`, 2 replicas) on a two-node swarm of the benchmark's own, with
its replicas on two nodes and on one (bench.stack). Every round starts,
loads and stops each server in turn, so that noise on the machine hits all of
them; ratios compare servers within a round. While the service runs, it also
takes batches on /predict, and (in the first round) a `make serve` with
nothing changed is timed against it. Before the rounds, one row is predicted
in process (bench.in_process), the app's own CPU per request and what CORS
adds to it are measured in process (bench.app_overhead), and `make train` is
timed. Writes results.json
and results.md to build/bench/, with the project's targets, and prints the tables.
"""

import argparse
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
from datetime import UTC, datetime
from pathlib import Path

from bench.batches import TIMED_REQUESTS, load_batches, post, prepare_batches
from bench.bodies import V2_JSON, V2_SINGLE_ROW, encode
from bench.mlserver import BENCH_VENV, MlserverServer, mlserver_executable
from bench.profile import convert_endpoint_notebook
from bench.report import (
    batch_ratios,
    markdown,
    ratios,
    server_results,
    spread,
    stack_costs,
    summarize_batches,
    targets,
)
from bench.servers import (
    BEFORE_EDGE_COMMIT,
    KEEP_INSTALLED,
    PROJECT,
    ArticleServer,
    BeforeEdgeService,
    EdgeCeilingServer,
    EdgeConstantServer,
    MlflowServer,
    ServerFailed,
    ServiceUnderPM2,
    add_worktree,
    prepare_models_copy,
    remove_worktree,
    run_make,
    running,
)
from bench.stack import stack_servers
from diabetes.api_examples import ARTICLE_PATH, ARTICLE_VALUES, V2_INFER
from diabetes.model_metadata import read as read_metadata
from diabetes.settings import notebook_defaults
from diabetes.tracking import TRACKING_VENV, default_tracking_uri
from tests.processes import free_port, run_bounded
from tests.wrk import WRK_THREADS, run_wrk, write_wrk_script

PROJECT_MODELS = PROJECT / "build" / "models"
# The service's single-row loads on the V2 route count as a server of their own in the tables.
SERVICE_V2 = "service_v2"
SERVICE_V2_LABEL = "this project: the same service, V2 JSON"
DEFAULT_OUTPUT = PROJECT / "build" / "bench"
# The checkout of main before the edge, in the benchmark's temporary folder.
BEFORE_EDGE_CHECKOUT = "before-edge-checkout"
WRK_MISSING = "wrk is not installed; the benchmark loads the servers with it. Install it with: apt-get install -y wrk"


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: int  # of each measured load
    warmup_seconds: int  # of a discarded load after each start (wrk counts whole seconds)
    batch_seconds: int  # of each load of a batch size
    make_serve_repeats: int
    in_process_seconds: float  # most time spent timing each in-process path
    app_requests: int = 3000  # per repeat of bench.app_overhead, for each app
    connection_counts: tuple = (16, 64)
    wrk_threads: int = WRK_THREADS
    # The parameter files of the timed `make train`; the default ones unless a
    # smoke run only needs its code path to run.
    train_params: str = "params/train.yaml"


# Three rounds for figures to compare; one short round for a smoke run of the whole path.
NORMAL = Plan(rounds=3, seconds=5, warmup_seconds=1, batch_seconds=5, make_serve_repeats=3, in_process_seconds=2)
QUICK = Plan(
    rounds=1,
    seconds=2,
    warmup_seconds=1,
    batch_seconds=1,
    make_serve_repeats=1,
    in_process_seconds=0.5,
    app_requests=100,
    train_params="params/train.yaml tests/params/fast.yaml",
)

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
    result = run_bounded(
        [sys.executable, "-c", _PICKLE_CLASSIFIER, str(model_file), str(destination)], timeout=120, cwd=PROJECT
    )
    if result.returncode != 0:
        raise ServerFailed(f"could not pickle the article's classifier:\n{result.stderr[-2000:]}")
    return destination


def measure_in_process(model_dir: Path, workdir: Path, budget_seconds: float) -> dict:
    """bench.in_process's figures, measured in a child process for the same
    reason as the pickle above."""
    output = workdir / "in-process.json"
    result = run_bounded(
        [
            sys.executable,
            "-m",
            "bench.in_process",
            "--model-dir",
            str(model_dir),
            "--budget-seconds",
            str(budget_seconds),
            "--output",
            str(output),
        ],
        timeout=120 + 3 * budget_seconds,
        cwd=PROJECT,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the in-process measurement failed:\n{result.stderr[-2000:]}")
    return json.loads(output.read_text())


def measure_app_overhead(model_dir: Path, workdir: Path, requests: int) -> dict:
    """bench.app_overhead's figures (the app's CPU per request, with and
    without CORS), on the endpoint script converted here, in a child process
    for the same reason as the pickle above."""
    script = convert_endpoint_notebook(workdir / "scripts")
    output = workdir / "app-overhead.json"
    command = [sys.executable, "-m", "bench.app_overhead", "--script", str(script), "--model-dir", str(model_dir)]
    result = run_bounded(
        [*command, "--requests", str(requests), "--output", str(output)], timeout=120 + requests / 20, cwd=PROJECT
    )
    if result.returncode != 0:
        raise RuntimeError(f"the app overhead measurement failed:\n{result.stderr[-2000:]}")
    return json.loads(output.read_text())


def time_training(workdir: Path, train_params: str) -> dict:
    """`make train` with `train_params` into a fresh models folder, so that it
    really trains; beside its seconds, papermill's own record of the notebook's
    run (the rest is make, the parameter check and nbconvert's HTML)."""
    models, runs = workdir / "train-models", workdir / "train-runs"
    started = time.monotonic()
    result = run_make(
        [*KEEP_INSTALLED, "train", f"MODELS_DIR={models}", f"RUNS_DIR={runs}", f"TRAIN_PARAMS={train_params}"],
        timeout=300,
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"make train failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    notebook = json.loads((runs / "train.ipynb").read_text())
    return {
        "seconds": seconds,
        "papermill_seconds": notebook["metadata"]["papermill"]["duration"],
        "train_params": train_params,
    }


def time_make_serve(service: ServiceUnderPM2, repeats: int) -> dict:
    """A second `make serve` against the running service: what a user waits
    for when there is nothing to redo. `nothing_changed` says whether that
    held (a source edited during the benchmark makes the first one redeploy)."""
    nothing_changed = service.nothing_to_redeploy()
    if not nothing_changed:
        log("  make serve has something to redo (a source changed since the service started)")
    samples = []
    for _ in range(repeats):
        started = time.monotonic()
        result = service.make("serve", timeout=service.start_timeout)
        samples.append(time.monotonic() - started)
        if result.returncode != 0:
            raise RuntimeError(
                f"make serve failed against the running service ({result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
    log(f"  make serve with nothing changed: {', '.join(f'{sample:.2f}' for sample in samples)} s")
    return {**spread(samples), "samples": samples, "nothing_changed": nothing_changed}


def models_to_serve(workdir: Path, models_dir: Path) -> Path:
    """A copy of the current model version of `models_dir`; when the project's
    own has none, `make serve` first trains and deploys one in the project, as
    for a user."""
    models = prepare_models_copy(models_dir, workdir / "models")
    if models is None and models_dir != PROJECT_MODELS:
        raise ServerFailed(f"no model in {models_dir}")
    if models is None:
        log("no model in build/models/current: `make serve` trains and deploys one first")
        with running(ServiceUnderPM2(workdir / "first-serve", models_dir=None)):
            pass
        models = prepare_models_copy(PROJECT_MODELS, workdir / "models")
    if models is None:
        raise ServerFailed("make serve left no model in build/models/current")
    return models


def rotated(units: list[list], round_: int) -> list:
    """The servers in the order of this round: a different unit goes first in
    each round, and the servers of a unit run one right after the other."""
    shift = round_ % len(units)
    return [server for unit in units[shift:] + units[:shift] for server in unit]


def peers(
    workdir: Path, model_dir: Path, with_mlflow: bool, mlserver_venv: Path, mlserver_threads: int | None
) -> tuple[list, list[str]]:
    """The servers a user might pick instead that are installed, and why any other is skipped."""
    servers, skipped = [], []
    executable = mlserver_executable(mlserver_venv)
    if executable is None:
        skipped.append(f"mlserver: not installed in {mlserver_venv} (`make bench` installs it there)")
        log(f"skipped MLServer: {skipped[-1]}")
    else:
        servers.append(MlserverServer(workdir, model_dir / "model.ubj", executable, mlserver_threads))
    if with_mlflow:
        mlflow = TRACKING_VENV / "bin" / "mlflow"
        if not mlflow.exists():
            skipped.append(f"mlflow: not installed in {TRACKING_VENV} (`make setup` installs it there)")
            log(f"skipped mlflow models serve: {skipped[-1]}")
        else:
            servers.append(MlflowServer(workdir, TRACKING_VENV, default_tracking_uri()))
    return servers, skipped


def load_single_rows(plan: Plan, key: str, url: str, script: Path, server, round_: int) -> list[dict]:
    runs = []
    for connections in plan.connection_counts:
        load = server.measure(url, script, connections, plan.seconds)
        runs.append({"server": key, "round": round_, "connections": connections, **load})
        log(
            f"  {key} {connections:>3} connections: {load['requests_per_second']:8.0f} requests/s, "
            f"p99 {load['p99_ms']:.1f} ms, errors {sum(load['errors'].values())}"
        )
    return runs


def answer_of(url: str, encoding, values: list) -> dict:
    answer, headers, _ = post(url, encode(encoding, [values]))
    return {"body": json.loads(answer), "model_version": headers.get("X-Model-Version")}


def load_rounds(plan: Plan, units: list[list], scripts: dict, batches_of: dict, service: ServiceUnderPM2) -> tuple:
    """Every round: each server started, warmed up, loaded and stopped in
    turn; the service also takes its batches, its V2 single rows and (once)
    the timed `make serve`."""
    workers = notebook_defaults()["workers"]
    runs, batch_runs, refused, answers, make_serve = [], [], {}, {}, None
    for round_ in range(plan.rounds):
        for server in rotated(units, round_):
            log(f"round {round_ + 1}/{plan.rounds}: starting {server.label}")
            with running(server):
                answers.setdefault(server.key, server.answer)
                run_wrk(server.url, scripts[server.key], plan.connection_counts[0], plan.warmup_seconds)
                if server.key in batches_of:
                    # As many connections as the service has workers: each request is a whole batch, more
                    # would only queue.
                    loaded, refusals = load_batches(server, batches_of[server.key], plan.batch_seconds, workers, log)
                    batch_runs += [{"round": round_, **run} for run in loaded]
                    refused.update({(refusal["server"], refusal["encoding"]): refusal for refusal in refusals})
                if server is service:
                    if make_serve is None:
                        make_serve = time_make_serve(service, plan.make_serve_repeats)
                    v2_url = service.url_of(V2_INFER)
                    answers.setdefault(SERVICE_V2, answer_of(v2_url, V2_JSON, ARTICLE_VALUES))
                    runs += load_single_rows(plan, SERVICE_V2, v2_url, scripts[SERVICE_V2], service, round_)
                runs += load_single_rows(plan, server.key, server.url, scripts[server.key], server, round_)
    return runs, batch_runs, refused, answers, make_serve


def benchmark(
    plan: Plan,
    workdir: Path,
    with_mlflow: bool,
    mlserver_venv: Path,
    mlserver_threads: int | None = None,
    models_dir: Path = PROJECT_MODELS,
    with_stack: bool = True,
) -> dict:
    models = models_to_serve(workdir, models_dir)
    model_dir = (models / "current").resolve()
    model_version = read_metadata(model_dir).version
    pickle_path = write_article_pickle(model_dir / "model.ubj", workdir / "article-model.pkl")
    log("one row in process: the bundle, XGBoost, the article's path")
    in_process = measure_in_process(model_dir, workdir, plan.in_process_seconds)
    log("the app in process, with and without CORS")
    app_overhead = measure_app_overhead(model_dir, workdir, plan.app_requests)
    log(f"make train (papermill, {plan.train_params}, a fresh models folder)")
    training = time_training(workdir, plan.train_params)
    log(f"  {training['seconds']:.1f} s")
    workers = notebook_defaults()["workers"]
    service = ServiceUnderPM2(workdir, models)
    others, skipped = peers(workdir, model_dir, with_mlflow, mlserver_venv, mlserver_threads)
    ceiling = EdgeCeilingServer(workdir, workers=workers)
    # main as it was before the edge: that commit's `make serve`, from a
    # worktree of it, on its own copy of the same model.
    before_dir = workdir / "before-edge"
    try:
        checkout = add_worktree(workdir / BEFORE_EDGE_CHECKOUT)
    except ServerFailed as error:  # a clone without that commit
        skipped.append(f"before_edge: no worktree of {BEFORE_EDGE_COMMIT} ({error})")
        log(f"skipped main before the edge: {skipped[-1]}")
        before_unit = []
    else:
        before_models = prepare_models_copy(models, before_dir / "models")
        before_unit = [BeforeEdgeService(before_dir, before_models, project=checkout)]
    # The ceiling starts as soon as the service stops, then main before the
    # edge, and the service's single-row loads come last in its turn: the
    # loads that the main ratios compare are seconds apart, not minutes, on
    # cores whose speed drifts with the host's load. The stack's two variants
    # close the service's turn, one right after the other.
    stack_record = {}
    with stack_servers(service, free_port(), skipped, stack_record, wanted=with_stack) as stack:
        units = [
            [ArticleServer(workdir, pickle_path)],
            [service, ceiling, *before_unit, *stack],
            [EdgeConstantServer(workdir, threads=notebook_defaults()["edge_threads"])],
            *([other] for other in others),
        ]
        servers = [server for unit in units for server in unit]
        scripts = {server.key: write_wrk_script(workdir / f"{server.key}.lua", server.body) for server in servers}
        # The service also answers one row on the V2 route, side by side with MLServer.
        scripts[SERVICE_V2] = write_wrk_script(workdir / f"{SERVICE_V2}.lua", V2_SINGLE_ROW)
        batches = prepare_batches(workdir)
        # MLServer has only the V2 route.
        batches_of = {
            service.key: batches,
            MlserverServer.key: [batch for batch in batches if batch.encoding.path == V2_INFER],
        }
        runs, batch_runs, refused, answers, make_serve = load_rounds(plan, units, scripts, batches_of, service)

    about = {
        server.key: {"label": server.label, "path": server.path, "supervisor": server.supervisor} for server in servers
    }
    about[SERVICE_V2] = {"label": SERVICE_V2_LABEL, "path": V2_INFER, "supervisor": service.supervisor}
    order = [server.key for server in servers]
    order.insert(order.index(service.key) + 1, SERVICE_V2)
    encodings = {batch.encoding.key: batch.encoding for batch in batches}
    results = {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "path": ARTICLE_PATH,
        "plan": asdict(plan),
        "model_version": model_version,
        "model": in_process.pop("model"),
        "servers": server_results({key: about[key] for key in order}, runs, answers, plan.connection_counts),
        "ratios": ratios(runs, plan.connection_counts),
        "batches": {
            "connections": workers,
            "timed_requests": TIMED_REQUESTS,
            "routes": {
                f"{server} {encoding}": {
                    "server": server,
                    "encoding": encoding,
                    "path": encodings[encoding].path,
                    "label": encodings[encoding].label,
                    "by_rows": summarize_batches(
                        [run for run in batch_runs if (run["server"], run["encoding"]) == (server, encoding)]
                    ),
                }
                for server, encoding in dict.fromkeys((run["server"], run["encoding"]) for run in batch_runs)
            },
            "not_supported": [
                {**refusal, "label": encodings[refusal["encoding"]].label} for refusal in refused.values()
            ],
            "ratios": batch_ratios(batch_runs),
            "runs": batch_runs,
        },
        "in_process": in_process,
        "app_overhead": app_overhead,
        "make": {"serve_unchanged_seconds": make_serve, "train": training},
        "skipped": skipped,
    }
    results["stack"] = {**stack_record, "costs": stack_costs(results["servers"])}
    results["targets"] = targets(results)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round: a smoke run, not figures to compare")
    parser.add_argument("--mlflow", action="store_true", help="add `mlflow models serve` of the champion")
    parser.add_argument(
        "--mlserver-venv", type=Path, default=BENCH_VENV, help="the venv of MLServer (skipped when it has none)"
    )
    parser.add_argument(
        "--mlserver-threads",
        type=int,
        metavar="N",
        help="OMP_NUM_THREADS for MLServer's XGBoost (default: XGBoost's own, all cores)",
    )
    parser.add_argument(
        "--no-stack", action="store_true", help="leave out the stack on its swarm (bench.stack measures it alone)"
    )
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT, help="where results.json and .md go")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=PROJECT_MODELS,
        help="the models folder whose current version is served (default: the project's)",
    )
    arguments = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        log(WRK_MISSING)
        return 2
    stop_cleanly_on_signals()
    plan = QUICK if arguments.quick else NORMAL
    started = time.monotonic()
    machine = {
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        results = benchmark(
            plan,
            workdir,
            arguments.mlflow,
            arguments.mlserver_venv,
            arguments.mlserver_threads,
            arguments.models_dir.resolve(),
            with_stack=not arguments.no_stack,
        )
    except (ServerFailed, RuntimeError, subprocess.TimeoutExpired) as error:
        log(f"benchmark failed: {error}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: every server was stopped, nothing was written")
        return 130
    finally:
        remove_worktree(workdir / BEFORE_EDGE_CHECKOUT)
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

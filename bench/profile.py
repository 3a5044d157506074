"""Where a request's CPU goes: the service and its ceiling loaded side by side
with wrk, and py-spy sampling the service's workers, each sample put down to
the component that spent it.

    python -m bench.profile [--seconds S] [--rounds N] [--model-dir DIR] [--output FILE]

The service runs as its workers run it under `make serve` (the endpoint
notebook converted into a script in a temporary folder, then the same
gunicorn command line), without PM2, whose daemon is no part of a request.
Loads alternate, service then ceiling, so that the machine's load (shared
cores) hits both alike. Then one more load of the service while py-spy
samples each worker without stopping it (`--nonblocking`), and the same for
the ceiling; the workers' CPU per request of that load, measured from /proc,
is split in proportion to the samples of each component. py-spy is the benchmark's extra
(bench/requirements-profile.txt), never the service's.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.measure import measure_load
from bench.servers import KEEP_INSTALLED, PROJECT, CeilingServer, ChildProcessServer, run_make
from diabetes.api_examples import ARTICLE_BODY
from diabetes.settings import notebook_defaults
from tests.processes import clean_environment, process_tree
from tests.wrk import run_wrk, write_wrk_script

CONNECTIONS = 16
SAMPLES_PER_SECOND = 250
# The components a sample is put down to (see component_of).
CORS = "CORS: flask-cors"
OBSERVABILITY = "observability: metrics, logs, request id, Server-Timing"
GUARDS = "guards: trusted host, API key"
VIEW = "view: the route's own work (parse, validate, predict, serialize)"
FLASK = "Flask and werkzeug"
SERVER = "gunicorn and gevent"
OTHER = "other"
# The endpoint script's guards; every other function of the script is the view's.
GUARD_FUNCTIONS = frozenset({"check_host", "check_api_key", "marked", "bearer_token"})


class ServiceScript(ChildProcessServer):
    """The generated endpoint script run directly: it becomes the gunicorn master."""

    key = "service"
    label = "this project: the endpoint script under gunicorn"
    start_timeout = 120

    def __init__(self, workdir: Path, script: Path, model_dir: Path):
        super().__init__(workdir)
        self.script, self.model_dir = script, model_dir

    def command(self):
        return [sys.executable, str(self.script)]

    def environment(self):
        return clean_environment(DIABETES_PORT=str(self.port), DIABETES_MODEL_DIR=str(self.model_dir))


def convert_endpoint_notebook(scripts_dir: Path) -> Path:
    result = run_make([*KEEP_INSTALLED, "scripts", f"SCRIPTS_DIR={scripts_dir}"], timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"make scripts failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return scripts_dir / "serve.py"


def py_spy_executable() -> str:
    for candidate in (Path(sys.executable).parent / "py-spy", PROJECT / "build" / "bench-venv" / "bin" / "py-spy"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("py-spy")
    if found is None:
        raise RuntimeError("py-spy is not installed: pip install -r bench/requirements-profile.txt")
    return found


def component_of(frames: list[str]) -> str:
    """The component of one sample, given its frames outermost first, each
    as py-spy's raw format spells it: `function (path:line)`. The innermost
    frame of the service's own code (or flask-cors's) names it, unless
    gunicorn's code runs inside it (its start_response, its body reader); the
    middleware's own call (`Watch.__call__`) only when Flask is not running
    inside it. Without such a frame: Flask when it is on the stack, else the
    server."""
    # py-spy shortens a path to what follows sys.path's entry (`flask/app.py`).
    parsed = [(frame.partition(" (")[0], "/" + frame.partition(" (")[2].rsplit(":", 1)[0]) for frame in frames]
    in_flask = False
    for function, path in reversed(parsed):
        if "/gunicorn/" in path and not in_flask:
            # The server's work, even when called from ours (its start_response, its body reader).
            return SERVER
        if "/flask/" in path or "/werkzeug/" in path:
            in_flask = True
        if "/flask_cors/" in path:
            return CORS
        if path.endswith("diabetes/observability.py"):
            if function.endswith("Watch.__call__") and in_flask:
                continue
            return OBSERVABILITY
        if path.endswith("serve.py"):
            return GUARDS if function.rsplit(".", 1)[-1] in GUARD_FUNCTIONS else VIEW
        if path.endswith("diabetes/settings.py"):
            return GUARDS
        if "/diabetes/" in path and not path.endswith(("gevent_worker.py", "serving.py")):
            return VIEW
    if in_flask:
        return FLASK
    if any("/gunicorn/" in path or "/gevent/" in path for _, path in parsed):
        return SERVER
    return OTHER


def samples_by_component(raw_files: list[Path]) -> Counter:
    counts = Counter()
    for raw in raw_files:
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                counts[component_of(stack.split(";"))] += int(count)
    return counts


def profiled_load(server, script: Path, seconds: int, workdir: Path) -> dict:
    """One load of a server with py-spy recording each of its workers."""
    workers = process_tree(server.root_pid)[1:]
    recorders, raw_files = [], []
    for worker in workers:
        raw = workdir / f"py-spy-{server.key}-{worker}.txt"
        raw_files.append(raw)
        recorders.append(
            subprocess.Popen(
                [
                    py_spy_executable(),
                    "record",
                    "--pid",
                    str(worker),
                    "--rate",
                    str(SAMPLES_PER_SECOND),
                    "--duration",
                    str(seconds + 2),
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    try:
        load = measure_load(server.url, script, CONNECTIONS, seconds, server.root_pid)
    finally:
        for recorder in recorders:
            _, stderr = recorder.communicate(timeout=seconds + 30)
            if recorder.returncode != 0:
                raise RuntimeError(f"py-spy failed: {stderr.decode(errors='replace')[-1000:]}")
    counts = samples_by_component(raw_files)
    total = sum(counts.values())
    return {
        **load,
        "samples": dict(counts),
        "cpu_ms_per_request_by_component": {
            component: load["cpu_ms_per_request"] * count / total for component, count in counts.most_common()
        },
    }


def side_by_side(service, ceiling, scripts: dict, rounds: int, seconds: int) -> list[dict]:
    runs = []
    for round_ in range(rounds):
        for server in (service, ceiling):
            load = measure_load(server.url, scripts[server.key], CONNECTIONS, seconds, server.root_pid)
            runs.append({"server": server.key, "round": round_, "load_average": os.getloadavg()[0], **load})
            print(
                f"  {server.key:8} {load['requests_per_second']:7.0f} req/s, "
                f"{load['cpu_ms_per_request']:.3f} ms CPU/request, p99 {load['p99_ms']:.1f} ms, "
                f"errors {sum(load['errors'].values())}, load average {runs[-1]['load_average']:.1f}",
                file=sys.stderr,
                flush=True,
            )
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="of each load")
    parser.add_argument("--rounds", type=int, default=3, help="service-then-ceiling loads")
    parser.add_argument("--model-dir", type=Path, default=PROJECT / "build" / "models" / "current")
    parser.add_argument("--output", type=Path, default=PROJECT / "build" / "bench" / "profile.json")
    parser.add_argument("--raw-dir", type=Path, help="keep py-spy's samples (collapsed stacks) there")
    arguments = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    try:
        script = convert_endpoint_notebook(workdir / "scripts")
        service = ServiceScript(workdir, script, arguments.model_dir.resolve())
        ceiling = CeilingServer(workdir, workers=notebook_defaults()["workers"])
        scripts = {key: write_wrk_script(workdir / f"{key}.lua", ARTICLE_BODY) for key in ("service", "ceiling")}
        try:
            for server in (service, ceiling):
                server.start()
                run_wrk(server.url, scripts[server.key], CONNECTIONS, 1)
            runs = side_by_side(service, ceiling, scripts, arguments.rounds, arguments.seconds)
            profiles = {
                server.key: profiled_load(server, scripts[server.key], arguments.seconds, workdir)
                for server in (service, ceiling)
            }
            if arguments.raw_dir:
                arguments.raw_dir.mkdir(parents=True, exist_ok=True)
                for raw in workdir.glob("py-spy-*.txt"):
                    shutil.copy(raw, arguments.raw_dir)
        finally:
            service.stop()
            ceiling.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {"connections": CONNECTIONS, "runs": runs, "profiles": profiles}
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(results, indent=2) + "\n")
    components = dict.fromkeys(
        component for profile in profiles.values() for component in profile["cpu_ms_per_request_by_component"]
    )
    print("CPU per request by component (ms), while py-spy sampled the workers:")
    print(f"  {'service':>8} {'ceiling':>8}")
    for component in ["in all", *components]:
        figures = [
            profile["cpu_ms_per_request"]
            if component == "in all"
            else profile["cpu_ms_per_request_by_component"].get(component, 0.0)
            for profile in (profiles["service"], profiles["ceiling"])
        ]
        print(f"  {figures[0]:8.3f} {figures[1]:8.3f}  {component}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

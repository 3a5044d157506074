"""The servers the benchmark compares. Each starts on a free port of
127.0.0.1, names the process whose tree does the serving, and is stopped by
`running()` in a `finally`, whatever happened while it ran."""

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from bench.measure import measure_load
from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.edge import BEHIND_EDGE_VARIABLE, HAPROXY
from diabetes.features import FEATURE_NAMES
from diabetes.model_store import CURRENT_LINK, LATEST_LINK
from diabetes.release_layout import SCRIPT_FILE
from diabetes.settings import APP_NAME, ENVIRONMENT_PREFIX
from diabetes.tracking import CHAMPION, REGISTERED_MODEL
from tests.processes import (
    LOCALHOST,
    clean_environment,
    free_port,
    kill_process_group,
    port_is_open,
    process_exists,
    process_tree,
    run_bounded,
    wait_until,
)

PROJECT = Path(__file__).resolve().parents[1]
PM2 = PROJECT / "node_modules" / ".bin" / "pm2"
# A benchmark measures what is installed: it never reinstalls packages, as
# make would after a change to requirements.txt.
KEEP_INSTALLED = ("--old-file=.venv/.installed", "--old-file=node_modules/.installed")
_PR_SET_PDEATHSIG = 1
# main just before HAProxy went in front of gunicorn (3660302): the service it replaced.
BEFORE_EDGE_COMMIT = "a4095a3"


class ServerFailed(Exception):
    """A server did not start, or did not answer the article's request."""


def run_make(arguments: list[str], timeout: float, project: Path = PROJECT, **settings) -> subprocess.CompletedProcess:
    """`make ARGUMENTS` in the project (or another checkout of it), in our
    cleaned environment plus `settings`."""
    return run_bounded(
        ["make", "--no-print-directory", "-C", str(project), *arguments],
        timeout=timeout,
        env=clean_environment(**settings),
    )


def _die_with_parent():
    # If the benchmark is killed outright (no `finally`), the servers it
    # started directly get SIGTERM instead of holding their ports forever.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Server:
    """A server of the article's route, or its equivalent (`path`, `body`)."""

    key = ""
    label = ""
    path = ARTICLE_PATH
    body = ARTICLE_BODY
    start_timeout = 60
    # What the supervisor's CPU is called in the tables.
    supervisor = "PM2"

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.port = None
        self.answer = None  # its answer to the benchmark's request, once started

    @property
    def url(self) -> str:
        return self.url_of(self.path)

    def url_of(self, path: str) -> str:
        return f"http://{LOCALHOST}:{self.port}{path}"

    @property
    def root_pid(self) -> int:
        """The process whose tree (it and its descendants) serves."""
        raise NotImplementedError

    @property
    def supervisor_pid(self) -> int | None:
        """A process outside the tree that works for it (PM2's daemon), if any."""
        return None

    @property
    def edge_pid(self) -> int | None:
        """The root of the edge's processes in front of the tree (HAProxy, or
        the launcher whose child it is), if any: counted with the server."""
        return None

    def start(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError

    def measure(self, url: str, script: Path, connections: int, seconds: int) -> dict:
        """A wrk load on `url`, and what this server's processes spent on it."""
        return measure_load(url, script, connections, seconds, self.root_pid, self.supervisor_pid, self.edge_pid)

    def log_tail(self, lines: int = 20) -> str:
        return ""

    def wait_until_answering(self, timeout: float, still_starting=lambda: True) -> dict:
        """Its answer to the benchmark's request, once it gives one with 200."""
        request = urllib.request.Request(
            self.url, data=json.dumps(self.body).encode(), headers={"Content-Type": "application/json"}
        )
        deadline = time.monotonic() + timeout
        problem = "no answer yet"
        while time.monotonic() < deadline and still_starting():
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return {"body": json.load(response), "model_version": response.headers.get("X-Model-Version")}
            except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
                problem = str(error)
            time.sleep(0.2)
        raise ServerFailed(f"{self.label} did not answer {self.url} ({problem})\n{self.log_tail()}")


@contextmanager
def running(server: Server):
    try:
        server.start()
        yield server
    finally:
        server.stop()


class ChildProcessServer(Server):
    """A server that is a child of the benchmark, in a session of its own, so
    that a Ctrl-C reaches only the benchmark, which then stops it in order."""

    stop_timeout = 25  # past gunicorn's graceful_timeout

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.process = None
        self.log_path = self.workdir / f"{self.key}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def root_pid(self) -> int:
        return self.process.pid

    def prepare(self):
        """What the command needs once the port is known (files it reads)."""

    def environment(self) -> dict | None:
        """The command's environment: None for the benchmark's own."""
        return None

    def start(self):
        self.port = free_port()
        self.prepare()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=PROJECT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.answer = self.wait_until_answering(self.start_timeout, lambda: self.process.poll() is None)

    def stop(self):
        if self.process is None:
            return
        try:
            if self.process.poll() is None:
                self.process.terminate()
                self.process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            # Its session holds whatever it forked (gunicorn's workers): nothing outlives the stop.
            kill_process_group(self.process.pid)
            self.process.wait()
            self.process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ArticleServer(ChildProcessServer):
    key = "article"
    label = "article: Flask dev server, pickle, pandas"

    def __init__(self, workdir: Path, model_pickle: Path):
        super().__init__(workdir)
        self.model_pickle = model_pickle

    def command(self):
        return [sys.executable, "-m", "bench.article_app", "--model", str(self.model_pickle), "--port", str(self.port)]


class CeilingServer(ChildProcessServer):
    key = "ceiling"
    label = "ceiling: constant answer, same gunicorn"

    def __init__(self, workdir: Path, workers: int, behind_edge: bool = False):
        super().__init__(workdir)
        self.workers = workers
        self.behind_edge = behind_edge
        if behind_edge:
            self.key = "ceiling_workers"
            self.log_path = self.workdir / f"{self.key}.log"

    def command(self):
        command = [sys.executable, "-m", "bench.ceiling_app", "--port", str(self.port), "--workers", str(self.workers)]
        # Behind the edge, gunicorn binds 127.0.0.1:workers_port (diabetes.serving.bind_address).
        return command + (["--workers-port", str(self.port)] if self.behind_edge else [])

    def environment(self) -> dict | None:
        # gunicorn's settings behind the edge, as the service's (its keep-alive, for one).
        return {**os.environ, BEHIND_EDGE_VARIABLE: "1"} if self.behind_edge else None


class EdgeProxy(ChildProcessServer):
    """HAProxy with diabetes/haproxy.cfg and the values diabetes/edge.py gives
    it from the service's settings, in front of `workers_port`
    (bench.edge_proxy, which becomes HAProxy)."""

    key = "ceiling_edge"
    label = "the edge (HAProxy) in front of the ceiling"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.workers_port = None
        self.run_dir = self.workdir / "ceiling-edge-run"

    def command(self):
        return [
            sys.executable,
            "-m",
            "bench.edge_proxy",
            "--port",
            str(self.port),
            "--workers-port",
            str(self.workers_port),
            "--run-dir",
            str(self.run_dir),
        ]


class EdgeCeilingServer(Server):
    """The ceiling as the service is served: the same edge (HAProxy, the
    same configuration and values) in front of the same gunicorn command line
    around a Flask app that answers a constant."""

    key = "ceiling"
    label = "ceiling: constant answer, same edge + gunicorn"

    def __init__(self, workdir: Path, workers: int):
        super().__init__(workdir)
        self.workers_server = CeilingServer(workdir, workers, behind_edge=True)
        self.edge = EdgeProxy(workdir)

    @property
    def root_pid(self) -> int:
        return self.workers_server.root_pid

    @property
    def edge_pid(self) -> int | None:
        return self.edge.root_pid

    def start(self):
        self.workers_server.start()
        self.edge.workers_port = self.workers_server.port
        self.edge.start()
        self.port, self.answer = self.edge.port, self.edge.answer

    def stop(self):
        try:
            self.edge.stop()
        finally:
            self.workers_server.stop()
            self.port = None

    def log_tail(self, lines: int = 20) -> str:
        return f"{self.edge.log_tail(lines)}\n{self.workers_server.log_tail(lines)}"


EDGE_CONSTANT_CONFIG = """\
# The edge alone answering a constant: this machine's limit for HTTP.
global
    # As many threads as the service's edge (notebooks/serve.ipynb: edge_threads).
    nbthread {threads}
    maxconn 4096

defaults
    mode http
    timeout http-request 10s
    timeout http-keep-alive 5s
    timeout client 30s

frontend constant
    bind 127.0.0.1:{port}
    http-request return status 200 content-type application/json string '{{"prediction": 0.1}}'
"""


class EdgeConstantServer(ChildProcessServer):
    """HAProxy by itself, with the service's edge's threads, answering the
    article's route with a constant: no Python, no backend."""

    key = "edge_constant"

    def __init__(self, workdir: Path, threads: int):
        super().__init__(workdir)
        self.threads = threads
        self.label = f"the edge alone: HAProxy answering a constant ({threads} thread{'s' * (threads != 1)})"
        self.config = self.workdir / "edge-constant.cfg"

    def prepare(self):
        self.config.write_text(EDGE_CONSTANT_CONFIG.format(port=self.port, threads=self.threads))

    def command(self):
        return [HAPROXY, "-db", "-f", str(self.config)]


class MlflowServer(ChildProcessServer):
    """`mlflow models serve` on the registered model's champion (the version
    `current` serves, logged by `make train` with MLflow's XGBoost flavour),
    from the tracking venv, with MLflow's defaults (one worker; the booster's
    probability for the raw row)."""

    key = "mlflow"
    label = "mlflow models serve (defaults)"
    path = "/invocations"
    body = {
        "dataframe_split": {
            "columns": list(FEATURE_NAMES),
            "data": [[float(value) for value in ARTICLE_BODY["data"].split(",")]],
        }
    }
    start_timeout = 120

    def __init__(self, workdir: Path, tracking_venv: Path, tracking_uri: str):
        super().__init__(workdir)
        self.tracking_venv = tracking_venv
        self.tracking_uri = tracking_uri

    def command(self):
        return [
            str(self.tracking_venv / "bin" / "mlflow"),
            "models",
            "serve",
            "-m",
            f"models:/{REGISTERED_MODEL}@{CHAMPION}",
            "--env-manager",
            "local",
            "--host",
            LOCALHOST,
            "--port",
            str(self.port),
        ]

    def environment(self):
        # MLflow starts its scoring server as `uvicorn`, found on PATH.
        path = f"{self.tracking_venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
        return {**os.environ, "MLFLOW_TRACKING_URI": self.tracking_uri, "PATH": path}


class ServiceUnderPM2(Server):
    """This project's service as `make serve` runs it, in a PM2 home of the
    benchmark's own, stopped with `make stop`.

    With `models_dir` (a copy of the project's current version), `make serve`
    deploys into the benchmark's temporary folder: in a new PM2 home it runs
    its deploy step again, which would otherwise rewrite build/runs/serve.ipynb
    and promote build/models/latest to `current`, undoing a user's rollback."""

    key = "service"
    label = "this project: make serve (PM2, HAProxy edge, gunicorn)"
    start_timeout = 300  # the first start runs the endpoint notebook; with no model, training too
    # The PM2 app of the edge (diabetes/edge.py's launcher, HAProxy its child), as ecosystem.config.js names it.
    edge_app = f"{APP_NAME}-edge"

    def __init__(self, workdir: Path, models_dir: Path | None, project: Path = PROJECT):
        super().__init__(workdir)
        self.models_dir = models_dir
        self.project = project
        self.pm2_home = self.workdir / "pm2"
        self.master_pid = None
        self.edge_launcher_pid = None
        # Beside the models, as the Makefile's RELEASES_DIR is by default.
        self.releases_dir = models_dir.parent / "releases" if models_dir else project / "build" / "releases"
        # The script PM2 runs: the current release's.
        self.service_script = self.releases_dir / CURRENT_LINK / SCRIPT_FILE

    def make_variables(self) -> list[str]:
        variables = [f"PM2_HOME={self.pm2_home}", f"LOG_DIR={self.workdir / 'logs'}"]
        if self.models_dir:
            variables += [
                f"MODELS_DIR={self.models_dir}",
                f"RUNS_DIR={self.workdir / 'runs'}",
                f"SCRIPTS_DIR={self.workdir / 'scripts'}",
            ]
        return variables

    def make_options(self) -> list[str]:
        # A copied model is never retrained either, though its sources changed
        # since it was trained: the benchmark measures the model the project serves.
        if self.models_dir:
            return [*KEEP_INSTALLED, f"--old-file={self.models_dir}/latest/metadata.json"]
        return list(KEEP_INSTALLED)

    def make(self, *targets: str, timeout: float) -> subprocess.CompletedProcess:
        return run_make(
            [*self.make_options(), *targets, *self.make_variables()],
            timeout,
            self.project,
            **{f"{ENVIRONMENT_PREFIX}PORT": str(self.port)},
        )

    def nothing_to_redeploy(self) -> bool:
        """Would `make serve` now only check the service: no conversion, no
        training, no deploy? `make -q` on the Makefile's deploy stamp."""
        releases_dir = self.releases_dir if self.models_dir else "build/releases"  # as make spells it
        return self.make("-q", f"{releases_dir}/.deployed", timeout=60).returncode == 0

    @property
    def root_pid(self) -> int:
        return self.master_pid

    @property
    def supervisor_pid(self) -> int | None:
        try:
            return int((self.pm2_home / "pm2.pid").read_text())
        except (OSError, ValueError):
            return None

    @property
    def edge_pid(self) -> int | None:
        return self.edge_launcher_pid

    def start(self):
        self.port = free_port()
        self.pm2_home.mkdir(parents=True, exist_ok=True)
        try:
            result = self.make("serve", timeout=self.start_timeout)
        except subprocess.TimeoutExpired:
            raise ServerFailed(f"make serve did not finish within {self.start_timeout} s") from None
        if result.returncode != 0:
            raise ServerFailed(
                f"make serve failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        self.master_pid, self.edge_launcher_pid = self._pids_under_pm2()
        self.answer = self.wait_until_answering(30)

    def _pids_under_pm2(self) -> tuple[int, int | None]:
        """The pid PM2 started for the current release's serve.py, which became the gunicorn
        master. Found by its script, not its name: ecosystem.config.js names
        it from the environment, and runs other apps beside it (log rotation).
        Then the pid of the edge's app (its launcher), when this service has one."""
        result = run_bounded(
            [str(PM2), "jlist"], timeout=30, cwd=PROJECT, env=clean_environment(PM2_HOME=str(self.pm2_home))
        )
        try:
            apps = json.loads(result.stdout[result.stdout.index("[") :])
        except ValueError as error:
            output = f"{result.stdout[-500:]} {result.stderr[-500:]}"
            raise ServerFailed(f"pm2 jlist gave no list of apps: {output}") from error
        pids = [
            app["pid"]
            for app in apps
            if app.get("pid") and Path(app["pm2_env"].get("pm_exec_path", "")) == self.service_script
        ]
        if len(pids) != 1:
            running = {app.get("name"): app["pm2_env"].get("pm_exec_path") for app in apps}
            raise ServerFailed(
                f"expected one app of {self.service_script} under PM2 in {self.pm2_home}, "
                f"found pids {pids} among {running}"
            )
        if self.edge_app is None:
            return pids[0], None
        edges = [app["pid"] for app in apps if app.get("name") == self.edge_app and app.get("pid")]
        if len(edges) != 1:
            running = {app.get("name"): app.get("pid") for app in apps}
            raise ServerFailed(f"expected one {self.edge_app} under PM2 in {self.pm2_home}, found {running}")
        return pids[0], edges[0]

    def stop(self):
        if self.port is None:
            return
        daemon_pid = self.supervisor_pid
        try:
            result = self.make("stop", timeout=90)
            if result.returncode != 0:
                print(
                    f"make stop failed ({result.returncode}): {(result.stdout + result.stderr).strip()[-1000:]}",
                    file=sys.stderr,
                )
        except subprocess.TimeoutExpired:
            print("make stop did not finish within 90 s", file=sys.stderr)
        finally:
            self._end_what_make_stop_left(daemon_pid)
        if not wait_until(lambda: not port_is_open(self.port), timeout=30):
            print(f"port {self.port} still answers after make stop", file=sys.stderr)
        self.port, self.master_pid, self.edge_launcher_pid = None, None, None

    def _end_what_make_stop_left(self, daemon_pid: int | None):
        """Only the benchmark's own: what runs in its PM2 home. PM2's daemon
        goes first, as a whole tree: while it lives, it restarts a killed master."""

        roots = (daemon_pid, self.master_pid, self.edge_launcher_pid)

        def all_gone():
            return not any(process_exists(root) for root in roots)

        if wait_until(all_gone, timeout=30):
            return
        print("make stop left PM2 running in the benchmark's PM2 home: pm2 kill", file=sys.stderr)
        try:
            run_bounded([str(PM2), "kill"], timeout=60, cwd=PROJECT, env=clean_environment(PM2_HOME=str(self.pm2_home)))
        except subprocess.TimeoutExpired:
            pass
        if wait_until(all_gone, timeout=30):
            return
        leftovers = list(dict.fromkeys(pid for root in roots if process_exists(root) for pid in process_tree(root)))
        print(f"pm2 kill left pids {leftovers} running: killing them", file=sys.stderr)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def log_tail(self, lines: int = 20) -> str:
        error_log = self.workdir / "logs" / f"{APP_NAME}.error.log"
        try:
            return "\n".join(error_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class BeforeEdgeService(ServiceUnderPM2):
    """The service as main served it before the edge (BEFORE_EDGE_COMMIT:
    PM2 and gunicorn alone, gunicorn on the service's port), run by that
    commit's `make serve` from a git worktree of it, in a PM2 home, logs,
    models copy and port of its own."""

    key = "before_edge"
    label = f"main before the edge ({BEFORE_EDGE_COMMIT}: make serve, PM2, gunicorn alone)"
    edge_app = None


def _git(*arguments: str, timeout: float = 120) -> str:
    result = run_bounded(["git", "-C", str(PROJECT), *arguments], timeout=timeout)
    if result.returncode != 0:
        raise ServerFailed(f"git {' '.join(arguments)} failed: {result.stderr.strip()[-1000:]}")
    return result.stdout.strip()


def add_worktree(path: Path, commit: str = BEFORE_EDGE_COMMIT) -> Path:
    """A detached git worktree of `commit` at `path`, sharing the project's
    installed .venv and node_modules (links): nothing is reinstalled."""
    _git("worktree", "add", "--detach", "--quiet", str(path), commit)
    for installed in (".venv", "node_modules"):
        (path / installed).symlink_to(PROJECT / installed, target_is_directory=True)
    return path


def remove_worktree(path: Path):
    """Undo add_worktree: the folder and git's record of it."""
    if (path / ".git").exists():
        try:
            _git("worktree", "remove", "--force", str(path))
        except (ServerFailed, subprocess.TimeoutExpired) as error:
            print(f"could not remove the worktree {path}: {error}", file=sys.stderr)


def prepare_models_copy(project_models: Path, destination: Path) -> Path | None:
    """A models folder holding only a copy of the current version of
    `project_models` (or, when none is served yet, its latest), linked as both
    `latest` and `current`: what `make serve` then deploys is exactly the model
    the project serves. None when there is no model."""
    current = project_models / CURRENT_LINK
    if not current.exists():
        current = project_models / LATEST_LINK
    if not current.exists():
        return None
    version = current.resolve().name
    destination.mkdir(parents=True)
    shutil.copytree(current.resolve(), destination / version)
    for link in (LATEST_LINK, CURRENT_LINK):
        (destination / link).symlink_to(version, target_is_directory=True)
    return destination

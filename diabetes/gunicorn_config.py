"""gunicorn settings of the service (host, port and workers come from the
endpoint notebook's parameters, on the command line)."""

import ctypes
import gc
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path


def _load_beside(file_name: str, module_name: str):
    """A module of this file's own folder, loaded by its path."""
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).with_name(file_name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The release check (diabetes/serving.py's `release_problems`), loaded by path
# from this file's own folder when gunicorn reads this file, in the master:
# the copy of the release the master starts from (which the script checked
# before it became this master, diabetes/serving.py's exec_gunicorn), or of
# the one a reload checked first (when_ready). Imported by name it would be
# the working tree's (gunicorn's working directory comes first on the path
# when it reads this file), and after a switch of `current`, the new
# release's, unchecked. Workers inherit it from the master; the standard
# library and orjson are all it imports.
_release_check = _load_beside("serving.py", "_diabetes_release_check")

# Asynchronous workers: a connection that sends nothing, or sends its request
# a byte at a time, waits in a greenlet of its own instead of holding a whole
# worker (with sync workers, two idle connections stopped the service).
worker_class = "diabetes.gevent_worker.FairGeventWorker"
# Connections each worker holds at once, idle ones included.
worker_connections = 1000
# A connection is closed when its next request (line and headers) has not
# fully arrived this long after it opened or after its last answer: idle
# keep-alive connections and slow-header clients both end there. Behind the
# edge (diabetes/edge.py) the only client is HAProxy, which holds the clients
# and keeps its connections to the workers open for reuse: longer than it
# keeps an idle one, so that it seldom sends on one a worker is closing.
# diabetes.edge.BEHIND_EDGE_VARIABLE, spelled here: gunicorn reads this file
# before the release's package is on the path (see diabetes/serving.py).
BEHIND_EDGE = bool(os.environ.get("WORKERS_BEHIND_EDGE"))
keepalive = 60 if BEHIND_EDGE else 5
# Behind the edge, each worker listens on a socket of its own (SO_REUSEPORT),
# and the kernel spreads the edge's connections over them. On one shared
# socket, the busy gevent worker, awake already, won nearly every accept: the
# edge's few long-lived connections often all went to one worker, and the
# other stood idle (a third fewer requests/s in `make bench`).
reuse_port = BEHIND_EDGE
# The server's own limits on a request's head; over them it answers 414 or
# 431 (as JSON, see post_fork) before the app sees the request.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
# The app logs each request itself, as a JSON line with its request id.
accesslog = None
# A worker silent for this long is killed and replaced.
timeout = 30
# On a stop or reload, workers get this long to finish the requests they hold
# (ecosystem.config.js gives PM2's kill_timeout more).
graceful_timeout = 20
# gunicorn would otherwise open a control socket in the user's home.
control_socket_disable = True

_PR_SET_PDEATHSIG = 1
# How many more objects (lists, dicts, ...) may be made than freed before the
# cyclic garbage collector looks through the youngest ones (Python's default
# is 700): five times a batch's lists at the default max_batch_rows, 10,000.
_YOUNGEST_GENERATION_OBJECTS = 50_000


def on_starting(server):
    from diabetes.settings import APP_NAME

    # Each worker writes its metrics to files here; /metrics adds them up.
    # A new folder per master: counts of a previous run must not carry over.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"{APP_NAME}-metrics-")
    # prometheus-client makes the lock it takes around every metric write when
    # it is imported. Imported here, before any worker patches threading for
    # gevent, that lock is the interpreter's own in every worker, not gevent's,
    # which is written in Python and several times slower. It is safe under
    # gevent: no write yields while holding it; and the master never writes a
    # metric, so no worker is forked while it is held.
    import prometheus_client  # noqa: F401


def on_exit(server):
    from diabetes.pm2_metrics import stop_reporting

    stop_reporting()
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


# Behind the edge (diabetes/edge.py): on a stop, how long gunicorn waits for
# the edge to start and then to finish draining, before it stops itself.
EDGE_STOP_APPEARS_SECONDS = 0.5
EDGE_DRAIN_SECONDS = 10


def when_ready(server):
    # PM2 stops and restarts an app with SIGINT, which gunicorn takes as a
    # quick shutdown that fails the requests in flight: take it as SIGTERM,
    # the graceful one. Behind the edge, which PM2 stops at the same time,
    # the requests it still holds (a body still arriving) need workers: the
    # master waits for the edge to finish them first.
    if BEHIND_EDGE:
        from diabetes.edge import RUN_DIR_VARIABLE, wait_while_draining

        stop_gracefully = server.handle_term

        def handle_term():
            run_dir = os.environ.get(RUN_DIR_VARIABLE)
            if run_dir:
                wait_while_draining(Path(run_dir), EDGE_STOP_APPEARS_SECONDS, EDGE_DRAIN_SECONDS)
            stop_gracefully()

        server.handle_term = handle_term
    server.handle_int = server.handle_term
    # A reload (SIGHUP, after `make serve` or `make rollback` switched
    # `current`) goes ahead only when the release `current` names matches its
    # manifest: gunicorn would otherwise stop the running workers as soon as
    # it had forked new ones, each of which refuses that release (pre_fork),
    # and nothing would serve. Refused, the running workers keep serving.
    reload = server.handle_hup

    def handle_hup():
        release = _served_release(server)
        problems = _release_check.release_problems(release[1]) if release else []
        if problems:
            server.log.error(
                "refused to reload: release %s does not match its manifest: %s; the running workers keep serving",
                os.path.basename(release[1]),
                _release_check.summary(problems),
            )
            return
        reload()

    server.handle_hup = handle_hup
    # `pm2 monit` sees this process only: a thread of the master reports the
    # whole service to PM2 (diabetes/pm2_metrics.py). The served script's
    # folder comes first on the workers' path (diabetes/serving.py).
    from diabetes.pm2_metrics import start_reporting

    script_dir = server.cfg.pythonpath.split(",")[0] if server.cfg.pythonpath else None
    start_reporting(os.getpid(), os.environ["PROMETHEUS_MULTIPROC_DIR"], script_dir, server.log)


# ---- Only a release that matches its manifest is served ---------------------------
# A worker refused (below) closes its socket at once, waits this long, then
# exits with this status: gunicorn starts another in its place, which checks
# again (one refusal logged per REFUSED_WORKER_PAUSE_SECONDS), while the
# workers started before keep serving. Not gunicorn's "failed to boot" (3),
# which would stop them all.
REFUSED_WORKER_PAUSE_SECONDS = 5
REFUSED_WORKER_EXIT = 1


def _served_release(server) -> tuple[str, str] | None:
    """The release a worker started now would import: the script's folder as
    the workers' path names it (through the `current` link; it comes first in
    `pythonpath`, see diabetes/serving.py) and the folder that names now.
    None when the script is not a release's."""
    script_dir = server.cfg.pythonpath.split(",")[0] if server.cfg.pythonpath else None
    if not script_dir or not _release_check.is_release(script_dir):
        return None
    return os.path.abspath(script_dir), os.path.realpath(script_dir)


def pre_fork(server, worker):
    # In the master, before each worker starts (at start, after a crash or a
    # timeout, at a reload): the release it will import is checked against
    # its manifest, before any of its code runs in the worker; the worker is
    # then pinned to that folder (post_fork). A release that does not match
    # gets no worker: while workers started before remain, they keep serving
    # and this one leaves (post_fork); when none is left, the master stops,
    # loudly (PM2 restarts it, and the script refuses the release as well).
    release = _served_release(server)
    if release is None:
        return
    started = time.perf_counter()
    problems = _release_check.release_problems(release[1])
    name = os.path.basename(release[1])
    if not problems:
        worker.release = release
        server.log.info(
            "release %s matches its manifest (checked in %.1f ms)", name, (time.perf_counter() - started) * 1000
        )
        return
    worker.refused = f"release {name} does not match its manifest: {_release_check.summary(problems)}"
    serving = [other for other in server.WORKERS.values() if not getattr(other, "refused", None)]
    if not serving:
        from gunicorn.errors import HaltServer

        raise HaltServer(f"refused to start a worker: {worker.refused}; no worker is left to serve", 1)
    server.log.error(
        "refused to start a worker: %s; the %d worker(s) started before keep serving", worker.refused, len(serving)
    )


def _leave_refused(worker):
    """A worker that the master refused (pre_fork): its own listening socket
    (SO_REUSEPORT behind the edge) closed before it takes a connection, then gone."""
    for listener in worker.sockets:
        listener.close()
    # Still the master's handlers here: a stop or a reload ends this wait at once.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    time.sleep(REFUSED_WORKER_PAUSE_SECONDS)
    sys.exit(REFUSED_WORKER_EXIT)


def _pin_release(release: tuple[str, str] | None):
    """Have this worker import the release folder that was checked, even if
    `current` names another by the time it imports: the workers' path, the
    search path of the packages imported so far and the model folder, where
    they name `current`, name that folder instead."""
    if release is None:
        return
    linked, resolved = release

    def pinned(path: str) -> str:
        return resolved + path[len(linked) :] if path == linked or path.startswith(linked + os.sep) else path

    sys.path[:] = [pinned(entry) for entry in sys.path]
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [pinned(entry) for entry in search]
    if os.environ.get("DIABETES_MODEL_DIR"):
        os.environ["DIABETES_MODEL_DIR"] = pinned(os.environ["DIABETES_MODEL_DIR"])


def post_fork(server, worker):
    # First, before the worker imports anything: leave if the master refused
    # the release (pre_fork), else import only from the folder it checked.
    if getattr(worker, "refused", None):
        _leave_refused(worker)
    _pin_release(getattr(worker, "release", None))
    # gunicorn answers what it cannot parse (a malformed request line, a head
    # over the limits above) with an HTML page from `util.write_error`, read at
    # each call: the project's JSON envelope, counted and logged, replaces it.
    import gunicorn.util

    from diabetes.serving import write_server_refusal

    gunicorn.util.write_error = write_server_refusal
    # XGBoost imports scikit-learn whenever it is installed, for a wrapper the
    # service never uses; it costs each worker memory and start-up time.
    # A None entry in sys.modules makes that import fail, as if not installed.
    sys.modules.setdefault("sklearn", None)
    # A worker whose master dies (kill -9) leaves, instead of serving
    # unsupervised while PM2 starts a new master. Behind the edge it leaves at
    # once (SIGQUIT): what it held is sent again to a live worker by the edge;
    # on its own it finishes its requests first (SIGTERM).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT if BEHIND_EDGE else signal.SIGTERM)


def post_worker_init(worker):
    # PM2 sends its SIGINT to the workers too. On their own they finish the
    # request in hand, then leave; behind the edge they wait for the master,
    # which stops them once the edge has drained (when_ready).
    signal.signal(signal.SIGINT, signal.SIG_IGN if BEHIND_EDGE else worker.handle_exit)
    # What the worker has made by now (modules, the model, the app) lives as
    # long as it does: the cyclic garbage collector stops looking through it,
    # once the garbage of the start is collected. A batch's rows (a list each)
    # make the collector run a full collection every few requests, and each
    # one would otherwise walk all of it.
    gc.collect()
    gc.freeze()
    # A batch makes those lists and frees them all once answered: with a
    # youngest generation larger than a batch, they come and go without a
    # collection looking through each of them.
    gc.set_threshold(_YOUNGEST_GENERATION_OBJECTS)
    # The app says how much memory a worker may hold (the max_worker_memory_mib setting).
    from diabetes.worker_memory import MemoryCap

    config = getattr(worker.wsgi, "config", {})
    worker.memory_cap = MemoryCap(config.get(WORKER_MEMORY_CAP_KEY, 0))
    # The release was checked before the fork (pre_fork) and is imported now:
    # from this line on, a change to its files no longer reaches this worker.
    release = getattr(worker, "release", None)
    if release:
        worker.log.info("worker %d imported release %s and serves it", worker.pid, os.path.basename(release[1]))


# Where the app (notebooks/serve.ipynb) puts its workers' memory cap, in bytes.
WORKER_MEMORY_CAP_KEY = "MAX_WORKER_MEMORY_BYTES"


def post_request(worker, request, environ, response):
    worker.memory_cap(worker)

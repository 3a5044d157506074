"""gunicorn settings of the service (host, port and workers come from the
endpoint notebook's parameters, on the command line)."""

import ctypes
import gc
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

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
    # `pm2 monit` sees this process only: a thread of the master reports the
    # whole service to PM2 (diabetes/pm2_metrics.py). The served script's
    # folder comes first on the workers' path (diabetes/serving.py).
    from diabetes.pm2_metrics import start_reporting

    script_dir = server.cfg.pythonpath.split(",")[0] if server.cfg.pythonpath else None
    start_reporting(os.getpid(), os.environ["PROMETHEUS_MULTIPROC_DIR"], script_dir, server.log)


def post_fork(server, worker):
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


# Where the app (notebooks/serve.ipynb) puts its workers' memory cap, in bytes.
WORKER_MEMORY_CAP_KEY = "MAX_WORKER_MEMORY_BYTES"


def post_request(worker, request, environ, response):
    worker.memory_cap(worker)

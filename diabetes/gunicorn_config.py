"""gunicorn settings of the service (host, port and workers come from the
endpoint notebook's parameters, on the command line)."""

import ctypes
import signal
import sys

# Each request's line in the log, on stdout (PM2's out log).
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
# A worker silent for this long is killed and replaced.
timeout = 30
# On a stop or reload, workers get this long to finish the requests they hold
# (ecosystem.config.js gives PM2's kill_timeout more).
graceful_timeout = 20
# gunicorn would otherwise open a control socket in the user's home.
control_socket_disable = True

_PR_SET_PDEATHSIG = 1


def when_ready(server):
    # PM2 stops and restarts an app with SIGINT, which gunicorn takes as a
    # quick shutdown that fails the requests in flight: take it as SIGTERM,
    # the graceful one.
    server.handle_int = server.handle_term


def post_fork(server, worker):
    # XGBoost imports scikit-learn whenever it is installed, for a wrapper the
    # service never uses; it costs each worker ~75 MB and ~0.7 s of start-up.
    # A None entry in sys.modules makes that import fail, as if not installed.
    sys.modules.setdefault("sklearn", None)
    # A worker whose master dies (kill -9) gets SIGTERM and leaves, instead of
    # holding the port unsupervised while PM2 starts a new master.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def post_worker_init(worker):
    # PM2 sends its SIGINT to the workers too: finish the request in hand, then leave.
    signal.signal(signal.SIGINT, worker.handle_exit)

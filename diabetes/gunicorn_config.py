"""gunicorn settings of the service (host, port and workers come from the
endpoint notebook's parameters, on the command line)."""

import sys

# Each request's line in the log, on stdout (PM2's out log).
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
# A worker silent for this long is killed and replaced.
timeout = 30
# On a stop or reload, workers get this long to finish the requests they hold.
graceful_timeout = 20
# gunicorn would otherwise open a control socket in the user's home.
control_socket_disable = True


def post_fork(server, worker):
    # XGBoost imports scikit-learn whenever it is installed, for a wrapper the
    # service never uses; it costs each worker ~75 MB and ~0.7 s of start-up.
    # A None entry in sys.modules makes that import fail, as if not installed.
    sys.modules.setdefault("sklearn", None)

"""prometheus-client's multiprocess values, their writes gathered.

In multiprocess mode (PROMETHEUS_MULTIPROC_DIR, under gunicorn) every `inc`
of a counter or a histogram takes a lock, checks the process id with a system
call and writes the new value into the worker's file: a dozen times for each
request. Here an `inc` only notes its amount; the worker adds up what it
noted and writes each value once, when it keeps its books (every
`observability.BOOKKEEPING_SECONDS`, before it answers /metrics, and when it
exits). So /metrics and `pm2 monit` count another worker's requests up to
that much later, and a worker killed outright (kill -9) loses at most that
much of its counts, as it loses its last access log lines.
"""

import os
import threading

from prometheus_client import values


class _ProcessId:
    """os.getpid() without a system call at each write: read again after a fork."""

    def __init__(self):
        self.pid = os.getpid()
        os.register_at_fork(after_in_child=self._read_again)

    def _read_again(self):
        self.pid = os.getpid()

    def __call__(self) -> int:
        return self.pid


def gathered_value_class():
    """A value class for prometheus-client whose `inc` is noted, and the
    function that writes what was noted."""
    written = values.MultiProcessValue(process_identifier=_ProcessId())
    # (value, amount) pairs. A thread that notes only appends, and the writer
    # takes the first `count` pairs by two slices: each of these is one step
    # under the interpreter's lock, so a pair noted meanwhile is never lost.
    noted = []
    writing = threading.Lock()
    os.register_at_fork(after_in_child=noted.clear)

    class GatheredValue(written):
        def inc(self, amount):
            noted.append((self, amount))

        def set(self, value, timestamp=None):
            write_noted()
            super().set(value, timestamp)

        def get(self):
            write_noted()
            return super().get()

    def write_noted():
        with writing:
            count = len(noted)
            if not count:
                return
            batch = noted[:count]
            del noted[:count]
            totals = {}
            for value, amount in batch:
                totals[value] = totals.get(value, 0.0) + amount
            for value, amount in totals.items():
                written.inc(value, amount)

    return GatheredValue, write_noted


def gather_metric_writes():
    """In multiprocess mode, make the metrics created from now on gather their
    writes (call it before creating any). Returns the function that writes
    what they noted (None outside multiprocess mode, where values live in
    memory anyway); the caller calls it regularly and at exit."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return None
    value_class, write_noted = gathered_value_class()
    values.ValueClass = value_class
    return write_noted

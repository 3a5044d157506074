"""Watching the service: Prometheus metrics, JSON access logs with a request
id, the time of each stage of a request, and the optional prediction log.

A request only notes what happened as it is answered (`Watch.finish`); its
metrics and its access-log line are made from the notes in bulk, a few times
a second, off the request (`keep_books`).

Under gunicorn every worker counts for itself; prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set up by gunicorn_config.py)
adds them up when /metrics is scraped. Each worker writes its counts when it
keeps its books rather than at every request (diabetes/gathered_metrics.py).
"""

import atexit
import bisect
import collections
import contextvars
import fcntl
import functools
import io
import itertools
import logging
import os
import re
import stat
import sys
import threading
import time
import traceback

import numpy as np
import orjson
from flask import Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from diabetes.edge import BEHIND_EDGE_VARIABLE
from diabetes.features import FEW_ROWS
from diabetes.gathered_metrics import gather_metric_writes
from diabetes.settings import SettingRefused

_LOGGER = logging.getLogger(__name__)
disable_created_metrics()
# Before the metrics are made: in each gunicorn worker their writes are gathered.
write_gathered_metrics = gather_metric_writes()
# How often a process turns the requests it answered into metrics and log
# lines and writes them out: /metrics may miss another worker's last
# BOOKKEEPING_SECONDS, and a worker killed outright (kill -9) loses them.
BOOKKEEPING_SECONDS = 0.25
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")
# Methods counted under their own name; any other a client makes up shares the
# label "other", so that no client can grow the number of series.
_COUNTED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# The route label of requests that matched no route, and of those the HTTP
# server refused before the app saw them.
UNMATCHED_ROUTE = "unmatched"
SERVER_REFUSED_ROUTE = "refused_by_server"
# The record of the request being answered: a context variable, as Flask
# keeps its own request, so each greenlet (or thread) sees its own.
_CURRENT_RECORD: contextvars.ContextVar["RequestRecord"] = contextvars.ContextVar("request_record")

REQUESTS = Counter(
    "diabetes_requests_total", "Requests answered, by route, method and status", ["route", "method", "status"]
)
LATENCY = Histogram(
    "diabetes_request_duration_seconds", "Time to answer a request, by route", ["route"], buckets=_LATENCY_BUCKETS
)
STAGES = Histogram(
    "diabetes_request_stage_duration_seconds",
    "Time spent in each stage of a request (parse, validate, predict, serialize)",
    ["route", "stage"],
    buckets=_LATENCY_BUCKETS,
)
PREDICTIONS = Counter(
    "diabetes_predictions_total",
    "Rows predicted, by label and by probability bin (lower bound, width 0.1)",
    ["label", "probability_bin"],
)
ERRORS = Counter("diabetes_errors_total", "Error answers, by error code", ["code"])
LOG_LINES_DROPPED = Counter(
    "diabetes_log_lines_dropped_total",
    "Log lines that could not be written (a full disk, a closed pipe), by log: the requests were answered all the same",
    ["log"],
)
MODEL = Gauge(
    "diabetes_model_info", "The model version being served (value 1)", ["version"], multiprocess_mode="liveall"
)


class _Clock:
    """The log lines' time, UTC to the millisecond, as datetime's isoformat
    writes it; the date and time of day are formatted once per second."""

    second, text = None, ""

    def format(self, at: float) -> str:
        second = int(at)
        if second != self.second:
            self.second, self.text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self.text}.{int((at - second) * 1000):03d}+00:00"

    def now(self) -> str:
        return self.format(time.time())


_CLOCK = _Clock()
utc_timestamp = _CLOCK.now


class RequestRecord:
    """One request's context, made by `Watch` as the request arrives: its id,
    its route, the time spent in each stage (`with record.stage("predict"):
    ...`, sent back in a standard Server-Timing header that browsers'
    developer tools and `make bench` read), and the code of the error it got,
    if any. Views, error handlers and guards obtain it with `this_request()`."""

    __slots__ = (
        "watch",
        "request_id",
        "route",
        "started",
        "seconds",
        "error_code",
        "predicted",
        "_stage",
        "_stage_started",
    )

    def __init__(self, watch: "Watch", request_id: str, started: float):
        self.watch, self.request_id, self.started = watch, request_id, started
        self.route = UNMATCHED_ROUTE
        self.seconds = {}
        self.error_code = None
        self.predicted = None  # (probabilities, threshold), counted when the books are kept

    def stage(self, name: str) -> "RequestRecord":
        self._stage = name
        return self

    def __enter__(self):
        self._stage_started = time.perf_counter()

    def __exit__(self, *exception):
        self.seconds[self._stage] = self.seconds.get(self._stage, 0.0) + time.perf_counter() - self._stage_started

    def server_timing(self) -> str:
        return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in self.seconds.items())

    def predictions(self, rows: np.ndarray, probabilities: np.ndarray, threshold: float):
        """Count this request's predictions, and log them when the service keeps a prediction log."""
        self.predicted = probabilities, threshold
        if self.watch.prediction_log is not None:
            self.watch.prediction_log.append(
                {
                    "time": utc_timestamp(),
                    "request_id": self.request_id,
                    "model_version": self.watch.model_version,
                    "route": request.url_rule.rule,
                    "inputs": np.ascontiguousarray(rows),
                    "probabilities": probabilities,
                }
            )


def this_request() -> RequestRecord:
    """The record of the request being answered."""
    return _CURRENT_RECORD.get()


class AccessLog:
    """JSON lines on stdout (PM2's out log), written in batches rather than one
    write per request: a batch is written when it would pass the size a pipe
    writes in one piece (so lines of several workers never mix), and whenever
    the process keeps its books (`keep_books`)."""

    _ATOMIC_PIPE_WRITE = 4096

    def __init__(self):
        try:
            stream = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
            self.write_out = stream.write
        except (io.UnsupportedOperation, AttributeError, ValueError):  # in a notebook's kernel
            self.write_out = lambda data: sys.stdout.write(data.decode())
        self.pending, self.size = [], 0
        self.lock = threading.Lock()

    def write(self, entry: dict):
        self.write_all([entry])

    def write_all(self, entries: list[dict]):
        lines = [orjson.dumps(entry) + b"\n" for entry in entries]
        with self.lock:
            for line in lines:
                if self.size + len(line) > self._ATOMIC_PIPE_WRITE:
                    self._write_pending()
                self.pending.append(line)
                self.size += len(line)

    def flush(self):
        with self.lock:
            self._write_pending()

    def _write_pending(self):
        if not self.pending:
            return
        lines, self.pending, self.size = self.pending, [], 0
        try:
            self.write_out(b"".join(lines))
        except (OSError, ValueError):
            # A log that cannot be written must not fail the requests: the
            # batch is dropped and counted.
            LOG_LINES_DROPPED.labels("access").inc(len(lines))


class PredictionLog:
    """Each prediction request's inputs and outputs, one JSON line per request,
    appended to a file that a later training run can read.

    The inputs are patients' measurements: the file and its rotated copies are
    readable by their owner only (0600). A file or rotated copy found with a
    wider mode (made before the service, by hand or by another tool) is
    narrowed to 0600 with a warning, when the log is opened and as it is
    rotated; one the service cannot narrow (another user's) is refused at
    start. Each line is written in one write to the file opened for
    appending, and the file is closed (so flushed) at once: a crash of the
    service loses at most the request in hand, and the file can be moved away
    at any time. Past `max_bytes` the file is rotated
    (`path.1` ... `path.N`, the oldest dropped), under a lock that the workers
    share, so that the log never grows without bound. The values are written
    as the model read them, float32, in their shortest form (34.2, not
    34.20000076293945); NaN (not measured) as null. A write that fails (a full
    disk) drops the line, counts it, and the request is answered all the same."""

    ROTATED_FILES = 5
    MODE = 0o600

    def __init__(self, path: str, max_bytes: int):
        self.path, self.max_bytes = os.path.abspath(path), max_bytes
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        self.lock_path = self.path + ".lock"
        for path in [self.path, *self.rotated_paths()]:
            try:
                self._narrow(path)
            except OSError as error:
                raise SettingRefused(
                    f"prediction log {path} is readable by others and cannot be made private ({error}): "
                    f"chmod 600 it, or remove it"
                ) from None

    def rotated_paths(self) -> list[str]:
        return [f"{self.path}.{number}" for number in range(1, self.ROTATED_FILES + 1)]

    def _narrow(self, path: str):
        """Make the file at `path`, if it is a regular file that others may
        read or write, readable by its owner only, and say so."""
        try:
            status = os.stat(path)
        except FileNotFoundError:
            return
        mode = stat.S_IMODE(status.st_mode)
        if not stat.S_ISREG(status.st_mode) or not mode & 0o077:
            return  # a device (/dev/full) or a pipe is not ours to change
        os.chmod(path, self.MODE)
        _LOGGER.warning(
            "prediction log %s had mode %o: others could read the patients' rows it holds; narrowed to %o",
            path,
            mode,
            self.MODE,
        )

    def append(self, record: dict):
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        try:
            lock = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT, self.MODE)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)
                self._rotate_if_full(len(line))
                log = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, self.MODE)
                try:
                    os.write(log, line)
                finally:
                    os.close(log)
            finally:
                os.close(lock)
        except OSError:
            LOG_LINES_DROPPED.labels("prediction").inc()

    def _rotate_if_full(self, incoming: int):
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return
        if size + incoming <= self.max_bytes:
            return
        for number in range(self.ROTATED_FILES - 1, 0, -1):
            if os.path.exists(f"{self.path}.{number}"):
                os.replace(f"{self.path}.{number}", f"{self.path}.{number + 1}")
        os.replace(self.path, f"{self.path}.1")
        # Copies keep their mode as they move: one widened since the start is narrowed now.
        for path in self.rotated_paths():
            self._narrow(path)


@functools.cache
def _predictions_counter(label: int, probability_bin: int):
    return PREDICTIONS.labels(str(label), f"{probability_bin / 10:.1f}")


def count_predictions(probabilities: np.ndarray, threshold: float, counts: collections.Counter):
    """Add the predictions to `counts`, by (label, probability bin). The label
    is the answer's: NumPy compares float32 probabilities with the threshold
    rounded to float32. The bin is the probability's own, found in float64:
    in float32, 0.7's nearest (0.69999999) times 10 rounds to 7."""
    if len(probabilities) <= FEW_ROWS:
        threshold = float(np.float32(threshold))
        for probability in probabilities.tolist():
            counts[int(probability >= threshold), min(int(probability * 10), 9)] += 1
    else:
        labels = probabilities >= threshold
        bins = np.minimum((probabilities.astype(np.float64) * 10).astype(int), 9)
        for label in (0, 1):
            counts_of_label = np.bincount(bins[labels == label], minlength=10)
            for probability_bin in np.flatnonzero(counts_of_label):
                counts[label, int(probability_bin)] += int(counts_of_label[probability_bin])


def observe_all(histogram: Histogram, amounts: list[float]):
    """`histogram.observe(amount)` for each of `amounts`, with one update of
    each bucket and of the sum. prometheus-client has no call for many
    observations at once: this adds to the values its `observe` adds to (a
    histogram's `_sum` and `_buckets`, the first bucket whose upper bound is at
    least the amount); tests/test_observability.py holds the two to the same
    exposition."""
    histogram._sum.inc(sum(amounts))
    upper_bounds = histogram._upper_bounds
    for bucket, count in collections.Counter(bisect.bisect_left(upper_bounds, amount) for amount in amounts).items():
        histogram._buckets[bucket].inc(count)


def metrics_response() -> Response:
    keep_books()
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def counted_method(method: str) -> str:
    return method if method in _COUNTED_METHODS else "other"


@functools.cache
def access_log() -> AccessLog:
    """This process's access log, made on first use (in each worker, not in
    gunicorn's master)."""
    return AccessLog()


def record_server_refusal(status: int, code: str, remote_addr: str | None):
    """Count and log a request that the HTTP server refused before the app saw
    it (gunicorn's own 400, 414, 431, 501), like any request of the app."""
    REQUESTS.labels(SERVER_REFUSED_ROUTE, "other", str(status)).inc()
    ERRORS.labels(code).inc()
    access_log().write(
        {
            "time": utc_timestamp(),
            "request_id": None,
            "method": None,
            "route": SERVER_REFUSED_ROUTE,
            "path": None,
            "status": status,
            "code": code,
            "remote_addr": remote_addr,
        }
    )


class RequestIds:
    """Ids for requests that come without one: 32 hex digits, a random half
    drawn once per process and a counter, unique across workers and restarts
    without drawing random bytes for every request."""

    def __init__(self):
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self):
        self.prefix, self.counter = os.urandom(8).hex(), itertools.count()

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


REQUEST_IDS = RequestIds()


def path_as_sent(path: str) -> str:
    """The request's path (WSGI's PATH_INFO) as the client wrote it: WSGI
    hands it over as latin-1 characters, and clients send UTF-8."""
    try:
        return path.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that decoded it already
        return path


class Watch:
    """Times, counts and logs every request of a Flask app, as WSGI middleware
    around it: it makes each request's `RequestRecord` (the request's context,
    see `this_request()`), and adds to every answer, errors included, its
    X-Request-ID, X-Model-Version and Server-Timing.

    Working on the WSGI status and header list rather than in Flask's
    before/after_request hooks spares werkzeug's header objects and Flask's
    hook machinery on every request."""

    def __init__(self, app: Flask, model_version: str, prediction_log: PredictionLog | None = None):
        self.model_version, self.prediction_log = model_version, prediction_log
        # Opened with the app, on the standard output the app is given.
        access_log()
        keep_books_regularly()
        self.wrapped = app.wsgi_app
        app.wsgi_app = self
        MODEL.labels(model_version).set(1)

    def __call__(self, environ: dict, start_response):
        started = time.perf_counter()
        given = environ.get("HTTP_X_REQUEST_ID")
        record = RequestRecord(self, given if given and _REQUEST_ID.match(given) else REQUEST_IDS.next(), started)
        current = _CURRENT_RECORD.set(record)
        status_line = None

        def start_with_our_headers(status: str, headers: list, exc_info=None):
            nonlocal status_line
            status_line = status
            # Called by Flask while the request's context is still there.
            rule = request.url_rule
            if rule is not None:
                record.route = rule.rule
            headers.append(("X-Request-ID", record.request_id))
            headers.append(("X-Model-Version", self.model_version))
            headers.append(("Server-Timing", record.server_timing()))
            return start_response(status, headers, exc_info)

        try:
            answer = self.wrapped(environ, start_with_our_headers)
        finally:
            _CURRENT_RECORD.reset(current)
        self.finish(record, environ, int(status_line[:3]), time.perf_counter() - started)
        return answer

    def finish(self, record: RequestRecord, environ: dict, status: int, seconds: float):
        # One step here; the metrics and the log line are made by `keep_books`.
        _ANSWERED.append(
            (
                record,
                environ["REQUEST_METHOD"],
                environ.get("PATH_INFO", ""),
                client_address(environ),
                status,
                seconds,
                time.time(),
            )
        )


# Behind the edge (diabetes/edge.py) every request comes from HAProxy, which
# adds the client's address as the last X-Forwarded-For entry: a client may
# send entries of its own, never the last one.
_BEHIND_EDGE = bool(os.environ.get(BEHIND_EDGE_VARIABLE))


def client_address(environ: dict) -> str | None:
    forwarded = _BEHIND_EDGE and environ.get("HTTP_X_FORWARDED_FOR")
    if forwarded:
        return forwarded.rpartition(",")[2].strip()
    return environ.get("REMOTE_ADDR")


# Requests answered and not yet in the books: (record, method, path, remote
# address, status, seconds, time answered). Requests only append; `keep_books`
# takes the first ones by two slices, each one step under the interpreter's
# lock, so a request noted meanwhile is never lost.
_ANSWERED: list[tuple] = []
_KEEPING_BOOKS = threading.Lock()
# Requests accounted for at a time, between which the worker serves others.
_ACCOUNTED_AT_ONCE = 64


def _account_for(answered: list[tuple]):
    """The metrics and log lines of these requests, each metric updated once."""
    requests, latencies, stages = collections.Counter(), collections.defaultdict(list), collections.defaultdict(list)
    errors, predictions, log_lines = collections.Counter(), collections.Counter(), []
    for record, method, path, remote_addr, status, seconds, at in answered:
        route = record.route
        requests[route, counted_method(method), status] += 1
        latencies[route].append(seconds)
        for stage, stage_seconds in record.seconds.items():
            stages[route, stage].append(stage_seconds)
        if status >= 400:
            errors[record.error_code or "unknown"] += 1
        if record.predicted is not None:
            count_predictions(*record.predicted, predictions)
        log_lines.append(
            {
                "time": _CLOCK.format(at),
                "request_id": record.request_id,
                "method": method,
                "route": route,
                "path": path_as_sent(path),
                "status": status,
                "duration_ms": round(seconds * 1000, 3),
                "model_version": record.watch.model_version,
                "remote_addr": remote_addr,
            }
        )
    for (route, method, status), count in requests.items():
        REQUESTS.labels(route, method, str(status)).inc(count)
    for route, amounts in latencies.items():
        observe_all(LATENCY.labels(route), amounts)
    for (route, stage), amounts in stages.items():
        observe_all(STAGES.labels(route, stage), amounts)
    for code, count in errors.items():
        ERRORS.labels(code).inc(count)
    for (label, probability_bin), count in predictions.items():
        _predictions_counter(label, probability_bin).inc(count)
    access_log().write_all(log_lines)


def keep_books(serving: bool = True):
    """Make the metrics and the access-log lines of the requests answered
    since the last call, and write both out. Done in bulk, off the requests:
    a request spends one step on its books instead of a dozen metric updates
    and a log line. `serving`: while the process still serves (not at exit),
    requests that arrive meanwhile are let in between batches."""
    with _KEEPING_BOOKS:
        left = len(_ANSWERED)
        while left:
            count = min(left, _ACCOUNTED_AT_ONCE)
            _account_for(_ANSWERED[:count])
            del _ANSWERED[:count]
            left -= count
            if serving:
                time.sleep(0)
        if write_gathered_metrics is not None:
            write_gathered_metrics()
        access_log().flush()


@functools.cache
def keep_books_regularly():
    """In this process, keep the books every BOOKKEEPING_SECONDS (a thread, a
    greenlet under gunicorn's gevent workers) and at exit."""

    def keep_them():
        while True:
            time.sleep(BOOKKEEPING_SECONDS)
            try:
                keep_books()
            except Exception:  # a bug must not stop the books for good: say it, and go on
                traceback.print_exc()

    threading.Thread(target=keep_them, daemon=True, name="bookkeeping").start()
    atexit.register(keep_books, serving=False)

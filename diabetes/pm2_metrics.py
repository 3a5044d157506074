"""The service as a whole in `pm2 monit`: the gunicorn master reports custom
metrics to PM2 (`pm2 monit`'s Custom Metrics, `pm2 show`, and
`pm2_env.axm_monitor` in `pm2 jlist`).

PM2 sees only the process it started, the master, which serves nothing. So a
thread of the master (started by gunicorn_config.when_ready, never in a
worker) measures the whole service every `REFRESH_SECONDS` and writes it on
PM2's IPC channel, one JSON line `{"type": "axm:monitor", "data": {...}}` on
the socket whose fd number PM2 puts in `NODE_CHANNEL_FD`:

- requests/s, p99 latency and error rate over the last `WINDOW_SECONDS`, and
  requests answered since the master started: from the same files that
  /metrics adds up (prometheus-client's multiprocess folder), so the figures
  agree with it; the workers do nothing more per request;
- workers alive, and the PSS memory and CPU of the master and its workers
  together, from /proc;
- the model version (the served model's metadata.json) and the release.

Not under PM2 (no channel), nothing starts. A write that PM2 does not take at
once is dropped, never waited for; a channel that is gone ends the reports,
never the master. The thread is a daemon: it ends with the master.
"""

import errno
import glob
import json
import os
import socket
import threading
import time
from collections import deque

from diabetes import model_metadata
from diabetes.release_layout import MANIFEST_FILE, MODEL_DIR

CHANNEL_FD_VARIABLE = "NODE_CHANNEL_FD"
CHANNEL_SERIALIZATION_VARIABLE = "NODE_CHANNEL_SERIALIZATION_MODE"
# The release being served, when whoever starts the service names one; else
# the manifest of a release folder that holds the served script.
RELEASE_VARIABLE = "DIABETES_RELEASE"
MODEL_DIR_VARIABLE = "DIABETES_MODEL_DIR"
NOT_KNOWN = "unknown"
NO_RELEASE = "none"
# Shown in place of a latency or an error rate when nothing was answered in the window.
NOTHING_ANSWERED = "n/a"

REFRESH_SECONDS = 1.0
WINDOW_SECONDS = 5.0
QUANTILE = 0.99

REQUESTS_SAMPLE = "diabetes_requests_total"
ERRORS_SAMPLE = "diabetes_errors_total"
LATENCY_BUCKET_SAMPLE = "diabetes_request_duration_seconds_bucket"

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# errno values of a write that PM2 did not take at once: the sample is dropped.
_BUSY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.ENOBUFS})


class Pm2Channel:
    """PM2's IPC socket, written to without ever waiting."""

    def __init__(self, fd: int):
        # A socket of its own on a copy of the fd: closing it leaves PM2's fd alone.
        self.socket = socket.socket(fileno=os.dup(fd))
        self.socket.setblocking(False)

    @classmethod
    def from_environment(cls) -> "Pm2Channel | None":
        """The channel PM2 gave this process, or None when not under PM2 (or
        when the channel is not one that takes JSON lines)."""
        fd = os.environ.get(CHANNEL_FD_VARIABLE, "")
        if not fd.isdigit() or os.environ.get(CHANNEL_SERIALIZATION_VARIABLE, "json") != "json":
            return None
        try:
            channel = cls(int(fd))
        except OSError:
            return None
        if channel.socket.family != socket.AF_UNIX:
            channel.close()
            return None
        return channel

    def send(self, data: dict) -> bool:
        """Write one axm:monitor message; False if the channel is gone.
        A line too long for the socket's buffer right now is not sent at all."""
        line = json.dumps({"type": "axm:monitor", "data": data}, separators=(",", ":")).encode() + b"\n"
        try:
            self.socket.send(line, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except OSError as error:
            return error.errno in _BUSY
        return True

    def close(self):
        self.socket.close()


def request_counts(multiprocess_dir: str) -> tuple[float, float, dict[float, float]]:
    """Requests answered, error answers, and the latency histogram's
    cumulative bucket counts (upper bound in seconds -> count), over every
    worker, dead ones included, as /metrics adds them up."""
    from prometheus_client.multiprocess import MultiProcessCollector

    files = [
        *glob.glob(os.path.join(multiprocess_dir, "counter_*.db")),
        *glob.glob(os.path.join(multiprocess_dir, "histogram_*.db")),
    ]
    requests, errors, buckets = 0.0, 0.0, {}
    for family in MultiProcessCollector.merge(files, accumulate=True):
        for sample in family.samples:
            if sample.name == REQUESTS_SAMPLE:
                requests += sample.value
            elif sample.name == ERRORS_SAMPLE:
                errors += sample.value
            elif sample.name == LATENCY_BUCKET_SAMPLE:
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return requests, errors, buckets


def quantile_of_buckets(buckets: dict[float, float], quantile: float) -> float | None:
    """The quantile of a histogram given as cumulative counts by upper bound,
    interpolated within its bucket as Prometheus' histogram_quantile does
    (the highest finite bound when it falls in the +Inf bucket); None if empty."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = quantile * buckets[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def live_children(pid: int) -> list[int]:
    """The children of `pid` that have not exited (zombies not yet reaped left out)."""
    children = []
    for task_children in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(task_children) as file:
                children += [int(child) for child in file.read().split()]
        except OSError:
            continue
    return [child for child in children if process_state(child) not in (None, "Z", "X")]


def process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def cpu_ticks(pid: int) -> int | None:
    """User and system time of `pid` so far, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command: state is field 3 of stat(5), utime 14 and stime 15.
    return int(fields[11]) + int(fields[12])


def pss_kib(pid: int) -> int | None:
    """Proportional set size of `pid`: shared pages split among their users,
    so that the sum over processes is the memory they take together."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def model_version(model_dir: str | None) -> str:
    if not model_dir:
        return NOT_KNOWN
    try:
        return model_metadata.read(model_dir).version
    except (OSError, ValueError):
        return NOT_KNOWN


def release_id(script_dir: str | None) -> str:
    """The release being served. The hook for releases: `DIABETES_RELEASE`
    when set, else the `release` of the manifest beside the served script."""
    if os.environ.get(RELEASE_VARIABLE):
        return os.environ[RELEASE_VARIABLE]
    if not script_dir:
        return NO_RELEASE
    try:
        with open(os.path.join(script_dir, MANIFEST_FILE), "rb") as file:
            return str(json.load(file)["release"])
    except FileNotFoundError:
        return NO_RELEASE
    except (OSError, ValueError, KeyError, TypeError):
        return NOT_KNOWN


def served_model_dir(script_dir: str | None) -> str | None:
    """The model the workers load: a release's own copy beside its script,
    else the folder the service's setting names."""
    if script_dir and os.path.isdir(os.path.join(script_dir, MODEL_DIR)):
        return os.path.join(script_dir, MODEL_DIR)
    return os.environ.get(MODEL_DIR_VARIABLE)


class ServiceWatch:
    """The figures of the whole service, measured from outside the request
    path: each `measure()` reads the metric files and /proc once."""

    def __init__(self, master_pid: int, multiprocess_dir: str, script_dir: str | None):
        self.master_pid, self.multiprocess_dir, self.script_dir = master_pid, multiprocess_dir, script_dir
        self.counts = deque()  # (time, requests, errors, buckets), the oldest within the window first
        self.ticks, self.ticks_time = {}, None

    def measure(self) -> dict:
        now = time.monotonic()
        requests, errors, buckets = request_counts(self.multiprocess_dir)
        self.counts.append((now, requests, errors, buckets))
        while len(self.counts) > 2 and now - self.counts[1][0] >= WINDOW_SECONDS:
            self.counts.popleft()
        since, requests_then, errors_then, buckets_then = self.counts[0]
        answered = requests - requests_then
        seconds = now - since
        window_buckets = {bound: count - buckets_then.get(bound, 0.0) for bound, count in buckets.items()}
        p99 = quantile_of_buckets(window_buckets, QUANTILE)

        workers = live_children(self.master_pid)
        processes = [self.master_pid, *workers]
        memory = [pss_kib(pid) for pid in processes]
        return {
            "requests/s": {"value": round(answered / seconds, 1) if seconds > 0 else 0.0, "unit": "req/s"},
            "p99 latency": {"value": NOTHING_ANSWERED if p99 is None else round(p99 * 1000, 2), "unit": "ms"},
            "error rate": {
                "value": round(100 * (errors - errors_then) / answered, 2) if answered > 0 else NOTHING_ANSWERED,
                "unit": "%",
            },
            "requests": {"value": int(requests), "unit": "answered"},
            "workers alive": {"value": len(workers)},
            "PSS total": {"value": round(sum(kib for kib in memory if kib) / 1024, 1), "unit": "MiB"},
            "CPU total": {"value": self._cpu_percent(processes, now), "unit": "%"},
            "model": {"value": model_version(served_model_dir(self.script_dir))},
            "release": {"value": release_id(self.script_dir)},
        }

    def _cpu_percent(self, processes: list[int], now: float) -> float:
        """CPU time of these processes since the last measure, as a share of
        one core (PM2's own CPU column counts the same way)."""
        ticks = {pid: cpu_ticks(pid) for pid in processes}
        ticks = {pid: value for pid, value in ticks.items() if value is not None}
        percent = 0.0
        if self.ticks_time is not None and now > self.ticks_time:
            # A worker born since the last measure spent all its time within the interval.
            used = sum(value - self.ticks.get(pid, 0) for pid, value in ticks.items())
            percent = 100 * max(used, 0) / _CLOCK_TICKS / (now - self.ticks_time)
        self.ticks, self.ticks_time = ticks, now
        return round(percent, 1)


class Reporter:
    """The thread that sends the service's figures to PM2 until `stop()`."""

    def __init__(self, channel: Pm2Channel, watch: ServiceWatch, log=None):
        self.channel, self.watch, self.log = channel, watch, log
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pm2-metrics", daemon=True)

    def _run(self):
        measure_failed_before = False
        try:
            while not self.stopping.wait(REFRESH_SECONDS):
                try:
                    figures = self.watch.measure()
                except Exception as error:  # a figure that cannot be read this time must not end the reports
                    if not measure_failed_before and self.log:
                        self.log.warning("pm2 metrics: cannot measure the service (%r); retrying", error)
                    measure_failed_before = True
                    continue
                if not self.channel.send(figures):
                    if self.log:
                        self.log.warning("pm2 metrics: PM2's channel is gone; no more reports")
                    return
        finally:
            self.channel.close()

    def stop(self):
        self.stopping.set()


_reporter: Reporter | None = None


def start_reporting(master_pid: int, multiprocess_dir: str, script_dir: str | None, log=None) -> Reporter | None:
    """Start the master's reports to PM2, once per master; None when not under PM2."""
    global _reporter
    if _reporter is not None:
        return _reporter
    channel = Pm2Channel.from_environment()
    if channel is None:
        return None
    _reporter = Reporter(channel, ServiceWatch(master_pid, multiprocess_dir, script_dir), log)
    _reporter.thread.start()
    return _reporter


def stop_reporting():
    if _reporter is not None:
        _reporter.stop()

"""A load of HTTP requests on 127.0.0.1 with wrk, as the tests and the
benchmark apply it: the request's body in a Lua script, and the figures that
wrk's done() hook prints as one JSON line."""

import json
import signal
import threading
from pathlib import Path

from tests.processes import LOCALHOST, run_bounded

LOCALHOST_URL = f"http://{LOCALHOST}:"
WRK_THREADS = 2
# Slower answers count as latency, not errors: the article's server queues
# 64 connections behind one process.
WRK_TIMEOUT_SECONDS = 10
_RESULT_MARKER = "BENCH_RESULT "

# wrk's done() hook sees every request's latency; printing the figures as
# JSON spares parsing wrk's human-readable units.
_LUA_DONE = """\
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{marker}{{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}}\\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write,
    errors.status, errors.timeout, latency:percentile(50), latency:percentile(99),
    latency.mean, latency.max))
end
"""
_LUA_JSON_BODY = """\
wrk.method = "POST"
wrk.body = [==[{body}]==]
wrk.headers["Content-Type"] = "application/json"

"""
# A binary body is read from its file: in a Lua long string, line breaks
# (bytes 10 and 13) would be rewritten.
_LUA_FILE_BODY = """\
wrk.method = "POST"
local file = assert(io.open([==[{body_path}]==], "rb"))
wrk.body = file:read("*a")
file:close()
{headers}
"""


def write_wrk_script(path: Path, body: dict) -> Path:
    """A wrk script that POSTs `body` as JSON to the path of the URL wrk is given."""
    text = json.dumps(body)
    if "]==]" in text:
        raise ValueError("the body would end the Lua string that holds it")
    path.write_text(_LUA_JSON_BODY.format(body=text) + _LUA_DONE.format(marker=_RESULT_MARKER))
    return path


def write_raw_wrk_script(path: Path, body: bytes, headers: dict[str, str]) -> Path:
    """A wrk script that POSTs the bytes `body` with exactly `headers` (wrk
    adds no Content-Type of its own), from a file beside the script."""
    body_path = path.with_suffix(".body")
    body_path.write_bytes(body)
    if any(set('"\\\n') & set(name + value) for name, value in headers.items()) or "]==]" in str(body_path):
        raise ValueError("a header or the body's path would end the Lua string that holds it")
    lines = "\n".join(f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items())
    path.write_text(_LUA_FILE_BODY.format(body_path=body_path, headers=lines) + _LUA_DONE.format(marker=_RESULT_MARKER))
    return path


def run_wrk(url: str, script: Path, connections: int, seconds: int, until: threading.Event | None = None) -> dict:
    """Load `url` for `seconds` with `connections` open connections, or until
    `until` is set if that comes first; the figures wrk's done() hook
    printed, with requests/s and latencies in ms."""
    if not url.startswith(LOCALHOST_URL):
        raise ValueError(f"wrk loads {LOCALHOST} only, not {url}")
    command = [
        "wrk",
        f"-t{WRK_THREADS}",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={WRK_TIMEOUT_SECONDS}s",
        "-s",
        str(script),
        url,
    ]
    stopper = None if until is None else _stopped_on(until, seconds)
    result = run_bounded(command, timeout=seconds + WRK_TIMEOUT_SECONDS + 20, started=stopper)
    lines = [line for line in result.stdout.splitlines() if line.startswith(_RESULT_MARKER)]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    raw = json.loads(lines[-1][len(_RESULT_MARKER) :])
    return {
        "requests": raw["requests"],
        "seconds": raw["duration_us"] / 1e6,
        "requests_per_second": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "mean_ms": raw["mean_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        # wrk's "status" errors are answers of 400 or more (its "Non-2xx or 3xx").
        "errors": {name: raw[name] for name in ("status", "connect", "read", "write", "timeout")},
    }


def _stopped_on(until: threading.Event, seconds: int):
    """What stops a running wrk when `until` is set: SIGINT, on which wrk
    ends its load and still reports (its done() hook runs)."""

    def watch(process):
        def stop_when_set():
            if until.wait(seconds):
                process.send_signal(signal.SIGINT)

        threading.Thread(target=stop_when_set, daemon=True).start()

    return watch

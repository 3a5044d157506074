"""One measurement: a wrk load on one server, and what the server's processes
spent on it (CPU from /proc/<pid>/stat, memory from /proc/<pid>/smaps_rollup)."""

import json
import os
import signal
import subprocess
from pathlib import Path

LOCALHOST_URL = "http://127.0.0.1:"
WRK_THREADS = 2
# Slower answers count as latency, not errors: the article's server queues
# 64 connections behind one process.
WRK_TIMEOUT_SECONDS = 10
_RESULT_MARKER = "BENCH_RESULT "
_CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

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


def run_bounded(command, timeout: float, **options) -> subprocess.CompletedProcess:
    """Run a command in a session of its own, for at most `timeout` seconds.

    On a timeout or an interruption the whole process group is killed, not
    only its leader: a killed `make` would leave papermill or pm2 running."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **options
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        kill_process_group(process.pid)
        try:
            process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass  # a grandchild still holds the pipes; the group has been killed all the same
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def kill_process_group(group_id: int):
    try:
        os.killpg(group_id, signal.SIGKILL)
    except ProcessLookupError:
        pass


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


def run_wrk(url: str, script: Path, connections: int, seconds: int) -> dict:
    """Load `url` for `seconds` with `connections` open connections; the
    figures wrk's done() hook printed, with requests/s and latencies in ms."""
    if not url.startswith(LOCALHOST_URL):
        raise ValueError(f"the benchmark loads 127.0.0.1 only, not {url}")
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
    result = run_bounded(command, timeout=seconds + WRK_TIMEOUT_SECONDS + 20)
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


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat from the 3rd (state) on: the 2nd, the
    command name, may hold spaces and parentheses, so split after its last ')'."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(root_pid: int) -> list[int]:
    """The root and all its descendants (a gunicorn master and its workers)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # it exited while we looked
    tree, pending = [], [root_pid]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending += children.get(pid, [])
    return tree


def cpu_seconds(pids) -> float:
    """User and system time of the processes, plus that of their children
    already reaped (a worker replaced during the load still counts)."""
    ticks = 0
    for pid in pids:
        try:
            utime, stime, children_utime, children_stime = map(int, _stat_fields(pid)[11:15])
        except (OSError, ValueError):
            continue
        ticks += utime + stime + children_utime + children_stime
    return ticks / _CLOCK_TICKS_PER_SECOND


def pss_mib(pid: int) -> float | None:
    """Proportional set size: shared pages are divided among the processes
    sharing them, so the figures of a master and its workers add up."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def memory_of_tree(root_pid: int) -> dict:
    tree = process_tree(root_pid)
    master = pss_mib(root_pid)
    workers = [size for size in map(pss_mib, tree[1:]) if size is not None]
    return {"master": master, "workers": workers, "total": (master or 0) + sum(workers)}


def measure_load(
    url: str, script: Path, connections: int, seconds: int, root_pid: int, supervisor_pid: int | None = None
) -> dict:
    """wrk's figures, plus the CPU the server's process tree (and its
    supervisor, PM2's daemon, when there is one) spent per request, and the
    memory of the tree after the load."""
    tree = process_tree(root_pid)
    tree_cpu_before = cpu_seconds(tree)
    supervisor_cpu_before = cpu_seconds([supervisor_pid]) if supervisor_pid else None
    load = run_wrk(url, script, connections, seconds)
    # Processes that appeared during the load count from zero.
    tree_cpu_after = cpu_seconds(set(tree) | set(process_tree(root_pid)))
    requests = max(load["requests"], 1)
    load["cpu_ms_per_request"] = (tree_cpu_after - tree_cpu_before) * 1000 / requests
    if supervisor_pid:
        supervisor_spent = cpu_seconds([supervisor_pid]) - supervisor_cpu_before
        load["supervisor_cpu_ms_per_request"] = supervisor_spent * 1000 / requests
    load["pss_mib"] = memory_of_tree(root_pid)
    return load

"""Processes of this machine, as the tests and the benchmark start, watch and
stop them: free ports of 127.0.0.1, a child's environment cleaned of the
service's settings, commands bounded in time whose whole process group is
killed, and a process tree's CPU and memory read from /proc. The service
itself imports none of this."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from diabetes.settings import ENVIRONMENT_PREFIX

LOCALHOST = "127.0.0.1"
# The service's default ports (its edge's and its workers'), where a user's
# own service may be answering.
AVOIDED_PORTS = {5000, 5001}
# What an outer `make` (e.g. `make bench`) passes down, and would otherwise
# steer the service: its port, its model, its PM2 home.
INHERITED_SETTINGS = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PM2_HOME", "LOG_DIR")
_CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind((LOCALHOST, 0))
            port = probe.getsockname()[1]
        if port not in AVOIDED_PORTS:
            return port


def port_is_open(port: int) -> bool:
    try:
        socket.create_connection((LOCALHOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def clean_environment(**settings) -> dict:
    """Our environment without what would steer the service elsewhere, plus
    `settings`. A service given a port of its own gets a port of its own for
    its workers behind the edge too."""
    kept = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(ENVIRONMENT_PREFIX) and name not in INHERITED_SETTINGS
    }
    if "DIABETES_PORT" in settings:
        settings.setdefault("DIABETES_WORKERS_PORT", str(free_port()))
    return {**kept, **settings}


def wait_until(condition, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def run_bounded(command, timeout: float, started=None, **options) -> subprocess.CompletedProcess:
    """Run a command in a session of its own, for at most `timeout` seconds;
    `started`, if given, is called with the process once it runs.

    On a timeout or an interruption the whole process group is killed, not
    only its leader: a killed `make` would leave papermill or pm2 running."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **options
    )
    try:
        if started is not None:
            started(process)
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


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat from the 3rd (state) on: the 2nd, the
    command name, may hold spaces and parentheses, so split after its last ')'."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_exists(pid: int | None) -> bool:
    """A process that runs (or sleeps): neither gone nor a zombie."""
    if not pid:
        return False
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def process_tree(root_pid: int) -> list[int]:
    """The root and all its descendants (a gunicorn master and its workers)."""
    if root_pid <= 1:
        # PM2 says 0 for an app that is not running: the "descendants" of
        # 0 or of init are every process of the machine, the tests' own
        # included, and a test that kills them would kill them all.
        raise ValueError(f"no process tree of pid {root_pid}: the process is not running")
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

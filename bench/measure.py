"""One measurement: a wrk load on one server, and what the server's processes
spent on it (CPU from /proc/<pid>/stat, memory from /proc/<pid>/smaps_rollup)."""

from pathlib import Path

from tests.processes import cpu_seconds, memory_of_tree, process_tree
from tests.wrk import run_wrk


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

"""One measurement: a wrk load on one server, and what the server's processes
spent on it (CPU from /proc/<pid>/stat, memory from /proc/<pid>/smaps_rollup)."""

from pathlib import Path

from tests.processes import cpu_seconds, memory_of_tree, process_tree, pss_mib
from tests.wrk import run_wrk


def measure_load(
    url: str,
    script: Path,
    connections: int,
    seconds: int,
    root_pid: int,
    supervisor_pid: int | None = None,
    edge_pid: int | None = None,
) -> dict:
    """wrk's figures, plus the CPU the server's process tree (and its edge,
    HAProxy under its launcher, when there is one) spent per request, and the
    memory of both trees after the load. The supervisor (PM2's daemon) is
    counted apart."""
    roots = [root_pid] + ([edge_pid] if edge_pid else [])
    trees = {root: process_tree(root) for root in roots}
    cpu_before = {root: cpu_seconds(tree) for root, tree in trees.items()}
    supervisor_cpu_before = cpu_seconds([supervisor_pid]) if supervisor_pid else None
    load = run_wrk(url, script, connections, seconds)
    requests = max(load["requests"], 1)
    # Processes that appeared during the load count from zero.
    spent = {root: cpu_seconds(set(tree) | set(process_tree(root))) - cpu_before[root] for root, tree in trees.items()}
    load["cpu_ms_per_request"] = sum(spent.values()) * 1000 / requests
    if edge_pid:
        load["edge_cpu_ms_per_request"] = spent[edge_pid] * 1000 / requests
    if supervisor_pid:
        supervisor_spent = cpu_seconds([supervisor_pid]) - supervisor_cpu_before
        load["supervisor_cpu_ms_per_request"] = supervisor_spent * 1000 / requests
    memory = memory_of_tree(root_pid)
    if edge_pid:
        # The launcher and its HAProxy: apart from the workers, within the total.
        edge = sum(size for size in map(pss_mib, process_tree(edge_pid)) if size is not None)
        memory = {**memory, "edge": edge, "total": memory["total"] + edge}
    load["pss_mib"] = memory
    return load

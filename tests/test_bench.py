"""The HTTP benchmark runs end to end in quick mode: every server answers
under load at both connection counts, the project's service without a single
error, and the results are written. No speed is asserted: the figures depend
on the machine and on whatever else it runs."""

import json
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import PROJECT

SERVERS = ("article", "service", "ceiling")
CONNECTION_COUNTS = ("16", "64")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed: apt-get install -y wrk")
    output = tmp_path_factory.mktemp("bench")
    process = subprocess.Popen([sys.executable, "-m", "bench.run", "--quick", "--output-dir", str(output)],
                               cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        # SIGTERM, not a kill: the benchmark then stops the servers it started.
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
        pytest.fail(f"the quick benchmark took over 120 s:\n{stderr[-4000:]}")
    assert process.returncode == 0, f"the benchmark failed ({process.returncode}):\n{stdout}\n{stderr[-4000:]}"
    return {"stdout": stdout, "output": output,
            "results": json.loads((output / "results.json").read_text())}


def test_every_server_answers_under_load_at_both_connection_counts(quick_run):
    servers = quick_run["results"]["servers"]
    assert set(SERVERS) <= set(servers)
    for name in SERVERS:
        for connections in CONNECTION_COUNTS:
            assert servers[name]["by_connections"][connections]["requests_per_second"]["median"] > 0, \
                f"{name} at {connections} connections"


def test_the_project_service_answers_without_errors(quick_run):
    by_connections = quick_run["results"]["servers"]["service"]["by_connections"]
    assert {connections: by_connections[connections]["errors"] for connections in CONNECTION_COUNTS} == \
        {connections: 0 for connections in CONNECTION_COUNTS}


def test_the_markdown_table_is_written_and_printed(quick_run):
    table = (quick_run["output"] / "results.md").read_text()
    assert "| server | connections | requests/s |" in table
    assert table.strip() in quick_run["stdout"]

"""The HTTP benchmark runs end to end in quick mode: every server answers
under load at both connection counts, the project's service without a single
error, single rows and batches alike; one row is timed in process, `make
serve` and `make train` are timed, every target is reported, and the results
are written. No speed and no target is asserted: the figures depend on the
machine and on whatever else it runs."""

import json
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import PROJECT

SERVERS = ("article", "service", "ceiling")
CONNECTION_COUNTS = ("16", "64")
ROWS_PER_REQUEST = ("1", "100", "1000", "10000")
STAGES = {"parse", "validate", "predict", "serialize"}
IN_PROCESS_PATHS = ("bundle", "xgboost", "article")
TARGETS = ("single_row_vs_article", "single_row_vs_ceiling", "single_row_p99", "single_row_errors",
           "batch_rows_per_second", "in_process_predict", "in_process_difference", "make_serve_unchanged",
           "training", "worker_memory")


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


def test_the_service_answers_every_batch_size_without_errors(quick_run):
    by_rows = quick_run["results"]["batch"]["by_rows"]
    assert tuple(by_rows) == ROWS_PER_REQUEST
    for rows, summary in by_rows.items():
        assert summary["rows_per_second"]["median"] > 0, f"{rows} rows"
        assert summary["errors"] == 0, f"{rows} rows"
        assert summary["rows_per_second"]["median"] == pytest.approx(
            summary["requests_per_second"]["median"] * int(rows))


def test_each_batch_size_is_split_into_the_server_stages(quick_run):
    for rows, summary in quick_run["results"]["batch"]["by_rows"].items():
        assert set(summary["server_ms"]) == STAGES, f"{rows} rows"
        assert all(milliseconds >= 0 for milliseconds in summary["server_ms"].values()), f"{rows} rows"
        assert summary["client_ms"] > 0, f"{rows} rows"


def test_one_row_is_timed_in_process_and_compared_with_xgboost(quick_run):
    results = quick_run["results"]
    in_process = results["in_process"]
    for path in IN_PROCESS_PATHS:
        assert in_process["microseconds"][path]["median"] > 0, path
        assert in_process["microseconds"][path]["calls"] > 0, path
    assert in_process["rows_compared"] == 768
    assert in_process["max_difference_to_xgboost"] >= 0
    assert results["model"]["trees"] == results["model"]["trees_in_booster"] > 0
    assert results["model"]["max_depth"] >= 1


def test_make_serve_and_make_train_are_timed(quick_run):
    timings = quick_run["results"]["make"]
    assert timings["serve_unchanged_seconds"]["median"] > 0
    assert len(timings["serve_unchanged_seconds"]["samples"]) == 1
    assert timings["train"]["seconds"] >= timings["train"]["papermill_seconds"] > 0


def test_every_target_is_reported_with_its_measure(quick_run):
    targets = quick_run["results"]["targets"]
    assert tuple(targets) == TARGETS
    table = (quick_run["output"] / "results.md").read_text()
    assert "| target | measured | met |" in table
    for target in targets.values():
        assert isinstance(target["met"], bool)
        assert f"| {target['target']} | {target['shown']} |" in table

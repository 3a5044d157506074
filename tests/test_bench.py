"""The HTTP benchmark runs end to end in quick mode: every server answers
under load at both connection counts, MLServer included (installed in the
benchmark's venv first, as `make bench` does), the project's service without
a single error, single rows and batches alike, on /predict and on the V2
route; V2 binary tensors are either measured or reported as refused; one row
is timed in process, and so is the app, with and without CORS; `make serve`
and `make train` are timed; the stack is left out (tests/test_stack.py runs
it) and the report says so; every target is reported, and the results are
written. No speed and no target is asserted: the figures depend on the
machine and on whatever else it runs."""

import json
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import PROJECT, make, needs

pytestmark = [pytest.mark.model, pytest.mark.pm2, pytest.mark.server]

# The service counts twice: on the article's route, and as `service_v2` on the V2 route beside MLServer.
SERVERS = ("article", "service", "service_v2", "ceiling", "mlserver")
CONNECTION_COUNTS = ("16", "64")
BATCH_ROUTES = {
    "service predict": ("1", "100", "1000", "10000"),
    "service v2_json": ("100", "1000", "10000"),
    "mlserver v2_json": ("100", "1000", "10000"),
}
STAGES = {"parse", "validate", "predict", "serialize"}
IN_PROCESS_PATHS = ("bundle", "xgboost", "article")
TARGETS = (
    "single_row_vs_ceiling",
    "single_row_vs_before_edge",
    "single_row_vs_mlserver",
    "single_row_vs_article",
    "single_row_p99",
    "single_row_cpu",
    "service_errors",
    "batch_predict_rows_per_second",
    "batch_v2_json_rows_per_second",
    "batch_v2_binary_rows_per_second",
    "batch_vs_mlserver",
    "worker_memory",
    "in_process_predict",
    "in_process_difference",
    "make_serve_unchanged",
    "training",
    "stack_beside_service",
)
BENCH_VENV = PROJECT / "build" / "bench-venv"
QUICK_RUN_SECONDS = 900


@pytest.fixture(scope="module")
@needs("server")
def quick_run(tmp_path_factory, trained) -> dict:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed: apt-get install -y wrk")
    make(str(BENCH_VENV.relative_to(PROJECT) / ".installed"), timeout=900)
    output = tmp_path_factory.mktemp("bench")
    process = subprocess.Popen(
        # The tests' own model: the benchmark writes nothing into the project's build/ or scripts/.
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--no-stack",
            "--mlserver-venv",
            str(BENCH_VENV),
            "--output-dir",
            str(output),
            "--models-dir",
            str(trained["models_dir"]),
        ],
        cwd=PROJECT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=QUICK_RUN_SECONDS)
    except subprocess.TimeoutExpired:
        # SIGTERM, not a kill: the benchmark then stops the servers it started (and removes its swarm).
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=360)
        pytest.fail(f"the quick benchmark took over {QUICK_RUN_SECONDS} s:\n{stderr[-4000:]}")
    assert process.returncode == 0, f"the benchmark failed ({process.returncode}):\n{stdout}\n{stderr[-4000:]}"
    return {"stdout": stdout, "output": output, "results": json.loads((output / "results.json").read_text())}


def test_every_server_answers_under_load_at_both_connection_counts(quick_run):
    servers = quick_run["results"]["servers"]
    assert set(SERVERS) <= set(servers)
    for name in SERVERS:
        for connections in CONNECTION_COUNTS:
            assert servers[name]["by_connections"][connections]["requests_per_second"]["median"] > 0, (
                f"{name} at {connections} connections"
            )


def test_the_project_service_answers_without_errors_on_both_routes(quick_run):
    servers = quick_run["results"]["servers"]
    for name in ("service", "service_v2"):
        by_connections = servers[name]["by_connections"]
        assert {connections: by_connections[connections]["errors"] for connections in CONNECTION_COUNTS} == {
            connections: 0 for connections in CONNECTION_COUNTS
        }, name


def test_the_service_and_mlserver_give_the_same_probability_on_v2(quick_run):
    servers = quick_run["results"]["servers"]
    service = servers["service_v2"]["answer"]["body"]["outputs"]
    mlserver = servers["mlserver"]["answer"]["body"]["outputs"]
    probability = next(output for output in service if output["name"] == "probability")["data"][0]
    assert mlserver[0]["data"][0] == pytest.approx(probability, abs=1e-6)


def test_the_markdown_table_is_written_and_printed(quick_run):
    table = (quick_run["output"] / "results.md").read_text()
    assert "| server | route | connections | requests/s |" in table
    assert table.strip() in quick_run["stdout"]


def test_every_batch_route_answers_every_size_without_errors(quick_run):
    routes = quick_run["results"]["batches"]["routes"]
    for route, sizes in BATCH_ROUTES.items():
        assert tuple(routes[route]["by_rows"]) == sizes, route
        for rows, summary in routes[route]["by_rows"].items():
            assert summary["rows_per_second"]["median"] > 0, f"{route}, {rows} rows"
            assert summary["errors"] == 0, f"{route}, {rows} rows"
            assert summary["rows_per_second"]["median"] == pytest.approx(
                summary["requests_per_second"]["median"] * int(rows)
            )
            assert summary["client_ms"] > 0, f"{route}, {rows} rows"


def test_binary_tensors_are_either_measured_or_reported_as_refused(quick_run):
    batches = quick_run["results"]["batches"]
    refused = {refusal["server"] for refusal in batches["not_supported"] if refusal["encoding"] == "v2_binary"}
    for server in ("service", "mlserver"):
        measured = f"{server} v2_binary" in batches["routes"]
        assert measured != (server in refused), server
        if measured:
            assert tuple(batches["routes"][f"{server} v2_binary"]["by_rows"]) == ("100", "1000", "10000")
    table = (quick_run["output"] / "results.md").read_text()
    assert all(f"Not supported: {server} answered" in table for server in refused)


def test_the_service_splits_each_batch_into_its_stages(quick_run):
    for route in (
        route for name, route in quick_run["results"]["batches"]["routes"].items() if name.startswith("service ")
    ):
        for rows, summary in route["by_rows"].items():
            assert STAGES <= set(summary["server_ms"]), f"{route['encoding']}, {rows} rows"
            assert all(milliseconds >= 0 for milliseconds in summary["server_ms"].values())


def test_the_service_is_compared_with_mlserver_on_the_same_requests(quick_run):
    results = quick_run["results"]
    assert set(results["ratios"]["service_v2/mlserver"]) == set(CONNECTION_COUNTS)
    assert set(results["batches"]["ratios"]["service/mlserver v2_json"]) == {"100", "1000", "10000"}


def test_the_apps_cpu_per_request_is_measured_in_process_with_and_without_cors(quick_run):
    overhead = quick_run["results"]["app_overhead"]
    assert set(overhead["apps"]) == {"ceiling", "service", "service_with_origin", "service_without_cors"}
    assert all(app["median"] > 0 and len(app["repeats"]) == overhead["repeats"] for app in overhead["apps"].values())
    for difference in ("service_over_ceiling", "cors_without_origin", "cors_with_origin"):
        assert overhead[difference]["min"] <= overhead[difference]["median"] <= overhead[difference]["max"], difference


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


def test_the_stack_left_out_is_said_so_in_the_report(quick_run):
    """The quick run leaves the stack out (--no-stack): its image build and
    swarm would double this module's time. tests/test_stack.py runs the stack
    on its two-node swarm, and `make bench` measures it beside the service."""
    results = quick_run["results"]
    reasons = [reason for reason in results["skipped"] if reason.startswith("stack:")]
    table = (quick_run["output"] / "results.md").read_text()
    assert reasons == ["stack: left out (--no-stack)"], results["skipped"]
    assert "### The stack on Docker Swarm" in table and "Not measured: left out (--no-stack)" in table
    assert "stack" not in results["servers"] and "stack_one_node" not in results["servers"]

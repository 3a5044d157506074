"""`pm2 monit` shows the service as a whole: the gunicorn master reports the
figures of all its workers to PM2 (diabetes/pm2_metrics.py), and they agree
with /metrics and /proc. Read back as users and tools read them, from
`pm2 jlist` (`pm2_env.axm_monitor`), under a wrk load; and the master without
PM2, or with a channel that takes nothing, serves as before."""

import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.observability import BOOKKEEPING_SECONDS
from diabetes.pm2_metrics import LATENCY_BUCKET_SAMPLE, REFRESH_SECONDS, WINDOW_SECONDS, quantile_of_buckets
from diabetes.settings import APP_NAME
from tests.conftest import PROJECT, pm2, pm2_app, require, service_of_its_own
from tests.processes import clean_environment, free_port, memory_of_tree
from tests.wrk import run_wrk, write_wrk_script

pytestmark = [pytest.mark.model, pytest.mark.pm2, pytest.mark.server]

RELEASE = "test-release-" + uuid.uuid4().hex[:8]
LOAD_SECONDS = 12
WORKERS = 2  # the endpoint notebook's default


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    """A service of this module's own under PM2, told its release id through
    the environment of `make serve`."""
    workspace = tmp_path_factory.mktemp("pm2-metrics")
    with service_of_its_own(trained, workspace, DIABETES_RELEASE=RELEASE) as service:
        service["wrk_script"] = write_wrk_script(workspace / "article.lua", ARTICLE_BODY)
        yield service


def reported(service) -> dict:
    """The service's custom metrics as PM2 holds them: name -> value."""
    return {name: metric["value"] for name, metric in pm2_app(service)["pm2_env"]["axm_monitor"].items()}


def wait_for_report(service, condition, timeout=15) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        figures = reported(service)
        if condition(figures):
            return figures
        assert time.monotonic() < deadline, f"no report met the condition within {timeout} s: {figures}"
        time.sleep(0.3)


def scrape(service) -> dict:
    """/metrics summed over labels, by sample name; the latency buckets by bound."""
    # Each worker keeps its books a few times a second (diabetes/observability.py).
    time.sleep(2 * BOOKKEEPING_SECONDS)
    text = requests.get(service["url"] + "/metrics", timeout=10).text
    sums, buckets = {}, {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
            if sample.name == LATENCY_BUCKET_SAMPLE:
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return {
        "sums": sums,
        "buckets": buckets,
        "model_versions": {
            sample.labels["version"]
            for family in text_string_to_metric_families(text)
            if family.name == "diabetes_model_info"
            for sample in family.samples
        },
    }


def bucket_rank(bounds, seconds: float) -> int:
    """Which latency bucket holds `seconds`: the number of bounds below it."""
    return sum(1 for bound in bounds if bound < seconds)


@pytest.fixture(scope="module")
def load_observed(service):
    """A wrk load of LOAD_SECONDS, with /metrics before and after it and
    PM2's reports read all along: the reports taken once a whole window of
    load lies behind them, and the last one before the load ended."""
    requests.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10).raise_for_status()
    before = scrape(service)
    outcome = {}
    load = threading.Thread(
        target=lambda: outcome.update(run_wrk(service["url"] + ARTICLE_PATH, service["wrk_script"], 16, LOAD_SECONDS))
    )
    started = time.monotonic()
    load.start()
    during = []
    while load.is_alive() and time.monotonic() - started < LOAD_SECONDS + 60:
        # A report whose window holds load only: a report is up to one refresh old, and
        # its window starts at a sample up to one refresh older than the window.
        if WINDOW_SECONDS + 2 * REFRESH_SECONDS + 0.5 < time.monotonic() - started < LOAD_SECONDS - 1:
            master = pm2_app(service)["pid"]
            during.append({"figures": reported(service), "memory_mib": memory_of_tree(master)["total"]})
        time.sleep(0.5)
    load.join(timeout=60)
    after = scrape(service)
    assert outcome, "wrk gave no figures"
    assert sum(outcome["errors"].values()) == 0, outcome["errors"]
    assert during, "no report could be read during the load"
    return {"wrk": outcome, "before": before, "after": after, "during": during}


def test_requests_per_second_under_load_are_what_wrk_sent(load_observed):
    sent_per_second = load_observed["wrk"]["requests_per_second"]
    rates = [report["figures"]["requests/s"] for report in load_observed["during"]]
    median = sorted(rates)[len(rates) // 2]
    assert 0.6 * sent_per_second <= median <= 1.4 * sent_per_second, (rates, sent_per_second)


def test_p99_latency_under_load_falls_in_the_bucket_of_the_metrics_histogram(load_observed):
    before, after = load_observed["before"]["buckets"], load_observed["after"]["buckets"]
    load_buckets = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    from_metrics = quantile_of_buckets(load_buckets, 0.99)
    bounds = sorted(load_buckets)
    for report in load_observed["during"]:
        reported_seconds = report["figures"]["p99 latency"] / 1000
        # The report covers a window of the load, /metrics the whole of it: the same bucket or a neighbour.
        assert abs(bucket_rank(bounds, reported_seconds) - bucket_rank(bounds, from_metrics)) <= 1, (
            reported_seconds,
            from_metrics,
            load_buckets,
        )


def test_every_worker_is_counted_alive_and_the_cpu_of_all_is_reported(load_observed):
    for report in load_observed["during"]:
        figures = report["figures"]
        assert figures["workers alive"] == WORKERS
        assert figures["error rate"] == 0
        # Two workers answering a load use far more than the master alone ever does,
        # and no more than the machine's cores.
        assert 20 <= figures["CPU total"] <= 100 * os.cpu_count() + 10, figures


def test_memory_is_the_pss_of_the_master_and_its_workers(load_observed):
    for report in load_observed["during"]:
        reported_mib, measured_mib = report["figures"]["PSS total"], report["memory_mib"]
        assert 40 <= reported_mib <= 1000, reported_mib
        # Read from /proc a moment apart, while the workers allocate and free.
        assert abs(reported_mib - measured_mib) <= 0.15 * measured_mib, (reported_mib, measured_mib)


def test_requests_answered_and_the_error_rate_agree_with_metrics(service, load_observed):
    time.sleep(WINDOW_SECONDS + 2)  # the load leaves the reports' window
    first = scrape(service)
    good, bad = 12, 8
    with requests.Session() as session:
        for _ in range(good):
            session.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10).raise_for_status()
        for _ in range(bad):
            assert session.post(service["url"] + ARTICLE_PATH, json={"data": "1,2"}, timeout=10).status_code == 400
    second = scrape(service)
    # Each scrape counts itself once it has answered: the second one too, then nothing else comes.
    answered = second["sums"]["diabetes_requests_total"] + 1
    figures = wait_for_report(service, lambda figures: figures["requests"] == answered)
    in_window = answered - first["sums"]["diabetes_requests_total"]
    errors = second["sums"]["diabetes_errors_total"] - first["sums"].get("diabetes_errors_total", 0.0)
    assert errors == bad
    assert figures["error rate"] == round(100 * errors / in_window, 2), (figures, errors, in_window)


def test_the_versions_are_the_served_models_and_the_release_named_at_start(service):
    answered_by = requests.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10).headers["X-Model-Version"]
    figures = wait_for_report(service, lambda figures: figures["model"] != "unknown")
    assert figures["model"] == answered_by == (service["models_dir"] / "current").resolve().name
    assert scrape(service)["model_versions"] == {answered_by}
    assert figures["release"] == RELEASE


def test_pm2_show_lists_the_custom_metrics(service):
    shown = pm2(service, "show", APP_NAME)
    for name in (
        "requests/s",
        "p99 latency",
        "error rate",
        "workers alive",
        "PSS total",
        "CPU total",
        "model",
        "release",
    ):
        assert name in shown


# The master as gunicorn runs it without PM2: the script started directly.


def master_tasks(pid: int) -> int:
    """Threads of the master: 1 for gunicorn alone, 2 with the reporter."""
    return len(os.listdir(f"/proc/{pid}/task"))


def start_master(scripts, trained, port, channel: socket.socket | None = None) -> subprocess.Popen:
    """The endpoint script run directly, as PM2 runs it: it becomes a gunicorn
    master; `channel` stands for PM2's IPC socket."""
    require("server")
    env = clean_environment(DIABETES_PORT=str(port), DIABETES_MODEL_DIR=str(trained["models_dir"] / "latest"))
    env.pop("NODE_CHANNEL_FD", None)
    if channel is not None:
        env["NODE_CHANNEL_FD"] = str(channel.fileno())
    master = subprocess.Popen(
        [str(PROJECT / ".venv/bin/python"), str(scripts / "serve.py")],
        cwd=PROJECT,
        env=env,
        pass_fds=() if channel is None else (channel.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).raise_for_status()
            return master
        except requests.RequestException:
            assert master.poll() is None, f"the master exited with {master.returncode}"
            assert time.monotonic() < deadline, "the master did not serve within 60 s"
            time.sleep(0.2)


def stop_master(master: subprocess.Popen):
    """SIGTERM, as a graceful stop; the whole group is killed if it outstays a bound."""
    if master.poll() is None:
        master.send_signal(signal.SIGTERM)
    try:
        master.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(master.pid, signal.SIGKILL)
        master.wait(timeout=10)
        pytest.fail("the master did not stop within 30 s of SIGTERM")
    finally:
        try:
            os.killpg(master.pid, signal.SIGKILL)  # any worker left behind
        except ProcessLookupError:
            pass


def answer_time(port: int) -> float:
    started = time.monotonic()
    requests.post(f"http://127.0.0.1:{port}{ARTICLE_PATH}", json=ARTICLE_BODY, timeout=10).raise_for_status()
    return time.monotonic() - started


def test_without_pm2_the_master_starts_no_reporter(scripts, trained):
    port = free_port()
    master = start_master(scripts, trained, port)
    try:
        time.sleep(2)  # past a reporter's first refresh, were there one
        assert master_tasks(master.pid) == 1
        assert answer_time(port) < 5
    finally:
        stop_master(master)


def test_a_channel_that_takes_nothing_never_slows_the_master_and_a_closed_one_ends_the_reports(scripts, trained):
    ours, theirs = socket.socketpair()
    # The smallest buffer the kernel allows: a few reports fill it, and no one reads them yet.
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    port = free_port()
    master = start_master(scripts, trained, port, channel=theirs)
    theirs.close()
    try:
        assert master_tasks(master.pid) == 2
        time.sleep(8)  # reports pile up until the buffer is full, and go on being dropped
        assert master_tasks(master.pid) == 2
        assert answer_time(port) < 5
        ours.settimeout(5)
        received = ours.recv(65536)
        lines = received.split(b"\n")
        messages = [json.loads(line) for line in lines[:-1]]
        assert lines[-1] == b"", "a report was cut in the middle"
        assert messages and all(message["type"] == "axm:monitor" for message in messages)
        assert messages[-1]["data"]["workers alive"]["value"] == WORKERS

        ours.close()
        deadline = time.monotonic() + 10
        while master_tasks(master.pid) == 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert master_tasks(master.pid) == 1, "the reporter went on writing to a closed channel"
        assert master.poll() is None
        assert answer_time(port) < 5
    finally:
        ours.close()
        stop_master(master)
    assert master.returncode == 0

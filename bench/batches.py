"""Batches on this service's `/predict`: for each number of rows per request,
a check of the answer, a wrk load, then a few requests one at a time whose
Server-Timing headers split the server's time into its stages."""

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from bench.measure import measure_load, write_wrk_script
from bench.servers import PROJECT, Server, ServerFailed

PREDICT_PATH = "/predict"
ROWS_PER_REQUEST = (1, 100, 1_000, 10_000)
DATA_PATH = PROJECT / "data" / "pima-indians-diabetes.data.csv"
# The service's stages, in the order a request goes through them.
STAGES = ("parse", "validate", "predict", "serialize")
# Enough for a stable median, few enough to take a second at 10,000 rows.
TIMED_REQUESTS = 20


def data_rows() -> list[list]:
    """The data set's 8 feature columns (the 9th is the label), as numbers."""
    def number(text: str):
        return int(text) if text.isdigit() else float(text)

    lines = filter(None, DATA_PATH.read_text().splitlines())
    return [[number(value) for value in line.split(",")[:8]] for line in lines]


@dataclass(frozen=True)
class Batch:
    rows: int
    body: bytes        # {"instances": [[8 numbers], ...]}: the data set's rows, cyclically
    wrk_script: Path


def prepare_batches(workdir: Path) -> list[Batch]:
    data = data_rows()
    batches = []
    for rows in ROWS_PER_REQUEST:
        body = {"instances": [data[index % len(data)] for index in range(rows)]}
        batches.append(Batch(rows, json.dumps(body).encode(),
                             write_wrk_script(workdir / f"predict-{rows}-rows.lua", body)))
    return batches


def post(url: str, body: bytes) -> tuple[dict, str, float]:
    """The JSON answer, its Server-Timing header, and the seconds the client
    waited: from connecting to the last byte of the answer, before decoding it."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = response.read()
            seconds = time.perf_counter() - started
            return json.loads(answer), response.headers.get("Server-Timing", ""), seconds
    except urllib.error.HTTPError as error:
        raise ServerFailed(f"{url} answered {error.code}: {error.read()[:500]!r}") from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
        raise ServerFailed(f"{url} did not answer: {error}") from None


def check_answer(url: str, batch: Batch):
    """Loads only count if they measure real predictions: one per row."""
    answer, _, _ = post(url, batch.body)
    predictions = answer.get("predictions") if isinstance(answer, dict) else None
    if not isinstance(predictions, list) or len(predictions) != batch.rows:
        count = len(predictions) if isinstance(predictions, list) else "no"
        raise ServerFailed(f"{url} answered {count} predictions for {batch.rows} rows")


def stage_milliseconds(server_timing: str) -> dict[str, float]:
    """`parse;dur=0.012, predict;dur=0.3` -> {"parse": 0.012, "predict": 0.3}."""
    stages = {}
    for entry in filter(None, (part.strip() for part in server_timing.split(","))):
        name, *parameters = entry.split(";")
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key.strip() == "dur":
                stages[name.strip()] = float(value)
    return stages


def time_requests(url: str, batch: Batch, count: int) -> dict:
    """The median of each stage the server reports, and of the client's wait, in ms."""
    stages, client = {}, []
    for _ in range(count):
        _, server_timing, seconds = post(url, batch.body)
        client.append(seconds * 1000)
        for name, milliseconds in stage_milliseconds(server_timing).items():
            stages.setdefault(name, []).append(milliseconds)
    return {"server_ms": {name: median(values) for name, values in stages.items()}, "client_ms": median(client)}


def load_batches(service: Server, batches: list[Batch], seconds: int, connections: int, log) -> list[dict]:
    """For each batch size: check, load with wrk, then time requests one by one."""
    url = service.url_of(PREDICT_PATH)
    runs = []
    for batch in batches:
        check_answer(url, batch)
        load = measure_load(url, batch.wrk_script, connections, seconds, service.root_pid, service.supervisor_pid)
        load["rows_per_second"] = load["requests_per_second"] * batch.rows
        load.update(time_requests(url, batch, TIMED_REQUESTS))
        runs.append({"rows": batch.rows, "connections": connections, **load})
        log(f"  {batch.rows:>6} rows per request: {load['requests_per_second']:7.0f} requests/s, "
            f"{load['rows_per_second']:10,.0f} rows/s, p99 {load['p99_ms']:.1f} ms, "
            f"errors {sum(load['errors'].values())}")
    return runs

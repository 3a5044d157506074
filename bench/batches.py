"""Batches: many rows per request, on every route and encoding a server
takes. For each encoding, a check of the answer, then for each number of
rows a wrk load and a few requests one at a time, whose Server-Timing
headers (this service's) split the server's time into its stages.

An encoding a server may not support (V2 binary tensors) is tried once
first: a 4xx answer is reported as "not supported" and that encoding is
skipped on that server."""

import http.client
import time
import urllib.parse
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from statistics import median

from bench.bodies import PREDICT, V2_BINARY, V2_JSON, Body, Encoding, cyclic_rows, data_rows, encode, predictions_in
from bench.measure import measure_load
from bench.servers import Server, ServerFailed
from tests.wrk import write_raw_wrk_script

# Rows per request of each encoding; one row on /predict shows what the route costs with no batch.
ROWS_PER_REQUEST = {PREDICT: (1, 100, 1_000, 10_000), V2_JSON: (100, 1_000, 10_000), V2_BINARY: (100, 1_000, 10_000)}
# The service's stages, in the order a request goes through them.
STAGES = ("parse", "validate", "predict", "serialize")
# Enough for a stable median, few enough to take a second at 10,000 rows.
TIMED_REQUESTS = 20


@dataclass(frozen=True)
class Batch:
    body: Body
    wrk_script: Path

    @property
    def encoding(self) -> Encoding:
        return self.body.encoding

    @property
    def rows(self) -> int:
        return self.body.rows


class Refused(ServerFailed):
    """The server answered a batch with an error status."""

    def __init__(self, url: str, status: int, detail: str):
        detail = " ".join(detail.split())  # one line, for the log and the tables
        super().__init__(f"{url} answered {status}: {detail}")
        self.status, self.detail = status, detail


def prepare_batches(workdir: Path, encodings=tuple(ROWS_PER_REQUEST)) -> list[Batch]:
    data = data_rows()
    batches = []
    for encoding in encodings:
        for rows in ROWS_PER_REQUEST[encoding]:
            body = encode(encoding, cyclic_rows(data, rows))
            script = write_raw_wrk_script(workdir / f"{encoding.key}-{rows}-rows.lua", body.data, body.headers)
            batches.append(Batch(body, script))
    return batches


def post(url: str, body: Body) -> tuple[bytes, dict, float]:
    """The answer's bytes and headers, and the seconds the client waited:
    from connecting to the last byte of the answer, before decoding it.

    With http.client, which sends the body's headers and no others: urllib
    would add a form Content-Type to a body that has none, as a binary V2
    request (tritonclient's) has none."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    started = time.perf_counter()
    try:
        connection.request("POST", parts.path, body=body.data, headers=body.headers)
        response = connection.getresponse()
        answer = response.read()
        seconds = time.perf_counter() - started
    except (OSError, http.client.HTTPException) as error:
        raise ServerFailed(f"{url} did not answer: {error}") from None
    finally:
        connection.close()
    if response.status >= 400:
        raise Refused(url, response.status, answer[:300].decode(errors="replace"))
    return answer, response.headers, seconds


def check_answer(url: str, batch: Batch):
    """Loads only count if they measure real predictions: one per row."""
    answer, headers, _ = post(url, batch.body)
    count = predictions_in(answer, headers)
    if count != batch.rows:
        raise ServerFailed(
            f"{url} answered {'no' if count is None else count} predictions for {batch.rows} rows "
            f"({batch.encoding.label})"
        )


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
        _, headers, seconds = post(url, batch.body)
        client.append(seconds * 1000)
        for name, milliseconds in stage_milliseconds(headers.get("Server-Timing", "")).items():
            stages.setdefault(name, []).append(milliseconds)
    return {"server_ms": {name: median(values) for name, values in stages.items()}, "client_ms": median(client)}


def load_batches(
    server: Server, batches: list[Batch], seconds: int, connections: int, log
) -> tuple[list[dict], list[dict]]:
    """For each encoding then each batch size: check, load with wrk, then
    time requests one by one. Returns the runs, and the encodings the server
    refused (optional ones only: any other refusal fails the benchmark)."""
    runs, refused = [], []
    for encoding, of_encoding in groupby(batches, key=lambda batch: batch.encoding):
        url = server.url_of(encoding.path)
        for batch in of_encoding:
            try:
                check_answer(url, batch)
            except Refused as refusal:
                if not encoding.optional:
                    raise
                refused.append(
                    {"server": server.key, "encoding": encoding.key, "status": refusal.status, "detail": refusal.detail}
                )
                log(f"  {encoding.label}: not supported ({refusal.status}: {refusal.detail[:120]})")
                break
            load = measure_load(
                url, batch.wrk_script, connections, seconds, server.root_pid, server.supervisor_pid, server.edge_pid
            )
            load["rows_per_second"] = load["requests_per_second"] * batch.rows
            load.update(time_requests(url, batch, TIMED_REQUESTS))
            runs.append(
                {"server": server.key, "encoding": encoding.key, "rows": batch.rows, "connections": connections, **load}
            )
            log(
                f"  {encoding.key} {batch.rows:>6} rows per request: {load['requests_per_second']:7.0f} requests/s, "
                f"{load['rows_per_second']:10,.0f} rows/s, p99 {load['p99_ms']:.1f} ms, "
                f"errors {sum(load['errors'].values())}"
            )
    return runs, refused

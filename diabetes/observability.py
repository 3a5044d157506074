"""Watching the service: Prometheus metrics, JSON access logs with a request
id, the time of each stage of a request, and the optional prediction log.

Under gunicorn every worker counts for itself; prometheus-client's
multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set up by gunicorn_config.py)
adds them up when /metrics is scraped.
"""

import json
import logging
import os
import re
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np
from flask import Flask, Response, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest, multiprocess)

disable_created_metrics()
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_PROBABILITY_BINS = np.linspace(0, 1, 11)
_REQUEST_ID = re.compile(r"^[\w.:-]{1,128}$")

REQUESTS = Counter("diabetes_requests_total", "Requests answered, by route, method and status",
                   ["route", "method", "status"])
LATENCY = Histogram("diabetes_request_duration_seconds", "Time to answer a request, by route", ["route"],
                    buckets=_LATENCY_BUCKETS)
STAGES = Histogram("diabetes_request_stage_duration_seconds",
                   "Time spent in each stage of a request (parse, validate, predict, serialize)",
                   ["route", "stage"], buckets=_LATENCY_BUCKETS)
PREDICTIONS = Counter("diabetes_predictions_total",
                      "Rows predicted, by label and by probability bin (lower bound, width 0.1)",
                      ["label", "probability_bin"])
ERRORS = Counter("diabetes_errors_total", "Error answers, by error code", ["code"])
MODEL = Gauge("diabetes_model_info", "The model version being served (value 1)", ["version"],
              multiprocess_mode="liveall")

access_log = logging.getLogger("diabetes.access")


class StageTimer:
    """Time spent in each stage of one request, also sent back in a standard
    Server-Timing header, which browsers' developer tools and `make bench` read."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds = {}

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started

    def header(self) -> str:
        return ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in self.seconds.items())


class PredictionLog:
    """Each prediction request's inputs and outputs, one JSON line per request,
    appended to a file that a later training run can read. Written per request
    in a single write to the file opened for appending, and closed (so flushed)
    at once: a crash of the service loses at most the request in hand, lines
    from several workers never interleave, and the file can be rotated or
    moved away at any time."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def append(self, record: dict):
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")


def record_predictions(rows: np.ndarray, probabilities: np.ndarray, threshold: float):
    """Count the predictions of a request, and log them when a prediction log is set."""
    labels = probabilities >= threshold
    bins = np.minimum((probabilities * 10).astype(int), 9)
    for label in (0, 1):
        counts = np.bincount(bins[labels == label], minlength=10)
        for index in np.flatnonzero(counts):
            PREDICTIONS.labels(str(label), f"{_PROBABILITY_BINS[index]:.1f}").inc(int(counts[index]))
    if g.prediction_log is not None:
        g.prediction_log.append({
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": g.request_id, "model_version": g.model_version, "route": g.route,
            "inputs": np.where(np.isnan(rows), None, rows).tolist(), "probabilities": probabilities.tolist()})


def metrics_response() -> Response:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        from prometheus_client import REGISTRY as registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def watch(app: Flask, model_version: str, prediction_log_path: str = ""):
    """Time, count and log every request of `app`, and serve /metrics."""
    MODEL.labels(model_version).set(1)
    prediction_log = PredictionLog(prediction_log_path) if prediction_log_path else None
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False

    @app.before_request
    def start():
        given = request.headers.get("X-Request-ID", "")
        g.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        g.timer = StageTimer()
        g.model_version = model_version
        g.prediction_log = prediction_log
        g.route = request.url_rule.rule if request.url_rule else "unmatched"

    @app.after_request
    def finish(response):
        timer, route = g.timer, g.route
        seconds = time.perf_counter() - timer.started
        status = response.status_code
        response.headers["X-Request-ID"] = g.request_id
        response.headers["X-Model-Version"] = model_version
        response.headers["Server-Timing"] = timer.header()
        REQUESTS.labels(route, request.method, str(status)).inc()
        LATENCY.labels(route).observe(seconds)
        for stage, stage_seconds in timer.seconds.items():
            STAGES.labels(route, stage).observe(stage_seconds)
        if status >= 400:
            ERRORS.labels(getattr(g, "error_code", "unknown")).inc()
        access_log.info(json.dumps({
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "request_id": g.request_id,
            "method": request.method, "route": route, "path": request.path, "status": status,
            "duration_ms": round(seconds * 1000, 3), "model_version": model_version,
            "remote_addr": request.remote_addr}))
        return response

    @app.get("/metrics")
    def metrics():
        return metrics_response()

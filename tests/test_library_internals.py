"""The names of gunicorn and prometheus-client that the service still
replaces or subclasses, each with the shape it relies on. An upgrade that
renames or reshapes one fails here, by name, before a behaviour test fails
for a reason that is harder to see. Each patch's behaviour is tested too:
tests/test_gevent_worker.py (the worker's), tests/test_hostile.py (gunicorn's
refusals as JSON), tests/test_gathered_metrics.py (the metrics' writes).

Why each patch stays, though the edge (diabetes/edge.py) is in front:
- `util.write_error` (diabetes/serving.write_server_refusal): heads within
  the edge's buffer but over gunicorn's own limits (431, 417, a malformed
  line HAProxy lets through) are still refused by gunicorn, as JSON.
- `wsgi.Response`, `util.http_date`, `message._ip_in_allow_list`,
  `wsgi.WSGIErrorsWrapper`, `Config` lookups (diabetes/gevent_worker.py):
  work gunicorn redoes at every request; the edge changes none of it.
- prometheus-client's `MultiProcessValue` and a histogram's `_sum` and
  `_buckets` (diabetes/gathered_metrics.py, diabetes/observability.py): a
  dozen locked file writes per request become one per value per bookkeeping.
"""

import inspect

from gunicorn import util
from gunicorn.config import Config
from gunicorn.http import message, wsgi
from prometheus_client import Histogram, values
from prometheus_client.registry import CollectorRegistry


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_gunicorns_error_page_writer_takes_the_socket_status_reason_and_message():
    assert parameters(util.write_error) == ["sock", "status_int", "reason", "mesg"]


def test_gunicorns_response_writes_its_head_and_body_through_the_methods_the_worker_overrides():
    for name in ("write", "send_headers", "_emit_body"):
        assert callable(getattr(wsgi.Response, name)), name
    assert parameters(wsgi.Response._emit_body) == ["self", "data"]
    assert parameters(wsgi.Response.write) == ["self", "arg"]


def test_gunicorns_date_peer_check_and_error_stream_are_the_module_names_the_worker_replaces():
    assert parameters(util.http_date) == ["timestamp"]
    assert parameters(message._ip_in_allow_list) == ["ip_str", "allow_list", "networks"]
    assert parameters(wsgi.WSGIErrorsWrapper) == ["cfg"]
    assert isinstance(wsgi.WSGIErrorsWrapper(Config()).streams, list)


def test_gunicorns_settings_are_looked_up_through_a_settings_table_of_getters():
    config = Config()
    assert config.settings["keepalive"].get() == config.keepalive


def test_prometheus_clients_multiprocess_value_class_and_histogram_members_are_where_they_were():
    assert "process_identifier" in parameters(values.MultiProcessValue)
    histogram = Histogram("internals_probe_seconds", "probe", registry=CollectorRegistry())
    assert hasattr(histogram, "_sum") and isinstance(histogram._buckets, list)


def test_gunicorns_async_worker_hands_each_connection_and_request_to_the_methods_the_worker_wraps():
    from gunicorn.workers import base_async, ggevent

    assert parameters(base_async.AsyncWorker.handle) == ["self", "listener", "client", "addr"]
    assert parameters(ggevent.GeventWorker.handle_request) == ["self", "listener_name", "req", "sock", "addr"]
    assert parameters(ggevent.GeventWorker.handle_exit) == ["self", "sig", "frame"]

"""Metric writes gathered in each worker (diabetes/gathered_metrics.py): what is
noted reaches the worker's file once it is written, exactly once, whatever
the threads noting and writing meanwhile."""

import sys
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values

from diabetes.gathered_metrics import gathered_value_class

NOTERS, NOTES = 4, 20_000


@pytest.fixture
def gathered(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    value_class, write_noted = gathered_value_class()
    monkeypatch.setattr(values, "ValueClass", value_class)
    counter = Counter("gathered_test", "noted requests", ["parity"], registry=None)
    histogram = Histogram("gathered_test_seconds", "noted durations", registry=None, buckets=(0.1, 1))

    def scrape(name, **labels):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
        return registry.get_sample_value(name, labels) or 0.0

    return counter, histogram, write_noted, scrape


def test_what_is_noted_is_in_the_file_once_written(gathered):
    counter, histogram, write_noted, scrape = gathered
    counter.labels("even").inc()
    histogram.observe(0.5)
    assert scrape("gathered_test_total", parity="even") == 0
    write_noted()
    assert scrape("gathered_test_total", parity="even") == 1
    assert scrape("gathered_test_seconds_bucket", le="1.0") == 1
    assert scrape("gathered_test_seconds_sum") == 0.5


def test_nothing_is_lost_or_counted_twice_while_threads_note_and_write(gathered):
    counter, histogram, write_noted, scrape = gathered
    stop = threading.Event()
    # Threads take turns as often as the interpreter lets them: a race shows at once.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)

    def note(number):
        child = counter.labels("even" if number % 2 == 0 else "odd")
        for _ in range(NOTES):
            child.inc()
            histogram.observe(0.5)

    def write_meanwhile():
        while not stop.is_set():
            write_noted()

    writers = [threading.Thread(target=write_meanwhile) for _ in range(2)]
    noters = [threading.Thread(target=note, args=(number,)) for number in range(NOTERS)]
    try:
        for thread in writers + noters:
            thread.start()
        for thread in noters:
            thread.join()
        stop.set()
        for thread in writers:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    write_noted()
    assert scrape("gathered_test_total", parity="even") == NOTES * NOTERS / 2
    assert scrape("gathered_test_total", parity="odd") == NOTES * NOTERS / 2
    assert scrape("gathered_test_seconds_count") == NOTES * NOTERS
    assert scrape("gathered_test_seconds_bucket", le="0.1") == 0
    assert scrape("gathered_test_seconds_sum") == 0.5 * NOTES * NOTERS

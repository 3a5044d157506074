"""A gunicorn worker's memory cap: past it, the worker leaves gracefully.

PM2's `max_memory_restart` sees the master only, and the edge bounds what
clients make the workers hold, not what a worker keeps after a batch (a
fragmented heap is not given back). So each worker looks at its own resident
memory at most once per `CHECK_SECONDS`, after a request; past the cap it
stops taking requests, finishes the ones it holds, and exits, and the master
starts a fresh one (gunicorn's graceful exit, as for `max_requests`). The
edge retries nothing here: no request is cut.
"""

import os
import time

CHECK_SECONDS = 1.0
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident set, from /proc/self/statm (its second field, in pages)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


class MemoryCap:
    """Called after each request with the worker; `cap_bytes` 0 means no cap."""

    def __init__(self, cap_bytes: int):
        self.cap_bytes = cap_bytes
        self.next_check = 0.0

    def __call__(self, worker):
        if not self.cap_bytes:
            return
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + CHECK_SECONDS
        resident = resident_bytes()
        if resident > self.cap_bytes and worker.alive:
            worker.log.warning(
                "worker %s holds %d MiB, past its cap of %d MiB: it finishes its requests and is replaced",
                worker.pid,
                resident >> 20,
                self.cap_bytes >> 20,
            )
            # As SIGTERM would: stop taking connections, close the idle ones.
            worker.handle_exit(None, None)

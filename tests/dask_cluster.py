"""A Dask cluster of real processes on 127.0.0.1, started with the
`distributed` package's own command line (`dask scheduler`, `dask worker`),
as the tests and `make bench-train` use it: every wait bounded, every process
stopped (its whole process group: a worker is a nanny and its child).
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.processes import LOCALHOST, free_port, kill_process_group, port_is_open, process_tree

START_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = 20


class ExternalDaskCluster:
    """`with ExternalDaskCluster(workers=2, log_dir=...) as cluster:` ... `cluster.address`."""

    def __init__(self, workers: int = 2, log_dir=None, memory_limit: str = "3GB", dask_command=None):
        self.workers, self.memory_limit = workers, memory_limit
        self.log_dir = Path(log_dir) if log_dir else None
        self.dask = dask_command or str(Path(sys.executable).with_name("dask"))
        self.port = free_port()
        self.address = f"tcp://{LOCALHOST}:{self.port}"
        self.scheduler = None
        self.worker_processes = []

    def _start(self, name, arguments):
        if not self.log_dir:
            return subprocess.Popen(
                [self.dask, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
            )
        with open(self.log_dir / f"{name}.log", "w") as log:  # the child keeps its own copy of the file
            return subprocess.Popen(
                [self.dask, *arguments], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def __enter__(self):
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.scheduler = self._start(
                "scheduler", ["scheduler", "--host", LOCALHOST, "--port", str(self.port), "--no-dashboard"]
            )
            self._wait(lambda: port_is_open(self.port), "the scheduler to listen")
            for number in range(self.workers):
                self.worker_processes.append(
                    self._start(
                        f"worker-{number}",
                        [
                            "worker",
                            self.address,
                            "--host",
                            LOCALHOST,
                            "--nthreads",
                            "1",
                            "--nworkers",
                            "1",
                            "--memory-limit",
                            self.memory_limit,
                            "--no-dashboard",
                            "--name",
                            f"worker-{number}",
                        ],
                    )
                )
            self._wait(lambda: len(self.connected_workers()) == self.workers, f"{self.workers} workers to register")
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _wait(self, condition, what):
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not condition():
            for process in [self.scheduler, *self.worker_processes]:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"a dask process exited ({process.returncode}) while waiting for {what}"
                        + (f"; logs in {self.log_dir}" if self.log_dir else "")
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {START_TIMEOUT_SECONDS} s for {what}")
            time.sleep(0.3)

    def connected_workers(self) -> list[str]:
        """Names of the workers the scheduler holds now, from its log (no client needed)."""
        if not self.log_dir:
            raise RuntimeError("connected_workers reads the scheduler's log: give a log_dir")
        names = {}
        for line in (self.log_dir / "scheduler.log").read_text().splitlines():
            for event, present in (("Register worker addr: ", True), ("Remove worker addr: ", False)):
                if event in line:
                    address, _, rest = line.split(event)[1].partition(" name: ")
                    names[address] = rest.split(" ")[0] if present else None
        return sorted(name for name in names.values() if name)

    def worker_pids(self, number: int) -> list[int]:
        """The `dask worker` process and its children (the nanny's worker process)."""
        return process_tree(self.worker_processes[number].pid)

    def kill_worker(self, number: int):
        """SIGKILL a worker and its nanny: the worker is lost, not restarted."""
        kill_process_group(self.worker_processes[number].pid)
        self.worker_processes[number].wait(timeout=STOP_TIMEOUT_SECONDS)

    def stop(self):
        """SIGTERM every process group, then SIGKILL what is left after STOP_TIMEOUT_SECONDS."""
        processes = [p for p in [*self.worker_processes, self.scheduler] if p is not None]
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_process_group(process.pid)
                process.wait(timeout=5)
            kill_process_group(process.pid)  # a nanny's child that outlived its parent

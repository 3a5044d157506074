"""The container engine as the tests run it (container/engine): podman, with
images and containers in a store of the tests' own, build/container-store
(CONTAINER_STORE): the machine's images are never touched, and the layers
stay cached between runs."""

import fcntl
import subprocess
from contextlib import contextmanager

import pytest

from tests.conftest import PROJECT, require
from tests.processes import clean_environment

ENGINE = PROJECT / "container" / "engine"
STORE = PROJECT / "build" / "container-store"
LOCAL_BASE = "localhost/diabetes-base:bookworm"


def engine_environment(**settings) -> dict:
    return clean_environment(CONTAINER_ENGINE="podman", CONTAINER_STORE=str(STORE), **settings)


def engine(*arguments, check=True, timeout=60) -> subprocess.CompletedProcess:
    require("container")
    result = subprocess.run(
        [str(ENGINE), *arguments], env=engine_environment(), capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"container/engine {' '.join(arguments)} failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@contextmanager
def build_lock():
    """One build at a time in this checkout: `make image` stages its context
    in build/image/, which a concurrent run would rewrite under it."""
    STORE.mkdir(parents=True, exist_ok=True)
    with open(STORE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield

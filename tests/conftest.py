"""Fixtures shared by the tests: the project's own make targets, run as a user
runs them, with every output (models, runs, logs, PM2's state) in a temporary
folder so that the tests never touch the user's service or models."""

import importlib.util
import os
import socket
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
FAST_PARAMS = "params/train.yaml tests/params/fast.yaml"


def clean_environment(**settings) -> dict:
    """The environment of a make run: without what an outer `make test` passes
    down (its variables, the service's DIABETES_* settings), plus `settings`."""
    inherited = {name: value for name, value in os.environ.items()
                 if not name.startswith("DIABETES_")
                 and name not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PM2_HOME", "LOG_DIR")}
    return {**inherited, **settings}


def make(*arguments, env=None, check=True, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run(["make", "--no-print-directory", "-C", str(PROJECT), *arguments],
                            env=env or clean_environment(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"make {' '.join(arguments)} failed ({result.returncode}):\n"
                    f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="session")
def trained(workspace) -> dict:
    """`make train` with the fast parameter set: the make variables that place
    its outputs, and the folder of the models it published."""
    variables = {"MODELS_DIR": str(workspace / "models"), "RUNS_DIR": str(workspace / "runs"),
                 "TRAIN_PARAMS": FAST_PARAMS}
    make("train", *[f"{name}={value}" for name, value in variables.items()])
    return {"variables": variables, "models_dir": workspace / "models"}


@pytest.fixture(scope="session")
def scripts():
    make("scripts")
    return PROJECT / "scripts"


@pytest.fixture(scope="session")
def served_module(scripts, trained):
    """The generated endpoint script, imported as gunicorn's workers import it,
    serving the model the fast training run published."""
    saved = os.environ.get("DIABETES_MODEL_DIR")
    os.environ["DIABETES_MODEL_DIR"] = str(trained["models_dir"] / "current")
    try:
        spec = importlib.util.spec_from_file_location("serve", scripts / "serve.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del os.environ["DIABETES_MODEL_DIR"]
        else:
            os.environ["DIABETES_MODEL_DIR"] = saved
    return module


@pytest.fixture()
def client(served_module):
    return served_module.app.test_client()

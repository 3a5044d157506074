"""Fixtures shared by the tests: the project's own make targets, run as a user
runs them, with every output (models, runs, logs, PM2's state) in a temporary
folder so that the tests never touch the user's service or models.

`tests` is a package, and every test file, helper and bench/ imports its
helpers from it by their full name: `from tests.conftest import make`,
`from tests.processes import free_port` (never `from conftest import ...`).

The tiers: a test says what it needs beyond the project's venv with the
markers of NEEDS (declared in pyproject.toml: `@pytest.mark.model`, or
`pytestmark` for a module). A test that needs none of them is in the fast
tier (marked `fast` here), which `make check` runs. A fixture that trains,
serves or starts something says so with `@needs(...)`, a helper with
`require(...)`: a test that is not marked with what they need fails, so the
fast tier cannot grow slow unseen."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from diabetes.settings import APP_NAME
from tests.calls import Call
from tests.processes import clean_environment, free_port

PROJECT = Path(__file__).resolve().parents[1]
FAST_PARAMS = "params/train.yaml tests/params/fast.yaml"
# What a test may need beyond the venv, one marker each (pyproject.toml says
# what each covers); the fast tier is the tests that need none.
NEEDS = ("model", "pm2", "server", "database", "dask", "container")
FAST = "fast"

# The make targets that train, serve or start something, by what they need.
# `make -q`, which only says whether a target is up to date, runs none.
MAKE_TARGETS_NEEDS = {
    "model": {"train", "scripts", "db", "sweep", "bigdata", "bench-train"},
    "pm2": {"serve", "rollback", "status", "logs", "monit", "postman"},
    "server": {"lab", "bench", "reliability", "mlflow"},
    "container": {"image", "run-image", "base-image", "stack", "stack-status", "stack-down"},
}

# The test being set up or run: whom a fixture of a wider scope is made for.
# (Not while one is torn down: a session's fixtures end after its last test.)
_running_test: pytest.Item | None = None


def needs_of(item: pytest.Item) -> set[str]:
    return {need for need in NEEDS if item.get_closest_marker(need)}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Marks the fast tier before `-m` selects from it."""
    for item in items:
        if not needs_of(item):
            item.add_marker(FAST)
        elif any(mark.name == FAST for mark in item.own_markers):
            raise pytest.UsageError(f"{item.nodeid} is marked fast but needs {', '.join(sorted(needs_of(item)))}")


@contextmanager
def running(item: pytest.Item):
    global _running_test
    _running_test = item
    try:
        yield
    finally:
        _running_test = None


def declared_needs(item: pytest.Item, fixture_name: str) -> tuple[str, ...]:
    """What the fixture of that name that the test gets (its module's, else
    this file's) declares with @needs."""
    fixture = getattr(item.module, fixture_name, None) or globals().get(fixture_name)
    return getattr(fixture, "needs", ())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    with running(item):
        # Before any fixture runs: a refusal must not be cached as the failure
        # of a session's fixture, which later tests request too.
        wanted = {need for fixture_name in item.fixturenames for need in declared_needs(item, fixture_name)}
        if wanted:
            require(*sorted(wanted, key=NEEDS.index))
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    with running(item):
        return (yield)


def require(*wanted: str):
    """Fails the running test unless it is marked with each of `wanted`: the
    helper that calls this trains a model, runs PM2, starts a server...,
    which no test of the fast tier may."""
    if _running_test is None:
        return  # a teardown, or no test at all (bench/ uses the helpers too)
    missing = [f"@pytest.mark.{need}" for need in wanted if need not in needs_of(_running_test)]
    if missing:
        pytest.fail(f"{_running_test.nodeid} must be marked {' and '.join(missing)}: it needs it", pytrace=False)


def needs(*wanted: str):
    """Declares what a fixture needs, under its @pytest.fixture: a test that
    requests it (itself or through other fixtures) must be marked with each."""

    def declare(fixture_function):
        fixture_function.needs = wanted
        return fixture_function

    return declare


def make(*arguments, env=None, check=True, timeout=300, project=PROJECT) -> subprocess.CompletedProcess:
    """A make target, as a user runs it."""
    if "-q" not in arguments:
        require(*(need for need, targets in MAKE_TARGETS_NEEDS.items() if targets & set(arguments)))
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(project), *arguments],
        env=env or clean_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"make {' '.join(arguments)} failed ({result.returncode}):\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="session")
@needs("model")
def trained(workspace) -> dict:
    """`make train` with the fast parameter set: the make variables that place
    its outputs (the generated scripts too, and the releases beside the
    models), and the folder of the models it published."""
    variables = {
        "MODELS_DIR": str(workspace / "models"),
        "RUNS_DIR": str(workspace / "runs"),
        "SCRIPTS_DIR": str(workspace / "scripts"),
        "TRAIN_PARAMS": FAST_PARAMS,
    }
    make("train", *[f"{name}={value}" for name, value in variables.items()])
    return {"variables": variables, "models_dir": workspace / "models"}


@pytest.fixture(scope="session")
@needs("model")
def scripts(workspace):
    """`make scripts` into the tests' own folder: the project's scripts/ may be
    what a running service was built from."""
    make("scripts", f"SCRIPTS_DIR={workspace / 'scripts'}")
    return workspace / "scripts"


@pytest.fixture(scope="session")
def served_module(scripts, trained):
    """The generated endpoint script, imported as gunicorn's workers import it,
    serving the model the fast training run published."""
    saved = os.environ.get("DIABETES_MODEL_DIR")
    os.environ["DIABETES_MODEL_DIR"] = str(trained["models_dir"] / "latest")
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


class Target:
    """Where the tests send a call: the app in process, or the PM2-served service."""

    def __init__(self, send, version, limits):
        self.send, self.version, self.limits = send, version, limits

    def call(self, call: Call):
        headers = {"Content-Type": call.content_type} if call.content_type else {}
        headers.update(call.headers)
        body = call.body(self.limits["max_batch_rows"], self.limits["max_request_bytes"])
        return self.send(call.method, call.path.format(version=self.version), body, headers)


@pytest.fixture(scope="session")
def limits():
    from diabetes.settings import notebook_defaults

    return notebook_defaults()


@pytest.fixture(scope="session")
def in_process(served_module, limits) -> Target:
    client = served_module.app.test_client()

    def send(method, path, body, headers):
        with client.open(path, method=method, data=body, headers=headers) as response:
            return response.status_code, response.headers, response.get_data()

    return Target(send, served_module.bundle.version, limits)


@pytest.fixture(scope="session")
@needs("pm2")
def service(workspace, trained):
    """`make serve` in a PM2 home of the tests' own, on a free port. On the
    way out, `make stop` must leave no PM2 daemon and no server behind."""
    port = free_port()
    variables = [
        *[f"{name}={value}" for name, value in trained["variables"].items()],
        f"PM2_HOME={workspace / 'pm2'}",
        f"LOG_DIR={workspace / 'logs'}",
    ]
    env = clean_environment(DIABETES_PORT=str(port))
    service = {
        "url": f"http://127.0.0.1:{port}",
        "port": port,
        "variables": variables,
        "env": env,
        "pm2_home": workspace / "pm2",
        "models_dir": trained["models_dir"],
        "releases_dir": workspace / "releases",
    }
    try:
        make("serve", *variables, env=env)
        yield service
    finally:
        daemon_pid = workspace / "pm2" / "pm2.pid"
        daemon = int(daemon_pid.read_text()) if daemon_pid.exists() else None
        make("stop", *variables, env=env, check=False)
        deadline = time.monotonic() + 30
        while daemon and Path(f"/proc/{daemon}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not (daemon and Path(f"/proc/{daemon}").exists()), "make stop left the PM2 daemon running"
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


@contextmanager
def service_of_its_own(trained, workspace: Path, **settings):
    """`make serve` for a test module that deploys, kills or configures its
    service: a copy of the fast run's models, its own PM2 home, logs, scripts
    and port, `settings` in the environment of `make serve`; `make stop` on
    the way out."""
    require("model", "pm2")
    models_dir = workspace / "models"
    shutil.copytree(trained["models_dir"], models_dir, symlinks=True)
    port = free_port()
    variables = [
        f"MODELS_DIR={models_dir}",
        f"RUNS_DIR={workspace / 'runs'}",
        f"TRAIN_PARAMS={FAST_PARAMS}",
        f"PM2_HOME={workspace / 'pm2'}",
        f"LOG_DIR={workspace / 'logs'}",
        f"SCRIPTS_DIR={workspace / 'scripts'}",
    ]
    env = clean_environment(DIABETES_PORT=str(port), **settings)
    service = {
        "url": f"http://127.0.0.1:{port}",
        "port": port,
        "variables": variables,
        "env": env,
        "workspace": workspace,
        "pm2_home": workspace / "pm2",
        "models_dir": models_dir,
    }
    try:
        make("serve", *variables, env=env)
        yield service
    finally:
        make("stop", *variables, env=env, check=False)


def pm2(service, *arguments) -> str:
    """A pm2 command in the service's own PM2 home; its output."""
    return subprocess.run(
        [str(PROJECT / "node_modules/.bin/pm2"), *arguments],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={**service["env"], "PM2_HOME": str(service["pm2_home"])},
    ).stdout


def pm2_app(service) -> dict:
    """The service's app as `pm2 jlist` describes it."""
    [app] = [app for app in json.loads(pm2(service, "jlist")) if app["name"] == APP_NAME]
    return app


@pytest.fixture(scope="session")
def over_http(service, limits) -> Target:
    session = requests.Session()
    version = (service["models_dir"] / "current").resolve().name

    def send(method, path, body, headers):
        response = session.request(method, service["url"] + path, data=body, headers=headers, timeout=30)
        return response.status_code, response.headers, response.content

    yield Target(send, version, limits)
    session.close()


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("in_process", marks=pytest.mark.model),
        pytest.param("over_http", marks=[pytest.mark.model, pytest.mark.pm2]),
    ],
)
def target(request) -> Target:
    return request.getfixturevalue(request.param)


def json_of(body: bytes):
    return json.loads(body)

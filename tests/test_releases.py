"""Releases: what runs is what `make serve` built and checked, and nothing else.

The service here runs from a copy of the project in a temporary folder (its
own notebooks, package, models, releases, PM2 home and port), so that the
tests can edit the notebook and the package as a user would, without touching
the project. The copy shares the project's venv and node_modules.
"""

import json
import shutil
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import requests

from diabetes import versions
from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from tests.conftest import PROJECT, make, pm2_app
from tests.processes import clean_environment, free_port, process_tree
from tests.wrk import run_wrk, write_wrk_script

pytestmark = [pytest.mark.model, pytest.mark.pm2]

LEFT_OUT_OF_THE_COPY = shutil.ignore_patterns(
    ".git",
    ".venv",
    "node_modules",
    "build",
    "scripts",
    "__pycache__",
    ".pytest_cache",
    "*.egg-info",
    ".ipynb_checkpoints",
)
MARKER_HEADER = "X-Package-Edit"
LOAD_THREADS = 4


def package_edit(marker: str) -> str:
    """Code that, appended to a module every worker imports, adds a header to every answer."""
    return f'''

import flask as _flask

_process_response = _flask.Flask.process_response


def _process_response_marked(self, response):
    response = _process_response(self, response)
    response.headers["{MARKER_HEADER}"] = "{marker}"
    return response


_flask.Flask.process_response = _process_response_marked
'''


@pytest.fixture(scope="module")
def copy(trained, tmp_path_factory):
    """A copy of the project with a model version of the fast training run,
    served under PM2 by its own `make serve`."""
    workspace = tmp_path_factory.mktemp("releases")
    project = workspace / "project"
    shutil.copytree(PROJECT, project, ignore=LEFT_OUT_OF_THE_COPY)
    (project / ".venv").symlink_to(PROJECT / ".venv")
    (project / "node_modules").symlink_to(PROJECT / "node_modules")
    shutil.copytree(trained["models_dir"], workspace / "models", symlinks=True)
    port = free_port()
    service = {
        "project": project,
        "url": f"http://127.0.0.1:{port}",
        "port": port,
        "models_dir": workspace / "models",
        "releases_dir": workspace / "releases",
        "pm2_home": workspace / "pm2",
        "workspace": workspace,
        "env": clean_environment(DIABETES_PORT=str(port)),
        "variables": [
            f"MODELS_DIR={workspace / 'models'}",
            f"RUNS_DIR={workspace / 'runs'}",
            f"PM2_HOME={workspace / 'pm2'}",
            f"LOG_DIR={workspace / 'logs'}",
        ],
        "sources": {path: (project / path).read_bytes() for path in ("notebooks/serve.ipynb", "diabetes/serving.py")},
    }
    try:
        make_in(service, "serve")
        yield service
    finally:
        make_in(service, "stop", check=False)
        versions.make_writable(service["releases_dir"])


@pytest.fixture()
def service(copy):
    """The copy's service, with the copy's notebook and package restored as they were after each test."""
    yield copy
    for path, content in copy["sources"].items():
        (copy["project"] / path).write_bytes(content)


def make_in(service, *arguments, check=True, timeout=300):
    return make(
        *arguments, *service["variables"], env=service["env"], check=check, timeout=timeout, project=service["project"]
    )


def workers(master: int) -> list[int]:
    return process_tree(master)[1:]


def answer(session, service) -> tuple:
    """What the service answers to the article's request: all a client can tell apart."""
    response = session.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10)
    return (
        response.status_code,
        response.json().get("prediction"),
        response.headers.get("X-Model-Version"),
        response.headers.get(MARKER_HEADER),
    )


def edit_without_make_serve(service, marker: str):
    """Edit the package and the endpoint notebook as a user would, and convert the notebook."""
    serving = service["project"] / "diabetes" / "serving.py"
    serving.write_text(serving.read_text() + package_edit(marker))
    notebook_path = service["project"] / "notebooks" / "serve.ipynb"
    notebook = json.loads(notebook_path.read_text())
    # Before the last cell, which starts the server: a worker importing this script fails to boot.
    notebook["cells"].insert(
        len(notebook["cells"]) - 1,
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "unchecked-edit",
            "metadata": {},
            "outputs": [],
            "source": ['raise RuntimeError("an edit that make serve never checked")'],
        },
    )
    notebook_path.write_text(json.dumps(notebook, indent=1))
    make_in(service, "scripts")
    assert "an edit that make serve never checked" in (service["project"] / "scripts" / "serve.py").read_text()


class Load:
    """Threads that send the article's request over keep-alive connections and
    keep every answer, with when it came, and every request that got none."""

    def __init__(self, service):
        self.service, self.answers, self.failures = service, [], []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run) for _ in range(LOAD_THREADS)]

    def run(self):
        with requests.Session() as session:
            while not self.stopping.is_set():
                try:
                    self.answers.append((time.monotonic(), answer(session, self.service)))
                except (requests.RequestException, ValueError) as error:
                    self.failures.append(repr(error))

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in self.threads)


def test_an_edited_notebook_and_package_change_no_answer_when_every_worker_restarts(service):
    marker = uuid.uuid4().hex
    with requests.Session() as session:
        before = answer(session, service)
    assert before[0] == 200 and before[3] is None
    app = pm2_app(service)
    master, restarts = app["pid"], app["pm2_env"]["restart_time"]
    edit_without_make_serve(service, marker)

    with Load(service) as load:
        time.sleep(1)
        # Every worker killed: each replacement imports the script and the
        # package afresh, as after a crash or a timeout, and every answer
        # after that comes from one of them.
        victims = workers(master)
        subprocess.run(["kill", "-KILL", *map(str, victims)], check=True)
        deadline = time.monotonic() + 30
        while (set(victims) & set(workers(master)) or len(workers(master)) < 2) and time.monotonic() < deadline:
            time.sleep(0.05)
        replacements = workers(master)
        assert not set(victims) & set(replacements) and len(replacements) == 2, "the workers were not replaced"
        replaced_at = time.monotonic()
        deadline = replaced_at + 60
        while sum(when > replaced_at for when, _ in load.answers) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)

    changed = [found for _, found in load.answers if found != before]
    after_replacement = [found for when, found in load.answers if when > replaced_at]
    assert changed == [], f"{len(changed)} answers changed, e.g. {changed[:3]}"
    assert len(after_replacement) >= 20, f"{len(after_replacement)} answers from the new workers: too few to tell"
    # Only requests in flight on a killed worker's connections may be lost.
    assert len(load.failures) <= 2 * LOAD_THREADS, load.failures[:5]
    app = pm2_app(service)
    assert app["pid"] == master and app["pm2_env"]["restart_time"] == restarts

    # The edits are refused by make serve, which checks them, and the service keeps its release.
    served = versions.current_release(service["releases_dir"])
    refused = make_in(service, "serve", check=False)
    assert refused.returncode != 0
    assert "an edit that make serve never checked" in refused.stdout + refused.stderr
    assert versions.current_release(service["releases_dir"]) == served
    with requests.Session() as session:
        assert answer(session, service) == before

    # Without the failing cell, make serve releases the package edit: the check above could have seen it.
    (service["project"] / "notebooks" / "serve.ipynb").write_bytes(service["sources"]["notebooks/serve.ipynb"])
    make_in(service, "serve")
    with requests.Session() as session:
        assert answer(session, service)[3] == marker
    assert versions.current_release(service["releases_dir"]) != served


def new_model_version(service) -> str:
    """The latest model again, as a version of another name: `make serve`
    releases it as a new model version (its file, and so its sha256, unchanged)."""
    models_dir = service["models_dir"]
    source = (models_dir / "latest").resolve()
    version = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, models_dir / version)
    metadata = json.loads((models_dir / version / "metadata.json").read_text())
    (models_dir / version / "metadata.json").write_text(json.dumps({**metadata, "version": version}))
    (models_dir / ".latest.next").unlink(missing_ok=True)
    (models_dir / ".latest.next").symlink_to(version)
    (models_dir / ".latest.next").rename(models_dir / "latest")
    return version


def test_make_rollback_restores_the_previous_releases_code_and_model_together_under_load(service):
    with requests.Session() as session:
        previous = answer(session, service)
    previous_release = versions.current_release(service["releases_dir"])
    marker = uuid.uuid4().hex
    serving = service["project"] / "diabetes" / "serving.py"
    serving.write_text(serving.read_text() + package_edit(marker))
    version = new_model_version(service)
    make_in(service, "serve")
    new_release = versions.current_release(service["releases_dir"])
    with requests.Session() as session:
        released = answer(session, service)
    assert released[2] == version and released[3] == marker and new_release != previous_release

    load_seconds = 6
    script = write_wrk_script(service["workspace"] / "article.lua", ARTICLE_BODY)
    outcome = {}
    wrk = threading.Thread(
        target=lambda: outcome.update(run_wrk(service["url"] + ARTICLE_PATH, script, 16, load_seconds))
    )
    wrk.start()
    time.sleep(1)
    result = make_in(service, "rollback")
    wrk.join(timeout=load_seconds + 60)

    assert f"serving release {previous_release}" in result.stdout
    assert versions.current_release(service["releases_dir"]) == previous_release
    assert (service["models_dir"] / "current").resolve().name == previous[2]
    with requests.Session() as session:
        assert answer(session, service) == previous
    assert outcome["requests"] > 0 and sum(outcome["errors"].values()) == 0, outcome["errors"]

    listing = make_in(service, "releases").stdout.splitlines()
    [current_line] = [line for line in listing if line.startswith("*")]
    assert previous_release in current_line and previous[2] in current_line
    assert any(new_release in line and version in line for line in listing)


def test_a_release_changed_after_it_was_sealed_is_refused_by_a_rollback(service, tmp_path):
    """In a folder of two releases: a later one served, and the one before it changed in place."""
    served = versions.current_release(service["releases_dir"])
    releases_dir = tmp_path / "releases"
    releases_dir.mkdir()
    shutil.copytree(service["releases_dir"] / served, releases_dir / served)
    later = "29990101T000000Z-1a7e4000"
    shutil.copytree(releases_dir / served, releases_dir / later)
    versions.serve(releases_dir, later)
    versions.make_writable(releases_dir / served)
    script = releases_dir / served / "serve.py"
    script.write_text(script.read_text() + "\n# changed in place\n")
    assert versions.main(["releases", "rollback", str(releases_dir)]) == 1
    assert versions.current_release(releases_dir) == later
    assert versions.problems(releases_dir, served) == ["serve.py: changed (its sha256 differs from the manifest's)"]


def test_a_release_manifest_names_every_file_its_commit_model_and_checks(service):
    release = versions.current_release(service["releases_dir"])
    folder = service["releases_dir"] / release
    manifest = versions.read_manifest(service["releases_dir"], release)
    on_disk = {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and path.name != "manifest.json"
    }
    assert set(manifest["files"]) == on_disk
    assert manifest["links"] == {} and not any(path.is_symlink() for path in folder.rglob("*"))
    assert {"serve.py", "serve.ipynb", "settings.json", "model/model.ubj", "package/diabetes/serving.py"} <= on_disk
    # Of its model version, what serving needs: the model and its card, none of the training rows.
    assert {name for name in on_disk if name.startswith("model/")} == {"model/model.ubj", "model/metadata.json"}
    assert manifest["model_version"] == json.loads((folder / "model" / "metadata.json").read_text())["version"]
    assert "endpoint notebook under papermill" in manifest["checks_passed"]
    assert "sample prediction as recorded" in manifest["checks_passed"]
    # The copy is no git checkout: the manifest says so rather than guess.
    assert manifest["commit"] is None and manifest["dirty"] is None
    assert json.loads((folder / "settings.json").read_text())["port"] == service["port"]
    modes = {path: path.stat().st_mode for path in [folder, *folder.rglob("*")]}
    assert not [path for path, mode in modes.items() if mode & 0o222], "a release is read-only"
    assert not [path for path, mode in modes.items() if mode & 0o077], "a release is its owner's alone"
    assert versions.problems(service["releases_dir"], release) == []

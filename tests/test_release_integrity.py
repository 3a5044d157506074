"""A release is what its manifest says, every time it is used: tried as an
attacker with the release owner's rights would (write access to a folder of
the release, a plant, the folder read-only again), against the real files and
against a PM2-served service of this module's own (`make serve`, twice: two
releases).

The plants: a link to a folder of the attacker's own that holds a
`sitecustomize.py` (and an `__init__.py`), and an extra file, each named so
that the interpreter or a worker would run it: `package/sitecustomize` runs
at the start of any interpreter whose PYTHONPATH names the release's package
(as PM2 starts the service's script), `package/flask` and `package/flask.py`
in a worker, which imports flask after it starts. The plant writes a marker
file when it runs; each test shows that it would run (an interpreter or an
import as a worker does it, after the service part) and that the service
never ran it."""

import json
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from diabetes import serving, versions
from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.settings import APP_NAME
from tests.conftest import PROJECT, make, pm2, pm2_app, service_of_its_own
from tests.processes import process_tree, wait_until
from tests.wrk import run_wrk, write_wrk_script

pytestmark = [pytest.mark.model, pytest.mark.pm2]

PYTHON = str(PROJECT / ".venv" / "bin" / "python")
# The plants that run at an interpreter's start, and in a worker.
AT_INTERPRETER_START = {"link": "package/sitecustomize", "file": "package/sitecustomize.py"}
IN_A_WORKER = {"link": "package/flask", "file": "package/flask.py"}
# The log of gunicorn (master and workers) under PM2.
ERROR_LOG = f"{APP_NAME}.error.log"


# ---- the attacker ------------------------------------------------------------------


def attacker_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of the attacker's own, holding code that writes a marker
    file when it runs (as a package and as a sitecustomize module), and the
    marker's path."""
    own = tmp_path / f"own-{uuid.uuid4().hex[:8]}"
    own.mkdir()
    marker = tmp_path / f"{own.name}.ran"
    code = f"open({str(marker)!r}, 'w').write('planted code ran')\n"
    (own / "__init__.py").write_text(code)
    (own / "sitecustomize.py").write_text(code)
    return own, marker


def writable_folder(folder: Path):
    folder.chmod(folder.stat().st_mode | stat.S_IWUSR)


def read_only_folder(folder: Path):
    folder.chmod(folder.stat().st_mode & ~0o222)


def plant(release_dir: Path, name: str, kind: str, own: Path) -> Path:
    """A link to `own`, or a file holding its code, at `name` in the release."""
    path = release_dir / name
    writable_folder(path.parent)
    try:
        if kind == "link":
            path.symlink_to(own, target_is_directory=True)
        else:
            path.write_text((own / "__init__.py").read_text())
    finally:
        read_only_folder(path.parent)
    return path


def unplant(path: Path):
    writable_folder(path.parent)
    try:
        path.unlink()
    finally:
        read_only_folder(path.parent)


def interpreter_started_on(release_dir: Path):
    """An interpreter started as PM2 starts the service's script: the release's package on PYTHONPATH."""
    subprocess.run(
        [PYTHON, "-c", "pass"], env={**os.environ, "PYTHONPATH": str(release_dir / "package")}, check=True, timeout=60
    )


def imported_as_a_worker_would(release_dir: Path, module: str):
    """`module` imported with the workers' path: the release's package, then its folder, first."""
    path = [str(release_dir / "package"), str(release_dir)]
    subprocess.run([PYTHON, "-c", f"import sys; sys.path[:0] = {path!r}; import {module}"], timeout=60)


# ---- the real files, no service ----------------------------------------------------


@pytest.fixture(scope="module")
def sealed(trained, scripts, tmp_path_factory) -> dict:
    """Two releases sealed under a umask that lets everyone read and write
    (0000): an older one, then widened as releases sealed before were
    (files 0444, folders 0555), and a newer one."""
    releases_dir = tmp_path_factory.mktemp("sealed") / "releases"

    def stage_and_seal() -> str:
        versions.stage(
            releases_dir,
            scripts / "serve.py",
            PROJECT / "notebooks" / "serve.ipynb",
            PROJECT / "diabetes",
            trained["models_dir"] / "latest",
        )
        return versions.seal(releases_dir, ["none"])

    umask = os.umask(0)
    try:
        older = stage_and_seal()
        for path in versions.entries_of(releases_dir / older):
            path.chmod(0o555 if path.is_dir() else 0o444)
        time.sleep(1.1)  # another id
        newer = stage_and_seal()
    finally:
        os.umask(umask)
    yield {"releases_dir": releases_dir, "older": older, "newer": newer}
    versions.make_writable(releases_dir)


@pytest.fixture()
def damaged(sealed, tmp_path) -> Path:
    """A writable copy of the newer release, to damage."""
    copy = tmp_path / "releases" / sealed["newer"]
    shutil.copytree(sealed["releases_dir"] / sealed["newer"], copy, symlinks=True)
    versions.make_writable(copy)
    return copy


def modes_of(folder: Path) -> dict[str, int]:
    return {
        path.relative_to(folder).as_posix() or ".": stat.S_IMODE(path.lstat().st_mode)
        for path in [folder, *folder.rglob("*")]
    }


def test_a_sealed_release_is_read_only_and_its_owners_alone_whatever_the_umask(sealed):
    for release in (sealed["older"], sealed["newer"]):
        folder = sealed["releases_dir"] / release
        modes = modes_of(folder)
        wrong = {
            name: oct(mode) for name, mode in modes.items() if mode != (0o500 if (folder / name).is_dir() else 0o400)
        }
        assert wrong == {}, f"release {release}: {wrong}"


def test_a_release_carries_what_serving_needs_of_its_model_and_no_training_rows(sealed, trained):
    folder = sealed["releases_dir"] / sealed["newer"]
    version = (trained["models_dir"] / "latest").resolve()
    assert {path.name for path in (folder / "model").iterdir()} == {"metadata.json", "model.ubj"}
    # What the model version keeps besides: its rows, predictions and executed notebook.
    assert {"data.csv", "predictions.csv"} <= {path.name for path in version.iterdir()}
    assert versions.training_record(folder) == []
    assert (folder / "model" / "metadata.json").read_bytes() == (version / "metadata.json").read_bytes()


def test_a_manifest_lists_every_file_and_link_of_its_release(sealed):
    folder = sealed["releases_dir"] / sealed["newer"]
    manifest = json.loads((folder / "manifest.json").read_text())
    files, links, folders, others = serving.release_entries(str(folder))
    assert manifest["format"] == 2
    assert manifest["files"] == files and manifest["links"] == links == {} and others == []
    assert {"serve.py", "settings.json", "model/model.ubj", "package/diabetes/serving.py"} <= set(files)
    assert serving.release_problems(str(folder)) == []


def damage_cases(tmp_path: Path):
    """Each damage, done to a release folder, and a piece of what the check must say of it."""
    own, _ = attacker_folder(tmp_path)
    outside_copy = tmp_path / "model.ubj"

    def file_replaced_by_a_link_to_the_same_bytes(folder):
        shutil.copy(folder / "model" / "model.ubj", outside_copy)
        (folder / "model" / "model.ubj").unlink()
        (folder / "model" / "model.ubj").symlink_to(outside_copy)

    def manifest_replaced_by_a_link(folder):
        shutil.copy(folder / "manifest.json", tmp_path / "manifest.json")
        (folder / "manifest.json").unlink()
        (folder / "manifest.json").symlink_to(tmp_path / "manifest.json")

    return {
        "a link to a folder of one's own": (
            lambda folder: (folder / "package" / "sitecustomize").symlink_to(own),
            "package/sitecustomize -> ",
        ),
        "an unlisted link inside the release": (
            lambda folder: (folder / "package" / "alias").symlink_to("diabetes"),
            "package/alias -> diabetes: a link its manifest does not list",
        ),
        "a file replaced by a link to the same bytes": (
            file_replaced_by_a_link_to_the_same_bytes,
            "model/model.ubj: missing (a link in its place)",
        ),
        "an extra file in the package": (
            lambda folder: (folder / "package" / "flask.py").write_text("raise SystemExit\n"),
            "package/flask.py: a file its manifest does not list",
        ),
        "an extra file beside the model": (
            lambda folder: (folder / "model" / "data.csv").write_text("6,148,72,35,0,33.6,0.627,50,1\n"),
            "model/data.csv: a file its manifest does not list",
        ),
        "a changed file": (
            lambda folder: (folder / "serve.py").write_text((folder / "serve.py").read_text() + "\n"),
            "serve.py: changed",
        ),
        "a missing file": (lambda folder: (folder / "settings.json").unlink(), "settings.json: missing"),
        "an empty folder": (lambda folder: (folder / "package" / "numpy").mkdir(), "package/numpy/: a folder"),
        "a pipe": (lambda folder: os.mkfifo(folder / "package" / "pipe"), "package/pipe: neither a file"),
        "the manifest replaced by a link": (manifest_replaced_by_a_link, "cannot be checked"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "a link to a folder of one's own",
        "an unlisted link inside the release",
        "a file replaced by a link to the same bytes",
        "an extra file in the package",
        "an extra file beside the model",
        "a changed file",
        "a missing file",
        "an empty folder",
        "a pipe",
        "the manifest replaced by a link",
    ],
)
def test_every_damage_to_a_release_is_found_and_refused(damaged, tmp_path, monkeypatch, case):
    def became_gunicorn(*arguments):
        raise AssertionError("the script would have become gunicorn's master")

    monkeypatch.setattr(os, "execve", became_gunicorn)
    damage, said = damage_cases(tmp_path)[case]
    assert serving.release_problems(str(damaged)) == []
    damage(damaged)
    problems = serving.release_problems(str(damaged))
    assert any(said in problem for problem in problems), problems
    with pytest.raises(versions.Refused, match="does not match its manifest"):
        versions.check_release(damaged.parent, damaged.name)
    # The script refuses to become gunicorn's master.
    with pytest.raises(SystemExit, match="refused to start: release .* does not match its manifest"):
        serving.exec_gunicorn(str(damaged / "serve.py"), "app", "127.0.0.1", 0, 1)


def test_a_release_sealed_before_links_were_recorded_is_checked_as_holding_none(damaged, tmp_path):
    manifest = json.loads((damaged / "manifest.json").read_text())
    del manifest["format"], manifest["links"]
    (damaged / "manifest.json").write_text(json.dumps(manifest, indent=2))
    assert serving.release_problems(str(damaged)) == []
    listing, refused = versions.describe_releases(damaged.parent)
    assert refused == [] and "sealed before manifests listed links" in listing

    own, _ = attacker_folder(tmp_path)
    (damaged / "package" / "sitecustomize").symlink_to(own)
    [problem] = serving.release_problems(str(damaged))
    assert "a link its manifest does not list (sealed before links were recorded" in problem
    assert "leading out of the release" in problem
    listing, refused = versions.describe_releases(damaged.parent)
    assert refused == [damaged.name] and "REFUSED, does not match its manifest: package/sitecustomize" in listing


def test_a_manifest_of_an_unknown_format_or_of_another_release_is_refused(damaged):
    manifest = json.loads((damaged / "manifest.json").read_text())
    (damaged / "manifest.json").write_text(json.dumps({**manifest, "format": 3}))
    assert serving.release_problems(str(damaged)) == ["manifest.json is in format 3, which this check does not read"]
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    renamed = damaged.parent / "20990101T000000Z-00000000"
    damaged.rename(renamed)
    problems = serving.release_problems(str(renamed))
    assert any(f"says release {damaged.name!r}, in folder {renamed.name}" in problem for problem in problems)
    assert any("not the content its id was made from" in problem for problem in problems)


def test_the_launcher_checks_a_release_before_any_of_it_runs(damaged, tmp_path):
    """`python -I <release>/package/diabetes/serving.py exec <release> PROGRAM...`,
    the way ecosystem.config.js can start the service: with the link to a
    folder holding a sitecustomize on the package path, nothing of it runs."""
    own, marker = attacker_folder(tmp_path)
    launcher = [PYTHON, "-I", str(damaged / "package" / "diabetes" / "serving.py"), "exec", str(damaged)]
    environment = {**os.environ, "PYTHONPATH": str(damaged / "package")}
    started = subprocess.run([*launcher, "/bin/echo", "started"], env=environment, capture_output=True, text=True)
    assert started.returncode == 0 and started.stdout == "started\n", started.stderr
    plant(damaged, AT_INTERPRETER_START["link"], "link", own)
    refused = subprocess.run([*launcher, "/bin/echo", "started"], env=environment, capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stdout == ""
    assert f"refused to start: release {damaged.name} does not match its manifest: package/sitecustomize" in (
        refused.stderr
    )
    assert not marker.exists()
    interpreter_started_on(damaged)
    assert marker.exists(), "the plant would have run at the interpreter's start"


# ---- the PM2-served service ---------------------------------------------------------


def make_in(service, *arguments, check=True, timeout=600):
    return make(*arguments, *service["variables"], env=service["env"], check=check, timeout=timeout)


def new_model_version(models_dir: Path) -> str:
    """The latest model again, under another version name: `make serve` releases it anew."""
    source = (models_dir / "latest").resolve()
    version = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, models_dir / version)
    metadata = json.loads((models_dir / version / "metadata.json").read_text())
    (models_dir / version / "metadata.json").write_text(json.dumps({**metadata, "version": version}))
    (models_dir / ".latest.next").unlink(missing_ok=True)
    (models_dir / ".latest.next").symlink_to(version)
    (models_dir / ".latest.next").rename(models_dir / "latest")
    return version


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory):
    """`make serve` twice: two releases, the second one served."""
    workspace = tmp_path_factory.mktemp("integrity")
    with service_of_its_own(trained, workspace) as service:
        service["releases_dir"] = workspace / "releases"
        service["log"] = workspace / "logs" / ERROR_LOG
        new_model_version(service["models_dir"])
        make_in(service, "serve")
        assert len(versions.releases(service["releases_dir"])) == 2
        yield service
    versions.make_writable(service["releases_dir"])


def answer(service) -> tuple:
    response = requests.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=10)
    return response.status_code, response.json().get("prediction"), response.headers.get("X-Model-Version")


def current_dir(service) -> Path:
    return service["releases_dir"] / versions.current_release(service["releases_dir"])


def previous_dir(service) -> Path:
    listed = versions.releases(service["releases_dir"])
    return service["releases_dir"] / listed[listed.index(versions.current_release(service["releases_dir"])) - 1]


def logged_since(service, offset: int) -> str:
    with open(service["log"], "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def pid_of(service) -> int:
    return int(pm2(service, "pid", APP_NAME).strip())


def workers_of(master: int) -> list[int]:
    return process_tree(master)[1:]


@pytest.mark.parametrize("kind", ["link", "file"])
def test_make_releases_marks_a_release_with_a_plant_refused_and_fails(service, tmp_path, kind):
    own, marker = attacker_folder(tmp_path)
    older = previous_dir(service)
    planted = plant(older, AT_INTERPRETER_START[kind], kind, own)
    try:
        listing = make_in(service, "releases", check=False)
    finally:
        unplant(planted)
    assert listing.returncode != 0
    lines = listing.stdout.splitlines()
    [at] = [index for index, line in enumerate(lines) if older.name in line]
    assert lines[at + 1].lstrip().startswith(f"REFUSED, does not match its manifest: {AT_INTERPRETER_START[kind]}")
    assert f"make rollback and the service's start refuse them ({older.name})" in listing.stderr
    assert not marker.exists()
    assert make_in(service, "releases").returncode == 0


@pytest.mark.parametrize("kind", ["link", "file"])
def test_make_rollback_refuses_a_previous_release_with_a_plant_and_current_stays(service, tmp_path, kind):
    own, marker = attacker_folder(tmp_path)
    served, before = versions.current_release(service["releases_dir"]), answer(service)
    older = previous_dir(service)
    planted = plant(older, AT_INTERPRETER_START[kind], kind, own)
    try:
        result = make_in(service, "rollback", check=False)
        assert result.returncode != 0
        assert (
            f"refused: release {older.name} does not match its manifest: {AT_INTERPRETER_START[kind]}" in result.stderr
        )
        assert f"still serving release {served}" in result.stderr
        assert versions.current_release(service["releases_dir"]) == served
        assert (service["models_dir"] / "current").resolve().name == before[2]
        assert answer(service) == before
        assert not marker.exists()
        interpreter_started_on(older)
        assert marker.exists(), "the plant would have run at the start of the rolled-back service"
    finally:
        unplant(planted)


def load_while(service, tmp_path, action, seconds: int = 10) -> dict:
    """A wrk load of the article's call, with `action` run 2 s in."""
    script = write_wrk_script(tmp_path / "article.lua", ARTICLE_BODY)
    timer = threading.Timer(2, action)
    timer.start()
    try:
        return run_wrk(f"{service['url']}{ARTICLE_PATH}", script, connections=16, seconds=seconds)
    finally:
        timer.join()


def wait_for_two_checked_workers(service, master: int, offset: int, started: int = 1):
    """Once the plant is gone: the next worker gunicorn starts (within the
    refused one's pause) checks the release, imports it, and serves. Only
    then may the next test plant: a worker checked but still importing would
    import the plant."""

    def started_and_serving() -> bool:
        logged = logged_since(service, offset)
        return (
            logged.count("matches its manifest") >= started
            and logged.count("and serves it") >= started
            and len(workers_of(master)) == 2
        )

    assert wait_until(started_and_serving, timeout=30), logged_since(service, offset)[-3000:]


@pytest.mark.parametrize("kind", ["link", "file"])
def test_a_worker_killed_under_load_is_not_replaced_on_a_current_release_with_a_plant(service, tmp_path, kind):
    """A worker killed under load while the current release holds a plant
    that its replacement would import: the replacement is refused, the other
    worker keeps serving the release as it was checked, and no request fails
    (the edge sends again what the killed worker held)."""
    own, marker = attacker_folder(tmp_path)
    before, release = answer(service), current_dir(service)
    master = pid_of(service)
    killed, survivor = workers_of(master)
    offset = service["log"].stat().st_size
    planted = plant(release, IN_A_WORKER[kind], kind, own)
    try:
        result = load_while(service, tmp_path, lambda: os.kill(killed, signal.SIGKILL))
        logged = logged_since(service, offset)
        assert (
            f"refused to start a worker: release {release.name} does not match its manifest: {IN_A_WORKER[kind]}"
            in (logged)
        )
        assert "the 1 worker(s) started before keep serving" in logged
        assert result["requests"] > 500 and not any(result["errors"].values()), result
        assert answer(service) == before
        assert survivor in workers_of(master) and killed not in workers_of(master)
        assert pid_of(service) == master
        assert not marker.exists()
        imported_as_a_worker_would(release, "flask")
        assert marker.exists(), "the plant would have run in a worker that imported the release unchecked"
    finally:
        offset = service["log"].stat().st_size
        unplant(planted)
    wait_for_two_checked_workers(service, master, offset)


def test_a_reload_onto_a_current_release_with_a_plant_is_refused_and_the_workers_keep_serving(service, tmp_path):
    """SIGHUP, as `make serve` and `make rollback` send it after switching
    `current`: refused, since gunicorn would stop the running workers as
    soon as it had forked new ones, which refuse the release."""
    own, marker = attacker_folder(tmp_path)
    before, release = answer(service), current_dir(service)
    master = pid_of(service)
    workers = sorted(workers_of(master))
    offset = service["log"].stat().st_size
    planted = plant(release, IN_A_WORKER["link"], "link", own)
    try:
        result = load_while(service, tmp_path, lambda: pm2(service, "sendSignal", "SIGHUP", APP_NAME))
        assert "refused to reload: release" in logged_since(service, offset)
        assert result["requests"] > 500 and not any(result["errors"].values()), result
        assert sorted(workers_of(master)) == workers
        assert answer(service) == before and not marker.exists()
    finally:
        unplant(planted)
    # With the plant gone, a reload goes ahead: new workers, checked, serving the same release.
    offset = service["log"].stat().st_size
    pm2(service, "sendSignal", "SIGHUP", APP_NAME)
    assert wait_until(lambda: not set(workers) & set(workers_of(master)) and len(workers_of(master)) == 2, 30)
    wait_for_two_checked_workers(service, master, offset, started=2)
    assert logged_since(service, offset).count(f"release {release.name} matches its manifest") >= 2
    assert answer(service) == before


def restart_cleanly(service, planted: Path):
    """The plant removed, the service started again and answering."""
    if planted.is_symlink() or planted.exists():
        unplant(planted)
    pm2(service, "restart", APP_NAME)
    assert wait_until(lambda: answer_status(service) == 200, timeout=90)


def answer_status(service) -> int | None:
    try:
        return requests.post(service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, timeout=30).status_code
    except requests.RequestException:
        return None


def test_when_no_checked_worker_is_left_the_master_stops_and_the_script_refuses_to_start(service, tmp_path):
    """Both workers killed while the current release holds an extra file:
    gunicorn's master stops (no worker left to serve), PM2 starts the script
    again, which refuses the release: PM2 shows the restarts, the log says
    why, and the edge answers 503 meanwhile."""
    release = current_dir(service)
    master = pid_of(service)
    restarts = pm2_app(service)["pm2_env"]["restart_time"]
    offset = service["log"].stat().st_size
    planted = release / "model" / "notes.txt"
    writable_folder(planted.parent)
    planted.write_text("an extra file\n")
    read_only_folder(planted.parent)
    try:
        for worker in workers_of(master):
            os.kill(worker, signal.SIGKILL)
        assert wait_until(lambda: "refused to start: release" in logged_since(service, offset), timeout=60)
        logged = logged_since(service, offset)
        assert f"refused to start a worker: release {release.name} does not match its manifest: model/notes.txt" in (
            logged
        )
        assert "no worker is left to serve" in logged
        assert f"refused to start: release {release.name} does not match its manifest: model/notes.txt" in logged
        assert pm2_app(service)["pm2_env"]["restart_time"] > restarts
        assert answer_status(service) == 503
    finally:
        restart_cleanly(service, planted)


def test_a_restart_of_the_service_on_a_release_with_a_plant_runs_none_of_it(service, tmp_path):
    own, marker = attacker_folder(tmp_path)
    release = current_dir(service)
    offset = service["log"].stat().st_size
    planted = plant(release, AT_INTERPRETER_START["link"], "link", own)
    try:
        pm2(service, "restart", APP_NAME)
        assert wait_until(lambda: "refused to start: release" in logged_since(service, offset), timeout=60)
        assert answer_status(service) == 503
        assert not marker.exists()
        interpreter_started_on(release)
        assert marker.exists(), "the plant would have run at the interpreter's start"
    finally:
        restart_cleanly(service, planted)


def test_the_check_at_a_worker_start_costs_a_few_milliseconds(service):
    """What pre_fork logs for each worker it checks (the master, before the fork)."""
    text = service["log"].read_text(errors="replace")
    timings = [
        float(line.split("checked in ")[1].split(" ms")[0]) for line in text.splitlines() if "checked in" in line
    ]
    files = len(versions.read_manifest(service["releases_dir"], current_dir(service).name)["files"])
    print(f"\nrelease check at worker start: {len(timings)} starts, {files} files, ms: {sorted(timings)}")
    assert timings and sorted(timings)[len(timings) // 2] < 50

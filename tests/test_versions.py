"""Model versions and releases on disk: listing, promoting (checked first) and rolling back,
through one command line; and where a release keeps what it runs."""

import json
import os
import shutil
import subprocess

import pytest

from diabetes.model_store import CURRENT_LINK, METADATA_FILE, MODEL_FILE, point_link
from diabetes.release_layout import parts
from diabetes.versions import describe_models, folders_in, linked, main
from tests.conftest import PROJECT

pytestmark = pytest.mark.model

# A metadata.json as training writes it, for a version that needs no model.
SAMPLE_METADATA = PROJECT / "tests" / "metadata" / "format-2.json"


@pytest.fixture()
def two_versions(trained, tmp_path):
    """A models folder with two copies of the trained version, the newer one served."""
    source = (trained["models_dir"] / "latest").resolve()
    older, newer = "20200101T000000Z-00000000", source.name
    shutil.copytree(source, tmp_path / older)
    shutil.copytree(source, tmp_path / newer)
    metadata = json.loads((tmp_path / older / METADATA_FILE).read_text())
    (tmp_path / older / METADATA_FILE).write_text(json.dumps({**metadata, "version": older}))
    point_link(tmp_path, CURRENT_LINK, newer)
    return tmp_path, older, newer


def test_models_lists_every_version_with_its_metrics_and_marks_the_served_one(two_versions):
    models_dir, older, newer = two_versions
    listing = describe_models(models_dir)
    assert older in listing and newer in listing
    [served_line] = [line for line in listing.splitlines() if line.startswith("*")]
    assert newer in served_line and "current" in served_line and "%" in served_line


def test_rollback_serves_the_version_before_the_current_one(two_versions, capsys):
    models_dir, older, newer = two_versions
    assert main(["models", "rollback", str(models_dir)]) == 0
    assert linked(models_dir) == older
    assert older in capsys.readouterr().out


def test_rollback_with_no_older_version_is_refused(two_versions, capsys):
    models_dir, older, newer = two_versions
    point_link(models_dir, CURRENT_LINK, older)
    assert main(["models", "rollback", str(models_dir)]) == 1
    assert linked(models_dir) == older
    assert "no version older" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_a_damaged_version_is_refused_and_the_served_one_stays(two_versions, damage, capsys):
    models_dir, older, newer = two_versions
    model = models_dir / older / MODEL_FILE
    content = model.read_bytes()
    model.write_bytes(content[:-1] + bytes([content[-1] ^ 1]) if damage == "tampered" else content[:1000])
    assert main(["models", "promote", str(models_dir), older]) == 1
    assert linked(models_dir) == newer
    assert "sha256" in capsys.readouterr().err
    assert folders_in(models_dir) == sorted([older, newer])


def test_a_version_whose_folder_and_metadata_disagree_is_refused(two_versions, capsys):
    models_dir, older, newer = two_versions
    shutil.copytree(models_dir / newer, models_dir / "20210101T000000Z-11111111")
    assert main(["models", "promote", str(models_dir), "20210101T000000Z-11111111"]) == 1
    assert linked(models_dir) == newer


def metadata_only_version(models_dir, version, test_accuracy):
    """A version folder holding the metadata a listing reads (no model: nothing here loads it)."""
    (models_dir / version).mkdir(parents=True)
    metadata = json.loads(SAMPLE_METADATA.read_text())
    metrics = {**metadata["metrics"], "test_accuracy": test_accuracy}
    (models_dir / version / METADATA_FILE).write_text(json.dumps({**metadata, "version": version, "metrics": metrics}))


def test_one_command_line_lists_model_versions_and_releases(tmp_path, capsys):
    models_dir, releases_dir = tmp_path / "models", tmp_path / "releases"
    metadata_only_version(models_dir, "20200101T000000Z-00000000", 0.75)
    metadata_only_version(models_dir, "20200102T000000Z-11111111", 0.8125)
    point_link(models_dir, CURRENT_LINK, "20200101T000000Z-00000000")
    assert main(["models", "list", str(models_dir)]) == 0
    [served] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("*")]
    assert "20200101T000000Z-00000000" in served and "75.00%" in served and served.endswith("current")

    releases_dir.mkdir()
    assert main(["releases", "list", str(releases_dir)]) == 0
    assert capsys.readouterr().out.split() == ["release", "model", "version", "code", "commit", "built", "(UTC)"] + [
        "checks",
        "passed",
    ]
    assert main(["releases", "current", str(releases_dir)]) == 0
    assert capsys.readouterr().out == "\n"


def test_a_rollback_with_no_older_release_is_refused_and_says_what_is_still_served(tmp_path, capsys):
    releases_dir = tmp_path / "releases"
    (releases_dir / "20200101T000000Z-00000000").mkdir(parents=True)
    point_link(releases_dir, CURRENT_LINK, "20200101T000000Z-00000000")
    assert main(["releases", "rollback", str(releases_dir)]) == 1
    assert capsys.readouterr().err == (
        "refused: no release older than 20200101T000000Z-00000000 to roll back to; "
        "still serving release 20200101T000000Z-00000000\n"
    )
    assert linked(releases_dir) == "20200101T000000Z-00000000"


def configured_release_paths(project, releases_dir) -> list[str]:
    """What the project's ecosystem file in `project` gives PM2: the service's
    script, its check, the edge's check, the package path and the model."""
    configured = subprocess.run(
        [
            "node",
            "-e",
            "const [service, edge] = require('./ecosystem.config.js').apps; console.log(JSON.stringify("
            "[service.script, service.interpreter_args[1], edge.args[1], service.env.PYTHONPATH,"
            " service.env.DIABETES_MODEL_DIR]))",
        ],
        cwd=project,
        env={**os.environ, "RELEASES_DIR": str(releases_dir)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(configured.stdout)


def paths_as_declared(release_dir) -> list[str]:
    release = parts(str(release_dir))
    return [release["script"], release["check"], release["check"], release["package"], release["model"]]


def test_the_ecosystem_file_and_the_makefile_take_a_releases_paths_from_its_layout(tmp_path):
    releases_dir = tmp_path / "releases"
    assert configured_release_paths(PROJECT, releases_dir) == paths_as_declared(releases_dir / CURRENT_LINK)
    asked = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            "-C",
            str(PROJECT),
            "--eval",
            "part: ; @echo $(call release_part,R,model)",
        ]
        + ["part"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert asked.stdout.strip() == parts("R")["model"]


def test_without_a_working_tree_as_in_the_image_the_ecosystem_file_asks_the_releases_own_layout(tmp_path):
    """The image holds the ecosystem file and releases, and no diabetes/ beside them."""
    app = tmp_path / "app"
    release_dir = app / "releases" / "20200101T000000Z-00000000"
    (release_dir / parts("")["check"]).parent.mkdir(parents=True)
    shutil.copy(PROJECT / "diabetes" / "release_layout.py", (release_dir / parts("")["check"]).parent)
    (app / "releases" / CURRENT_LINK).symlink_to(release_dir.name)
    shutil.copy(PROJECT / "ecosystem.config.js", app)
    for shared in (".venv", "node_modules"):
        (app / shared).symlink_to(PROJECT / shared)
    assert not (app / "diabetes").exists()
    current = app / "releases" / CURRENT_LINK
    assert configured_release_paths(app, app / "releases") == paths_as_declared(current)

"""Model versions on disk: listing, promoting (checked first) and rolling back."""

import json
import shutil

import pytest

from diabetes.model_store import CURRENT_LINK, METADATA_FILE, MODEL_FILE, point_link
from diabetes.models import describe, linked_version, main, versions


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
    listing = describe(models_dir)
    assert older in listing and newer in listing
    [served_line] = [line for line in listing.splitlines() if line.startswith("*")]
    assert newer in served_line and "current" in served_line and "%" in served_line


def test_rollback_serves_the_version_before_the_current_one(two_versions, capsys):
    models_dir, older, newer = two_versions
    assert main(["rollback", str(models_dir)]) == 0
    assert linked_version(models_dir, CURRENT_LINK) == older
    assert older in capsys.readouterr().out


def test_rollback_with_no_older_version_is_refused(two_versions, capsys):
    models_dir, older, newer = two_versions
    point_link(models_dir, CURRENT_LINK, older)
    assert main(["rollback", str(models_dir)]) == 1
    assert linked_version(models_dir, CURRENT_LINK) == older
    assert "no version older" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_a_damaged_version_is_refused_and_the_served_one_stays(two_versions, damage, capsys):
    models_dir, older, newer = two_versions
    model = models_dir / older / MODEL_FILE
    content = model.read_bytes()
    model.write_bytes(content[:-1] + bytes([content[-1] ^ 1]) if damage == "tampered" else content[:1000])
    assert main(["promote", str(models_dir), older]) == 1
    assert linked_version(models_dir, CURRENT_LINK) == newer
    assert "sha256" in capsys.readouterr().err
    assert sorted(versions(models_dir)) == sorted([older, newer])


def test_a_version_whose_folder_and_metadata_disagree_is_refused(two_versions, capsys):
    models_dir, older, newer = two_versions
    shutil.copytree(models_dir / newer, models_dir / "20210101T000000Z-11111111")
    assert main(["promote", str(models_dir), "20210101T000000Z-11111111"]) == 1
    assert linked_version(models_dir, CURRENT_LINK) == newer

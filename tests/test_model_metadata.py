"""metadata.json as a contract (diabetes/model_metadata.py): training cannot
publish a model whose metadata breaks it, and the service reads the versions
written before it was declared, or refuses them saying what is missing."""

import dataclasses
import inspect
import json
import shutil
import typing

import pytest

from diabetes import model_metadata, versions
from diabetes.model_metadata import FORMAT, METADATA_FILE, MetadataRefused, ModelMetadata
from diabetes.model_store import ModelRefused, publish_version
from diabetes.prediction import load_bundle
from diabetes.versions import describe_models, main
from tests.conftest import FAST_PARAMS, PROJECT, make

# What the copy of the project leaves out: the copy links the project's own.
LEFT_OUT_OF_THE_COPY = shutil.ignore_patterns(".git", ".venv", "node_modules", "build", "scripts")


@pytest.fixture()
def published(trained) -> dict:
    """The metadata.json of the fast training run's version, as written."""
    return json.loads(((trained["models_dir"] / "latest") / METADATA_FILE).read_text())


@pytest.fixture()
def version_copy(trained, tmp_path):
    """A models folder holding a copy of the trained version, and a function
    that rewrites the copy's metadata.json."""
    source = (trained["models_dir"] / "latest").resolve()
    copy = shutil.copytree(source, tmp_path / "models" / source.name)

    def rewrite(change):
        document = json.loads((copy / METADATA_FILE).read_text())
        (copy / METADATA_FILE).write_text(json.dumps(change(document), indent=2))

    return copy, rewrite


# ---- training: the contract is checked before anything is published -------------
@pytest.mark.model
@pytest.mark.parametrize(
    "line, planted, problems",
    [
        (
            '"threshold": threshold,',
            '"decision_threshold": threshold,',
            ["/threshold is missing", "/decision_threshold is not a key of the contract"],
        ),
        (
            '"cv_brier": calibration_scores,',
            '"cv_briers": calibration_scores,',
            ["/calibration/cv_brier is missing", "/calibration/cv_briers is not a key of the contract"],
        ),
    ],
)
def test_a_key_renamed_in_the_training_notebook_fails_make_train_naming_it_and_publishes_nothing(
    tmp_path, line, planted, problems
):
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project, ignore=LEFT_OUT_OF_THE_COPY)
    (project / ".venv").symlink_to(PROJECT / ".venv")
    notebook = json.loads((project / "notebooks/train.ipynb").read_text())
    [cell] = [cell for cell in notebook["cells"] if any("publish_version(" in text for text in cell["source"])]
    [index] = [index for index, text in enumerate(cell["source"]) if text.strip() == line]
    cell["source"][index] = cell["source"][index].replace(line, planted)
    (project / "notebooks/train.ipynb").write_text(json.dumps(notebook, indent=1))

    result = make(
        "train",
        f"MODELS_DIR={tmp_path / 'models'}",
        f"RUNS_DIR={tmp_path / 'runs'}",
        f"TRAIN_PARAMS={FAST_PARAMS}",
        check=False,
        project=project,
    )

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "MetadataRefused" in output and "nothing was published" in output
    assert all(problem in output for problem in problems), output[-3000:]
    assert not (tmp_path / "models").exists(), "a refused metadata must publish nothing"


@pytest.mark.model
def test_publishing_a_record_with_a_value_of_the_wrong_type_writes_nothing(trained, published, tmp_path):
    bundle = load_bundle(trained["models_dir"] / "latest")
    added_by_publishing = ("format", "version", "model_file", "model_sha256", "trained_at", "feature_names")
    record = {key: value for key, value in published.items() if key not in added_by_publishing}
    record["trees"] = str(record["trees"])
    with pytest.raises(MetadataRefused, match=r"/trees is a string \('\d+'\), not an integer"):
        publish_version(bundle.booster, record, tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_a_metadata_file_of_format_2_as_training_wrote_it_is_read_as_it_is():
    """tests/metadata/format-2.json is the output of a fast training run: a
    later format must still read it (or refuse it on purpose, here)."""
    document = json.loads((PROJECT / "tests" / "metadata" / "format-2.json").read_text())
    metadata = ModelMetadata.parse(document)
    assert metadata.format == 2 and metadata.as_json() == document


@pytest.mark.model
def test_training_writes_the_current_format_and_reads_back_what_it_wrote(trained, published):
    metadata = load_bundle(trained["models_dir"] / "latest").metadata
    assert published["format"] == metadata.format == FORMAT
    assert metadata.as_json() == published, "metadata.json is exactly what the contract writes"
    assert "cluster" not in published, "an in-process run records no cluster"


# ---- serving: the contract is checked at every load ---------------------------
@pytest.mark.model
@pytest.mark.parametrize(
    "change, problem",
    [
        (
            lambda document: {**document, "metrics": {**document["metrics"], "test_roc_auc": None}},
            "/metrics/test_roc_auc is null, not a number",
        ),
        (lambda document: {key: value for key, value in document.items() if key != "sample"}, "/sample is missing"),
        (lambda document: {**document, "features": document["features"][:1] + [{}]}, "/features/1/name is missing"),
        (lambda document: {**document, "format": FORMAT + 1}, f"format {FORMAT + 1}; this code reads formats"),
    ],
)
def test_a_version_whose_metadata_breaks_the_contract_is_refused_naming_the_key(version_copy, change, problem):
    copy, rewrite = version_copy
    rewrite(change)
    with pytest.raises(ModelRefused) as refused:
        load_bundle(copy)
    assert problem in str(refused.value) and str(copy) in str(refused.value)


@pytest.mark.model
def test_a_version_written_before_the_contract_that_holds_all_of_it_is_served(version_copy, capsys):
    copy, rewrite = version_copy
    rewrite(lambda document: {key: value for key, value in document.items() if key != "format"})
    bundle = load_bundle(copy)
    assert bundle.metadata.format == 1 and bundle.version == copy.name
    assert bundle.sample_check_passes()
    assert main(["models", "promote", str(copy.parent), copy.name]) == 0
    assert copy.name in capsys.readouterr().out


def first_format(document: dict) -> dict:
    """The metadata the first model versions had (before the model card,
    calibration and comparison, the data named by its path), made of this one."""
    kept = ("version", "model_file", "model_sha256", "trained_at", "feature_names", "features", "threshold")
    return {
        **{key: document[key] for key in kept},
        "metrics": {key: document["metrics"][key] for key in ("test_accuracy", "test_roc_auc", "test_log_loss")},
        "parameters": {"test_size": 0.33, "validation_size": 0.2, "seed": 0, "n_estimators": 500},
        "trees": document["trees"],
        "data": {"path": document["data"]["source"], "sha256": document["data"]["sha256"], "rows": 768},
        "sample": document["sample"],
        "library_versions": document["library_versions"],
    }


@pytest.mark.model
def test_a_version_older_than_the_contract_is_refused_saying_what_it_lacks(version_copy, capsys):
    copy, rewrite = version_copy
    rewrite(first_format)
    with pytest.raises(ModelRefused) as refused:
        load_bundle(copy)
    message = str(refused.value)
    assert "/comparison is missing" in message and "/calibration is missing" in message
    assert "/model_card is missing" in message and "train the model again" in message
    assert main(["models", "promote", str(copy.parent), copy.name]) == 1
    assert "/model_card is missing" in capsys.readouterr().err
    [line] = [line for line in describe_models(copy.parent).splitlines() if copy.name in line]
    assert "unreadable" in line and "/comparison is missing" in line


# ---- the parser itself -------------------------------------------------------------
def test_every_field_of_the_contract_is_typed_and_documented_in_one_line():
    parts = [kind for kind in vars(model_metadata).values() if dataclasses.is_dataclass(kind)]
    assert ModelMetadata in parts and len(parts) > 5
    for kind in parts:
        lines = inspect.getsource(kind).splitlines()
        for name, hint in typing.get_type_hints(kind).items():
            [line] = [line for line in lines if line.strip().startswith(f"{name}: ")]
            assert "  # " in line, f"{kind.__name__}.{name} is not described in its line"
            assert hint is not typing.Any, f"{kind.__name__}.{name} is not typed"


@pytest.mark.model
def test_a_release_is_not_staged_from_a_version_whose_metadata_breaks_the_contract(version_copy, tmp_path):
    copy, rewrite = version_copy
    rewrite(lambda document: {**document, "threshold": "0.5"})
    serve = PROJECT / "notebooks" / "serve.ipynb"
    with pytest.raises(versions.Refused, match=r"/threshold is a string \('0.5'\), not a number"):
        versions.stage(tmp_path / "releases", script=serve, notebook=serve, package=PROJECT / "diabetes", model=copy)

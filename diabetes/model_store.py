"""Trained models on disk: one folder per version, a `latest` link to the
newest version that passed its quality gate, and a `current` link to the
version being served.

    build/models/
        20261129T040000Z-1a2b3c4d/   model.ubj  metadata.json  predictions.csv  train.ipynb  train.html
        20261129T050000Z-5e6f7a8b/   ...
        latest  -> 20261129T050000Z-5e6f7a8b   (written by training)
        current -> 20261129T040000Z-1a2b3c4d   (switched by a deploy or a rollback, once the version
                                                loads and passes its sample check)

Models are stored in XGBoost's own format (never pickled) and are refused when
the file does not match the sha256 recorded in its metadata. The metadata is
the model's contract with the service (diabetes.model_metadata): checked when
a version is published, and again when it is loaded.

A version's files that hold patients' rows or predictions for them
(`PRIVATE_FILES`: the training rows, the test and out-of-fold predictions, the
executed notebook that shows them) are readable by their owner only (0600),
whatever the umask: created so, in a folder only the owner can enter until the
version is complete. The model and its metadata hold no rows and follow the
umask, as does the version's folder: a service that runs as another user (the
image's, with `make run-image IMAGE_MODELS=...`) reads them. This module does
not import XGBoost, which is slow to import: commands that only read or
switch versions stay quick. Loading a model to predict with it is diabetes.prediction's.
"""

import hashlib
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from diabetes import model_metadata
from diabetes.features import FEATURE_NAMES
from diabetes.model_metadata import FORMAT, MetadataRefused, ModelMetadata

MODEL_FILE = "model.ubj"
METADATA_FILE = model_metadata.METADATA_FILE
CURRENT_LINK = "current"
LATEST_LINK = "latest"
# Files of a version that hold patients' rows or predictions for them, kept
# 0600. train.ipynb and train.html are copied in by `make train`.
PRIVATE_FILES = frozenset({"data.csv", "predictions.csv", "cv_predictions.csv", "train.ipynb", "train.html"})
PRIVATE_MODE = 0o600


class ModelRefused(Exception):
    """The model on disk cannot be trusted or used; the message says why."""


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_version_id(model_bytes: bytes) -> str:
    """Sortable by training time, and unique to the model's content."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{sha256_of(model_bytes)[:8]}"


def publish_version(booster, record: dict, models_dir, extra_files=()) -> Path:
    """Write a new version of an XGBoost booster and make it the latest one.

    `record` is what training computed of the model's metadata: every key of
    `ModelMetadata` but those this adds (the format, version, model file and
    its sha256, the training time, the feature names). The whole is parsed
    into the contract and checked as the service will check it before
    anything is written: MetadataRefused names the key that is wrong, and
    nothing is published.

    The version folder is complete before it gets its final name, and the
    link is swapped with a rename: a reader sees the old version or the new
    one, never half of one. `extra_files` are (name, writer) pairs, each
    writer called with the path to write. An extra file is created 0600
    before its writer opens it, and kept so. The folder is written with mode
    0700, then given its parent's mode (never writable by others) as it gets
    its name."""
    models_dir = Path(models_dir)
    model_bytes = bytes(booster.save_raw(raw_format="ubj"))
    version = new_version_id(model_bytes)
    metadata = published_metadata(
        record,
        format=FORMAT,
        version=version,
        model_file=MODEL_FILE,
        model_sha256=sha256_of(model_bytes),
        trained_at=model_metadata.now(),
        feature_names=list(FEATURE_NAMES),
    )

    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".{version}.partial"
    staging.mkdir(mode=0o700)
    os.chmod(staging, 0o700)  # whatever the umask (mkdir's mode is only narrowed by it)
    (staging / MODEL_FILE).write_bytes(model_bytes)
    model_metadata.write(metadata, staging)
    for name, write in extra_files:
        path = staging / name
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE))
        write(path)
        os.chmod(path, PRIVATE_MODE)  # a writer that replaced the file
    os.chmod(staging, stat.S_IMODE(models_dir.stat().st_mode) & 0o755)
    version_dir = models_dir / version
    staging.rename(version_dir)
    point_link(models_dir, LATEST_LINK, version)
    return version_dir


def published_metadata(record: dict, **published) -> ModelMetadata:
    """Training's record and the publication's own fields, as the contract,
    checked; MetadataRefused says which key is wrong and that nothing was published."""
    try:
        # As JSON holds it: numpy's numbers become JSON's, tuples arrays.
        document = json.loads(json.dumps({**record, **published}))
        metadata = ModelMetadata.parse(document)
        check_metadata(metadata)
    except (MetadataRefused, ModelRefused, TypeError, ValueError) as error:
        raise MetadataRefused(
            f"the training run's metadata does not hold the model's contract (diabetes/model_metadata.py), "
            f"nothing was published: {error}"
        ) from error
    return metadata


def point_link(models_dir, link: str, version: str):
    """Make `models_dir/link` name `version`, atomically."""
    models_dir = Path(models_dir)
    next_link = models_dir / f".{link}.next"
    next_link.unlink(missing_ok=True)
    next_link.symlink_to(version, target_is_directory=True)
    next_link.rename(models_dir / link)


def load_metadata(model_dir) -> ModelMetadata:
    """The contract of the version in `model_dir`; MetadataRefused (a
    ValueError) names the key that is missing or wrong."""
    return model_metadata.read(model_dir)


def check_metadata(metadata: ModelMetadata):
    """Refuse metadata that the service would misread: features in another
    order than the model's, a threshold outside (0, 1), a model file that is
    not a plain name in the version's folder."""
    if tuple(metadata.feature_names) != FEATURE_NAMES:
        raise ModelRefused(
            f"the model expects features {metadata.feature_names}, this code sends {list(FEATURE_NAMES)}"
        )
    described = tuple(feature.name for feature in metadata.features)
    if described != FEATURE_NAMES:
        raise ModelRefused(
            f"the metadata describes features {list(described)}, in another order than the "
            f"model's {list(FEATURE_NAMES)}"
        )
    if not 0 < metadata.threshold < 1:
        raise ModelRefused(f"threshold {metadata.threshold!r} is not a probability strictly between 0 and 1")
    model_file = metadata.model_file
    if Path(model_file).name != model_file or model_file in ("", ".", ".."):
        raise ModelRefused(f"model_file {model_file!r} is not a plain file name")


def read_checked_model(model_dir) -> tuple[Path, ModelMetadata, bytes]:
    """A version folder (or a link to one) resolved, its checked metadata and
    its model file's bytes, refused unless they match the recorded sha256."""
    # Resolved once: a promotion that switches the link while this reads must
    # not pair one version's metadata with another's model file.
    model_dir = Path(model_dir).resolve()
    try:
        metadata = load_metadata(model_dir)
        check_metadata(metadata)
        model_bytes = (model_dir / metadata.model_file).read_bytes()
    except (OSError, ValueError) as error:
        raise ModelRefused(f"cannot read the model in {model_dir}: {error}") from error
    if sha256_of(model_bytes) != metadata.model_sha256:
        raise ModelRefused(f"{model_dir / metadata.model_file} does not match the sha256 in its metadata")
    return model_dir, metadata, model_bytes

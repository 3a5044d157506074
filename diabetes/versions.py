"""What the service serves, and what it can go back to: model versions and releases.

A model version is what training publishes (diabetes/model_store.py):
`build/models/<version>/`, `latest` the newest that passed its quality gate.
A release is what serves: a read-only folder built from a model version, the
endpoint script and a copy of the package (diabetes/release_layout.py says
where each lives), `build/releases/<id>/`. Each folder has a `current` link
to the one served, switched with a rename (a reader sees the old link or the
new one), only once what it names passed its checks.

    python -m diabetes.versions models list       MODELS_DIR            (make models)
    python -m diabetes.versions models promote    MODELS_DIR VERSION|latest
    python -m diabetes.versions models rollback   MODELS_DIR
    python -m diabetes.versions releases list     RELEASES_DIR          (make releases)
    python -m diabetes.versions releases rollback RELEASES_DIR [--models-dir MODELS_DIR]   (make rollback)
    python -m diabetes.versions releases stage    RELEASES_DIR --script S --notebook N --package DIR --model VERSION_DIR
    python -m diabetes.versions releases seal     RELEASES_DIR --passed CHECK... [--models-dir MODELS_DIR]
    python -m diabetes.versions releases current  RELEASES_DIR
    python -m diabetes.versions releases check    RELEASES_DIR [--release ID] [--serving-only]

A model version is promoted only once it loads, matches its sha256 and passes
its sample check. `make serve` stages a release in `.staging`, runs the
endpoint notebook against it, then seals it: the model is checked again, the
manifest written (every file with its sha256, every link with its target; the
git commit and whether the tree had uncommitted changes, the model version,
when it was built, the checks it passed), the folder made read-only and its
owner's alone (files 0400, folders 0500, whatever the umask), renamed to its
id, and made `current`. gunicorn's workers import the script and the package
through `current` only, so nothing of the working tree reaches them.

A release is what its manifest says, every time it is used: a file added,
missing or changed, a link added, changed or leading out of it, refuses it
(diabetes/serving.py's `release_problems`). `releases list` marks such a
release REFUSED and fails; `rollback` will not switch to it; the service will
not start from it, nor start a worker on it (diabetes/gunicorn_config.py).
A refused command says why, exits non-zero, and `current` stays as it was.
Reloading the running service is the Makefile's part. XGBoost, slow to
import, is imported only to check a model or to list the models.
"""

import argparse
import compileall
import json
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from diabetes.model_metadata import ModelMetadata
from diabetes.model_store import CURRENT_LINK, LATEST_LINK, METADATA_FILE, ModelRefused, load_metadata, point_link
from diabetes.release_layout import (
    MANIFEST_FILE,
    MODEL_DIR,
    NOTEBOOK_FILE,
    PACKAGE_DIR,
    SCRIPT_FILE,
    SETTINGS_FILE,
)
from diabetes.serving import (
    MANIFEST_FORMAT,
    content_sha256,
    leaves,
    release_entries,
    release_problems,
    sha256_of_file,
)
from diabetes.serving import summary as problems_summary

STAGING = ".staging"
# What `stage` leaves in the staging folder for `seal`: where the release came from.
SOURCE_FILE = ".source.json"
# Settings that are secrets: the release records whether they are set, never their value.
SECRET_SETTINGS = ("api_key",)
# Files whose content pins what the release runs on, recorded by hash in the manifest.
DEPENDENCY_LOCKS = ("requirements.txt", "package-lock.json")


class Refused(Exception):
    """A model version or a release cannot be built, switched to or served; the message says why."""


# ---- Both: folders of versions and their `current` link ------------------------------


def folders_in(folder: Path) -> list[str]:
    """The names of the version (or release) folders in `folder`: no link, nothing hidden."""
    if not folder.is_dir():
        return []
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.is_dir() and not path.is_symlink() and not path.name.startswith(".")
    )


def linked(folder: Path, link: str = CURRENT_LINK) -> str | None:
    """The name the link `folder/link` points to, if it is a link."""
    path = folder / link
    return path.resolve().name if path.is_symlink() else None


def the_one_before(listed: list[str], current: str | None, noun: str) -> str:
    """The name listed just before `current` (the last one if `current` is not listed)."""
    older = listed[: listed.index(current)] if current in listed else listed
    if not older:
        raise Refused(f"no {noun} older than {current} to roll back to")
    return older[-1]


# ---- Model versions ------------------------------------------------------------------


def check_model(model_dir: Path, version: str) -> list[str]:
    """Refuse a model that does not load, is not the version it should be, or
    fails its sample check; else the names of the checks it passed."""
    from diabetes.prediction import load_bundle

    try:
        bundle = load_bundle(model_dir)
    except ModelRefused as error:
        raise Refused(str(error)) from error
    if bundle.version != version:
        raise Refused(f"{model_dir} holds model version {bundle.version}, not {version}")
    if not bundle.sample_check_passes():
        raise Refused(f"model {version} does not give its sample row the probability recorded in training")
    return ["model matches its sha256", "sample prediction as recorded"]


def promote(models_dir: Path, version: str) -> str:
    """Serve a model version (or the one a link names), once it passes its checks."""
    version = linked(models_dir, version) or version
    check_model(models_dir / version, version)
    point_link(models_dir, CURRENT_LINK, version)
    return version


def rollback_model(models_dir: Path) -> str:
    return promote(models_dir, the_one_before(folders_in(models_dir), linked(models_dir), "version"))


def describe_models(models_dir: Path) -> str:
    """One line per version (oldest first, their names start with the training
    time): the cross-validated ROC AUC (mean ± spread over the folds of every
    seed), the test ROC AUC, the test accuracy with its 95% bootstrap interval
    beside the original article's, the test Brier score."""
    # Imported here: the training module brings XGBoost and scikit-learn, which only this listing needs.
    from diabetes.training import ARTICLE_TEST_ACCURACY

    current, latest = linked(models_dir), linked(models_dir, LATEST_LINK)
    lines = [
        f"{'':2}{'version':<28}{'CV AUC':<17}{'test AUC':>8}  "
        f"{'accuracy [95% interval] (article ' + format(ARTICLE_TEST_ACCURACY, '.2%') + ')':<42}"
        f"{'Brier':>6}{'trees':>7}"
    ]
    for version in folders_in(models_dir):
        try:
            figures = model_figures(load_metadata(models_dir / version))
        except (OSError, ValueError) as error:
            figures = f"unreadable: {error}"
        marks = [link for link, named in (("current", current), ("latest", latest)) if named == version]
        lines.append(f"{'*' if version == current else ' '} {version:<28}{figures}  {' '.join(marks)}")
    return "\n".join(lines)


def model_figures(metadata: ModelMetadata) -> str:
    metrics = metadata.metrics
    cv_auc = f"{metrics.cv_roc_auc_mean:.4f} ± {metrics.cv_roc_auc_std:.4f}"
    low, high = metrics.test_accuracy_interval
    accuracy = f"{metrics.test_accuracy:.2%} [{low:.2%}, {high:.2%}]"
    brier = f"{metrics.test_brier:.4f}"
    return f"{cv_auc:<17}{metrics.test_roc_auc:>8.4f}  {accuracy:<42}{brier:>6}{metadata.trees:>7}"


# ---- Releases: listing, checking, switching ------------------------------------------


def releases(releases_dir: Path) -> list[str]:
    """Release ids, oldest first: by the build time in their manifests, which
    tells apart two releases built within the second that their ids name."""

    def built_at(release: str) -> str:
        try:
            return read_manifest(releases_dir, release)["built_at"]
        except (OSError, ValueError, KeyError):
            return ""

    return sorted(folders_in(releases_dir), key=lambda name: (name[:16], built_at(name), name))


def current_release(releases_dir: Path) -> str | None:
    return linked(releases_dir)


def read_manifest(releases_dir: Path, release: str) -> dict:
    return json.loads((releases_dir / release / MANIFEST_FILE).read_text())


def problems(releases_dir: Path, release: str) -> list[str]:
    """How `release` differs from its manifest (diabetes/serving.py's
    `release_problems`); empty when it is what it was sealed as."""
    return release_problems(str(releases_dir / release))


def refuse_unless_as_sealed(releases_dir: Path, release: str):
    found = problems(releases_dir, release)
    if found:
        raise Refused(f"release {release} does not match its manifest: {problems_summary(found)}")


def check_release(releases_dir: Path, release: str | None = None, serving_only: bool = False) -> str:
    """The release (the current one by default) if it matches its manifest
    and, with `serving_only`, carries nothing of its model version but what
    serving needs; else Refused."""
    release = release or current_release(releases_dir)
    if not release or not (releases_dir / release).is_dir():
        raise Refused(f"no release {release or CURRENT_LINK} in {releases_dir}")
    refuse_unless_as_sealed(releases_dir, release)
    extra = training_record(releases_dir / release) if serving_only else []
    if extra:
        raise Refused(
            f"release {release} carries its model version's training record ({', '.join(extra)}), "
            "as releases sealed before serving-only releases did: `make serve` builds one without it"
        )
    return release


def serve(releases_dir: Path, release: str, models_dir: Path | None = None):
    """Make `release` current, and the models' `current` link its model version."""
    point_link(releases_dir, CURRENT_LINK, release)
    if models_dir is not None:
        version = read_manifest(releases_dir, release)["model_version"]
        if (models_dir / version).is_dir():
            point_link(models_dir, CURRENT_LINK, version)


def rollback_release(releases_dir: Path, models_dir: Path | None = None) -> str:
    """Serve the release before the current one, code and model together,
    once its files still match its manifest and its model passes its checks."""
    release = the_one_before(releases(releases_dir), current_release(releases_dir), "release")
    refuse_unless_as_sealed(releases_dir, release)
    check_model(releases_dir / release / MODEL_DIR, read_manifest(releases_dir, release)["model_version"])
    serve(releases_dir, release, models_dir)
    return release


def describe_releases(releases_dir: Path) -> tuple[str, list[str]]:
    """One line per release: id, model version, code commit (+ when the tree
    had uncommitted changes), when built, checks passed; * marks the current
    one. Under a release that does not match its manifest, a line saying
    REFUSED and how; under one sealed before manifests recorded links, a
    note. And the ids of the releases refused."""
    current = current_release(releases_dir)
    lines = [f"  {'release':<27}{'model version':<27}{'code commit':<19}{'built (UTC)':<21}checks passed"]
    refused = []
    for release in releases(releases_dir):
        found = problems(releases_dir, release)
        try:
            manifest = read_manifest(releases_dir, release)
            figures = release_figures(manifest)
            old_format = manifest.get("format", 1) < MANIFEST_FORMAT
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            figures, old_format = f"unreadable: {error}", False
        lines.append(f"{'*' if release == current else ' '} {release:<27}{figures}")
        if found:
            refused.append(release)
            lines.append(f"    REFUSED, does not match its manifest: {problems_summary(found)}")
        elif old_format:
            lines.append("    sealed before manifests listed links: checked as holding none, and it holds none")
    return "\n".join(lines), refused


def release_figures(manifest: dict) -> str:
    commit = (manifest["commit"] or "unknown")[:12] + ("+dirty" if manifest["dirty"] else "")
    return (
        f"{manifest['model_version']:<27}{commit:<19}{manifest['built_at'][:19]:<21}"
        f"{len(manifest['checks_passed'])}: {', '.join(manifest['checks_passed'])}"
    )


# ---- Releases: building one from a model version --------------------------------------


def stage(releases_dir: Path, script: Path, notebook: Path, package: Path, model: Path) -> Path:
    """Copy what will run into `releases_dir/.staging` and check that the
    model copy matches its sha256; the checks and the seal come next."""
    staging = releases_dir / STAGING
    make_writable(staging)
    shutil.rmtree(staging, ignore_errors=True)
    # The owner's alone from the start, whatever the umask: nothing in it can be read by others.
    staging.mkdir(parents=True, mode=0o700)
    staging.chmod(0o700)
    shutil.copy2(script, staging / SCRIPT_FILE)
    shutil.copy2(notebook, staging / NOTEBOOK_FILE)
    shutil.copytree(
        package,
        staging / PACKAGE_DIR / package.name,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "*.egg-info"),
    )
    model = model.resolve()
    copy_serving_model(model, staging / MODEL_DIR)
    (staging / SETTINGS_FILE).write_text(json.dumps(resolved_settings(notebook), indent=2) + "\n")
    metadata = verified_model_copy(staging / MODEL_DIR)
    if metadata.version != model.name:
        raise Refused(f"folder {model.name} holds model version {metadata.version}")
    commit, dirty = git_state(Path.cwd())
    source = {
        "commit": commit,
        "dirty": dirty,
        "model_version": metadata.version,
        "model_sha256": metadata.model_sha256,
        "sources": {"script": str(script), "notebook": str(notebook), "package": str(package), "model": str(model)},
        "dependency_locks": {name: sha256_of_file(name) for name in DEPENDENCY_LOCKS if Path(name).exists()},
    }
    (staging / SOURCE_FILE).write_text(json.dumps(source))
    return staging


def git_state(project: Path) -> tuple[str | None, bool | None]:
    """The commit checked out, and whether the tree differs from it (None, None outside git)."""

    def git(*arguments):
        return subprocess.run(["git", "-C", str(project), *arguments], capture_output=True, text=True, timeout=30)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return head.stdout.strip(), bool(status.stdout.strip())


def resolved_settings(notebook: Path) -> dict:
    """The endpoint notebook's parameters with the environment's overrides, as
    the service reads them; the model is the release's own copy."""
    from diabetes.settings import notebook_defaults, override_from_environment

    settings = override_from_environment(notebook_defaults(str(notebook)))
    settings["model_dir"] = MODEL_DIR
    for name in SECRET_SETTINGS:
        if name in settings:
            settings[name] = "(set)" if settings[name] else ""
    return settings


def model_file_name(model_dir: Path) -> str:
    """The model file a version's metadata names, as a plain name in its folder."""
    return Path(load_metadata(model_dir).model_file).name


def copy_serving_model(version_dir: Path, destination: Path):
    """What serving needs of a model version: its model file and its
    metadata (the model card). Its training rows, test predictions and
    executed notebooks stay in the version's folder."""
    destination.mkdir()
    shutil.copy2(version_dir / METADATA_FILE, destination / METADATA_FILE)
    try:
        model_file = model_file_name(version_dir)
    except ValueError as error:
        raise Refused(f"cannot read {version_dir / METADATA_FILE}: {error}") from error
    if model_file in ("", ".", "..", METADATA_FILE):
        raise Refused(f"{version_dir / METADATA_FILE} names no model file")
    shutil.copy2(version_dir / model_file, destination / model_file)


def training_record(release_dir: Path) -> list[str]:
    """Files of a release's model folder that serving does not need (the
    training rows, predictions and notebooks that releases sealed before
    they were left out carry), by name."""
    model_dir = release_dir / MODEL_DIR
    try:
        model_file = model_file_name(model_dir)
    except (OSError, ValueError):
        model_file = None
    return sorted(
        path.relative_to(release_dir).as_posix()
        for path in model_dir.rglob("*")
        if path.name not in (METADATA_FILE, model_file) and not path.is_dir()
    )


def verified_model_copy(model_dir: Path) -> ModelMetadata:
    """The metadata of a copied model version, which holds the model's
    contract, and whose file matches its sha256 (read without XGBoost, which
    is slow to import: the checks load it)."""
    try:
        metadata = load_metadata(model_dir)
        model_file = model_dir / Path(metadata.model_file).name
        if sha256_of_file(str(model_file)) != metadata.model_sha256:
            raise Refused(f"{model_file} does not match the sha256 in its metadata")
        return metadata
    except (OSError, ValueError) as error:
        raise Refused(f"cannot read the model in {model_dir}: {error}") from error


def seal(releases_dir: Path, passed: list[str], models_dir: Path | None = None) -> str:
    """Check the staged release's model, write its manifest, make it
    read-only, give it its id and serve it (switch `current`)."""
    staging = releases_dir / STAGING
    if not (staging / SOURCE_FILE).exists():
        raise Refused(f"nothing staged in {staging}")
    source = json.loads((staging / SOURCE_FILE).read_text())
    (staging / SOURCE_FILE).unlink()
    checks = [*passed, *check_model(staging / MODEL_DIR, source["model_version"])]
    # Bytecode compiled now, so that workers never write into the release (they cannot: it is read-only).
    compileall.compile_dir(
        staging, quiet=1, force=True, invalidation_mode=compileall.py_compile.PycInvalidationMode.CHECKED_HASH
    )
    remove_empty_folders(staging)
    files, links = staged_entries(staging)
    content = content_sha256(files, links)
    built_at = datetime.now(UTC)
    release = f"{built_at:%Y%m%dT%H%M%SZ}-{content[:8]}"
    manifest = {
        "release": release,
        "built_at": built_at.isoformat(timespec="microseconds"),
        "commit": source["commit"],
        "dirty": source["dirty"],
        "model_version": source["model_version"],
        "model_sha256": source["model_sha256"],
        "checks_passed": checks,
        "python": sys.version.split()[0],
        "dependency_locks": source["dependency_locks"],
        "sources": source["sources"],
        "content_sha256": content,
        "format": MANIFEST_FORMAT,
        "files": files,
        "links": links,
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    make_read_only(staging)
    staging.rename(releases_dir / release)
    found = problems(releases_dir, release)
    if found:
        raise Refused(f"release {release} does not match its manifest once sealed: {problems_summary(found)}")
    serve(releases_dir, release, models_dir)
    # Releases sealed before sealing made them the owner's alone: theirs too
    # (it changes no content, so no manifest).
    for older in releases(releases_dir):
        try:
            make_read_only(releases_dir / older)
        except OSError as error:
            print(f"release {older} keeps its modes: {error}", file=sys.stderr)
    return release


def staged_entries(staging: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The staged release's files and links, refused if anything else is
    there or a link leads out of it."""
    files, links, _, others = release_entries(str(staging))
    if others:
        raise Refused(f"the staged release holds what is neither a file, a folder nor a link: {others[:5]}")
    resolved_staging = str(staging.resolve())
    leaving = [name for name in links if leaves(resolved_staging, name)]
    if leaving:
        raise Refused(f"the staged release holds links leading out of it: {', '.join(leaving[:5])}")
    return files, links


def remove_empty_folders(folder: Path):
    """Folders that hold nothing, which a manifest that implies folders cannot name."""
    for path in sorted((path for path in folder.rglob("*") if path.is_dir() and not path.is_symlink()), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()


def entries_of(folder: Path):
    """Every entry under `folder` and `folder` itself, never through a link (which chmod would follow)."""
    return [path for path in [*folder.rglob("*"), folder] if not path.is_symlink()]


def make_read_only(folder: Path):
    """Read-only and the owner's alone, whatever the umask: files 0400 (0500
    when their owner could run them), folders 0500."""
    for path in entries_of(folder):
        mode = path.lstat().st_mode
        path.chmod(0o500 if stat.S_ISDIR(mode) or mode & stat.S_IXUSR else 0o400)


def make_writable(folder: Path):
    """Owner write access back, so that a release can be deleted."""
    if folder.exists():
        for path in entries_of(folder):
            path.chmod(path.lstat().st_mode | 0o200)


# ---- The command line ----------------------------------------------------------------


def run_models(args) -> int:
    if args.verb == "list":
        print(describe_models(args.folder))
    elif args.verb == "promote":
        print(f"serving version {promote(args.folder, args.version)}")
    else:
        print(f"rolled back: serving version {rollback_model(args.folder)}")
    return 0


def run_releases(args) -> int:
    if args.verb == "list":
        listing, refused = describe_releases(args.folder)
        print(listing)
        if refused:
            print(
                f"{len(refused)} release(s) do not match their manifests: make rollback and the service's "
                f"start refuse them ({', '.join(refused)})",
                file=sys.stderr,
            )
            return 1
    elif args.verb == "stage":
        args.folder.mkdir(parents=True, exist_ok=True)
        print(stage(args.folder, args.script, args.notebook, args.package, args.model))
    elif args.verb == "seal":
        print(f"serving release {seal(args.folder, args.passed, args.models_dir)}")
    elif args.verb == "check":
        print(f"release {check_release(args.folder, args.release, args.serving_only)} matches its manifest")
    elif args.verb == "current":
        print(current_release(args.folder) or "")
    else:
        print(f"rolled back: serving release {rollback_release(args.folder, args.models_dir)}")
    return 0


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diabetes.versions", description="List, check, switch and roll back model versions and releases."
    )
    kinds = parser.add_subparsers(dest="kind", required=True)
    models = kinds.add_parser("models", help="model versions (build/models)")
    models.add_argument("verb", choices=["list", "promote", "rollback"])
    models.add_argument("folder", type=Path, metavar="MODELS_DIR")
    models.add_argument("version", nargs="?", default=LATEST_LINK, help="the version to promote (default: latest)")
    models.set_defaults(run=run_models, noun="version")
    releases = kinds.add_parser("releases", help="releases (build/releases)")
    releases.add_argument("verb", choices=["list", "rollback", "stage", "seal", "current", "check"])
    releases.add_argument("folder", type=Path, metavar="RELEASES_DIR")
    releases.add_argument("--script", type=Path)
    releases.add_argument("--notebook", type=Path)
    releases.add_argument("--package", type=Path)
    releases.add_argument("--model", type=Path)
    releases.add_argument("--passed", nargs="*", default=[], help="checks the staged release passed")
    releases.add_argument("--models-dir", type=Path, help="keep this folder's `current` link on the served model")
    releases.add_argument("--release", help="the release to check (by default the current one)")
    releases.add_argument(
        "--serving-only", action="store_true", help="refuse a release that carries its model's training record"
    )
    releases.set_defaults(run=run_releases, noun="release")
    return parser


def main(argv) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (Refused, ModelRefused, OSError) as error:
        print(f"refused: {error}; still serving {args.noun} {linked(args.folder)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

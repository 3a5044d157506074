"""Releases: everything the service runs, built once, checked, then served as it is.

    python -m diabetes.releases stage    RELEASES_DIR --script S --notebook N --package DIR --model VERSION_DIR
    python -m diabetes.releases seal     RELEASES_DIR --passed CHECK... [--models-dir MODELS_DIR]
    python -m diabetes.releases list     RELEASES_DIR
    python -m diabetes.releases rollback RELEASES_DIR [--models-dir MODELS_DIR]
    python -m diabetes.releases current  RELEASES_DIR
    python -m diabetes.releases check    RELEASES_DIR [--release ID] [--serving-only]

A release is a folder that is never changed once sealed:

    build/releases/
        20261130T010203Z-1a2b3c4d/
            serve.py         the script nbconvert generated from the endpoint notebook
            serve.ipynb      that notebook, which papermill runs against the release to check it
            package/         the project's package (diabetes/) as it was, first on the workers' path
            model/           what serving needs of the model version: its model file (its sha256 is
                             checked at every load) and metadata.json (the model card); none of its
                             training rows, test predictions or executed notebooks
            settings.json    the service's settings as resolved at build (secrets left out)
            manifest.json    every entry: files with their sha256, links with their target (folders
                             are implied); the git commit and whether the tree had uncommitted
                             changes, the model version, when it was built, the checks it passed
        current -> 20261130T010203Z-1a2b3c4d

`make serve` stages a release in `.staging`, runs the endpoint notebook against
it, then seals it: the model is checked again, the manifest written, the folder
made read-only and readable by its owner only (files 0400, folders 0500,
whatever the umask) and renamed to its id, and `current` switched to it with a
rename. gunicorn's workers import the script and the package through `current`
only, so nothing of the working tree reaches them.

A release is what its manifest says, every time it is used: a file added,
missing or changed, a link added, changed or leading out of it, refuses it
(diabetes/serving.py's `release_problems`). `list` marks such a release
REFUSED and fails; `rollback` will not switch to it; the service will not
start from it, nor start a worker on it (diabetes/gunicorn_config.py).
"""

import argparse
import compileall
import hashlib
import json
import shutil
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from diabetes import model_metadata
from diabetes.model_metadata import ModelMetadata
from diabetes.serving import (
    MANIFEST_FORMAT,
    RELEASE_MANIFEST,
    content_sha256,
    leaves,
    release_entries,
    release_problems,
)
from diabetes.serving import RELEASE_PACKAGE_DIR as PACKAGE_DIR
from diabetes.serving import summary as problems_summary

CURRENT_LINK = "current"
STAGING = ".staging"
MANIFEST_FILE = RELEASE_MANIFEST
SETTINGS_FILE = "settings.json"
SCRIPT_FILE = "serve.py"
NOTEBOOK_FILE = "serve.ipynb"
MODEL_DIR = "model"
# Settings that are secrets: the release records whether they are set, never their value.
SECRET_SETTINGS = ("api_key",)
# Files whose content pins what the release runs on, recorded by hash in the manifest.
DEPENDENCY_LOCKS = ("requirements.txt", "package-lock.json")


class ReleaseRefused(Exception):
    """A release cannot be built, sealed or served; the message says why."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# What a release keeps of its model version: the model file (metadata.json names
# it) and its metadata, which is also the model card GET /metadata serves.
MODEL_METADATA = model_metadata.METADATA_FILE


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


def copy_package(source: Path, destination: Path):
    """The package's sources, without the bytecode a working tree collects."""
    shutil.copytree(
        source, destination / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*", "*.egg-info")
    )


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
    copy_package(package, staging / PACKAGE_DIR)
    model = model.resolve()
    copy_serving_model(model, staging / MODEL_DIR)
    (staging / SETTINGS_FILE).write_text(json.dumps(resolved_settings(notebook), indent=2) + "\n")
    metadata = verified_model_copy(staging / MODEL_DIR)
    if metadata.version != model.name:
        raise ReleaseRefused(f"folder {model.name} holds model version {metadata.version}")
    commit, dirty = git_state(Path.cwd())
    (staging / ".source.json").write_text(
        json.dumps(
            {
                "commit": commit,
                "dirty": dirty,
                "model_version": metadata.version,
                "model_sha256": metadata.model_sha256,
                "sources": {
                    "script": str(script),
                    "notebook": str(notebook),
                    "package": str(package),
                    "model": str(model),
                },
                "dependency_locks": {name: sha256_file(Path(name)) for name in DEPENDENCY_LOCKS if Path(name).exists()},
            }
        )
    )
    return staging


def copy_serving_model(version_dir: Path, destination: Path):
    """What serving needs of a model version: its model file and its
    metadata (the model card). Its training rows, test predictions and
    executed notebooks stay in the version's folder."""
    destination.mkdir()
    shutil.copy2(version_dir / MODEL_METADATA, destination / MODEL_METADATA)
    try:
        model_file = Path(model_metadata.read(version_dir).model_file).name
    except ValueError as error:
        raise ReleaseRefused(f"cannot read {version_dir / MODEL_METADATA}: {error}") from error
    if model_file in ("", ".", "..", MODEL_METADATA):
        raise ReleaseRefused(f"{version_dir / MODEL_METADATA} names no model file")
    shutil.copy2(version_dir / model_file, destination / model_file)


def training_record(release_dir: Path) -> list[str]:
    """Files of a release's model folder that serving does not need (the
    training rows, predictions and notebooks that releases sealed before
    they were left out carry), by name."""
    model_dir = release_dir / MODEL_DIR
    try:
        model_file = Path(model_metadata.read(model_dir).model_file).name
    except (OSError, ValueError):
        model_file = None
    return sorted(
        path.relative_to(release_dir).as_posix()
        for path in model_dir.rglob("*")
        if path.name not in (MODEL_METADATA, model_file) and not path.is_dir()
    )


def verified_model_copy(model_dir: Path) -> ModelMetadata:
    """The metadata of a copied model version, which holds the model's
    contract, and whose file matches its sha256 (read without XGBoost, which
    is slow to import: the checks load it)."""
    try:
        metadata = model_metadata.read(model_dir)
        model_file = model_dir / Path(metadata.model_file).name
        if sha256_file(model_file) != metadata.model_sha256:
            raise ReleaseRefused(f"{model_file} does not match the sha256 in its metadata")
        return metadata
    except (OSError, ValueError) as error:
        raise ReleaseRefused(f"cannot read the model in {model_dir}: {error}") from error


def model_checks(model_dir: Path, version: str) -> list[str]:
    """The model's checks, as a promotion runs them; the names of those passed."""
    from diabetes.model_store import ModelRefused
    from diabetes.prediction import load_bundle

    try:
        bundle = load_bundle(model_dir)
    except ModelRefused as error:
        raise ReleaseRefused(str(error)) from error
    if bundle.version != version:
        raise ReleaseRefused(f"the release's model is version {bundle.version}, not {version}")
    if not bundle.sample_check_passes():
        raise ReleaseRefused(f"model {version} does not give its sample row the probability recorded in training")
    return ["model matches its sha256", "sample prediction as recorded"]


def seal(releases_dir: Path, passed: list[str], models_dir: Path | None = None) -> str:
    """Check the staged release's model, write its manifest, make it
    read-only, give it its id and serve it (switch `current`)."""
    staging = releases_dir / STAGING
    if not (staging / ".source.json").exists():
        raise ReleaseRefused(f"nothing staged in {staging}")
    source = json.loads((staging / ".source.json").read_text())
    (staging / ".source.json").unlink()
    checks = [*passed, *model_checks(staging / MODEL_DIR, source["model_version"])]
    # Bytecode compiled now, so that workers never write into the release (they cannot: it is read-only).
    compileall.compile_dir(
        staging, quiet=1, force=True, invalidation_mode=compileall.py_compile.PycInvalidationMode.CHECKED_HASH
    )
    remove_empty_folders(staging)
    files, links, _, others = release_entries(str(staging))
    if others:
        raise ReleaseRefused(f"the staged release holds what is neither a file, a folder nor a link: {others[:5]}")
    resolved_staging = str(staging.resolve())
    leaving = [name for name in links if leaves(resolved_staging, name)]
    if leaving:
        raise ReleaseRefused(f"the staged release holds links leading out of it: {', '.join(leaving[:5])}")
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
    problems = release_problems(str(releases_dir / release))
    if problems:
        raise ReleaseRefused(f"release {release} does not match its manifest once sealed: {problems_summary(problems)}")
    serve(releases_dir, release, models_dir)
    # Releases sealed before sealing made them the owner's alone: theirs too
    # (it changes no content, so no manifest).
    for older in releases(releases_dir):
        try:
            make_read_only(releases_dir / older)
        except OSError as error:
            print(f"release {older} keeps its modes: {error}", file=sys.stderr)
    return release


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


def releases(releases_dir: Path) -> list[str]:
    """Release ids, oldest first: by the build time in their manifests, which
    tells apart two releases built within the second that their ids name."""
    if not releases_dir.is_dir():
        return []

    def built_at(release: str) -> str:
        try:
            return read_manifest(releases_dir, release)["built_at"]
        except (OSError, ValueError, KeyError):
            return ""

    names = [
        path.name
        for path in releases_dir.iterdir()
        if path.is_dir() and not path.is_symlink() and not path.name.startswith(".")
    ]
    return sorted(names, key=lambda name: (name[:16], built_at(name), name))


def current_release(releases_dir: Path) -> str | None:
    link = releases_dir / CURRENT_LINK
    return link.resolve().name if link.is_symlink() else None


def read_manifest(releases_dir: Path, release: str) -> dict:
    return json.loads((releases_dir / release / MANIFEST_FILE).read_text())


def problems(releases_dir: Path, release: str) -> list[str]:
    """How `release` differs from its manifest (diabetes/serving.py's
    `release_problems`); empty when it is what it was sealed as."""
    return release_problems(str(releases_dir / release))


def check(releases_dir: Path, release: str | None = None, serving_only: bool = False) -> str:
    """The release (the current one by default) if it matches its manifest
    and, with `serving_only`, carries nothing of its model version but what
    serving needs; else ReleaseRefused."""
    release = release or current_release(releases_dir)
    if not release or not (releases_dir / release).is_dir():
        raise ReleaseRefused(f"no release {release or CURRENT_LINK} in {releases_dir}")
    found = problems(releases_dir, release)
    if found:
        raise ReleaseRefused(f"release {release} does not match its manifest: {problems_summary(found)}")
    extra = training_record(releases_dir / release) if serving_only else []
    if extra:
        raise ReleaseRefused(
            f"release {release} carries its model version's training record ({', '.join(extra)}), "
            "as releases sealed before serving-only releases did: `make serve` builds one without it"
        )
    return release


def serve(releases_dir: Path, release: str, models_dir: Path | None = None):
    """Point `current` at `release` with a rename (a reader sees the old link
    or the new one), and the models' `current` link at its model version."""
    next_link = releases_dir / f".{CURRENT_LINK}.next"
    next_link.unlink(missing_ok=True)
    next_link.symlink_to(release, target_is_directory=True)
    next_link.rename(releases_dir / CURRENT_LINK)
    if models_dir is not None:
        from diabetes.model_store import CURRENT_LINK as MODEL_CURRENT_LINK
        from diabetes.model_store import point_link

        version = read_manifest(releases_dir, release)["model_version"]
        if (models_dir / version).is_dir():
            point_link(models_dir, MODEL_CURRENT_LINK, version)


def rollback(releases_dir: Path, models_dir: Path | None = None) -> str:
    """Serve the release before the current one, code and model together,
    once its files still match its manifest and its model passes its checks."""
    current = current_release(releases_dir)
    listed = releases(releases_dir)
    older = listed[: listed.index(current)] if current in listed else listed
    if not older:
        raise ReleaseRefused(f"no release older than {current} to roll back to")
    release = older[-1]
    found = problems(releases_dir, release)
    if found:
        raise ReleaseRefused(f"release {release} does not match its manifest: {problems_summary(found)}")
    model_checks(releases_dir / release / MODEL_DIR, read_manifest(releases_dir, release)["model_version"])
    serve(releases_dir, release, models_dir)
    return release


def describe(releases_dir: Path) -> tuple[str, list[str]]:
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
            commit = (manifest["commit"] or "unknown")[:12] + ("+dirty" if manifest["dirty"] else "")
            figures = (
                f"{manifest['model_version']:<27}{commit:<19}{manifest['built_at'][:19]:<21}"
                f"{len(manifest['checks_passed'])}: {', '.join(manifest['checks_passed'])}"
            )
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


def main(argv) -> int:
    parser = argparse.ArgumentParser(description="Build, check, list and roll back releases.")
    parser.add_argument("command", choices=["stage", "seal", "list", "rollback", "current", "check"])
    parser.add_argument("releases_dir", type=Path)
    parser.add_argument("--script", type=Path)
    parser.add_argument("--notebook", type=Path)
    parser.add_argument("--package", type=Path)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--passed", nargs="*", default=[], help="checks the staged release passed")
    parser.add_argument("--models-dir", type=Path, help="keep this folder's `current` link on the served model")
    parser.add_argument("--release", help="the release to check (by default the current one)")
    parser.add_argument(
        "--serving-only", action="store_true", help="refuse a release that carries its model's training record"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "stage":
            args.releases_dir.mkdir(parents=True, exist_ok=True)
            print(stage(args.releases_dir, args.script, args.notebook, args.package, args.model))
        elif args.command == "seal":
            release = seal(args.releases_dir, args.passed, args.models_dir)
            print(f"serving release {release}")
        elif args.command == "list":
            listing, refused = describe(args.releases_dir)
            print(listing)
            if refused:
                print(
                    f"{len(refused)} release(s) do not match their manifests: make rollback and the service's "
                    f"start refuse them ({', '.join(refused)})",
                    file=sys.stderr,
                )
                return 1
        elif args.command == "check":
            print(f"release {check(args.releases_dir, args.release, args.serving_only)} matches its manifest")
        elif args.command == "current":
            print(current_release(args.releases_dir) or "")
        else:
            print(f"rolled back: serving release {rollback(args.releases_dir, args.models_dir)}")
    except (ReleaseRefused, OSError) as error:
        print(f"refused: {error}; still serving release {current_release(args.releases_dir)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The model versions on disk: list them, promote one to be served, roll back.

    python -m diabetes.models list     MODELS_DIR
    python -m diabetes.models promote  MODELS_DIR VERSION|latest
    python -m diabetes.models rollback MODELS_DIR

A version is promoted (the `current` link switched to it) only once it loads,
matches its sha256 and passes its sample check; otherwise the command says why,
exits non-zero, and `current` stays as it was. Reloading the running service
is the Makefile's part (`make serve`, `make rollback`).
"""

import argparse
import sys
from pathlib import Path

from diabetes.model_store import CURRENT_LINK, LATEST_LINK, ModelRefused, load_metadata, point_link
from diabetes.prediction import load_bundle

# The original article's test accuracy, on the same stratified 33% split (random_state 0).
ARTICLE_TEST_ACCURACY = 0.7874


def versions(models_dir: Path) -> list[str]:
    """Version folders, oldest first (their names start with the training time)."""
    return sorted(
        path.name
        for path in models_dir.iterdir()
        if path.is_dir() and not path.is_symlink() and not path.name.startswith(".")
    )


def linked_version(models_dir: Path, link: str) -> str | None:
    path = models_dir / link
    return path.resolve().name if path.is_symlink() else None


def check(models_dir: Path, version: str):
    """Refuse a version that does not load, is not what its folder says, or
    fails its sample check."""
    bundle = load_bundle(models_dir / version)
    if bundle.version != version:
        raise ModelRefused(f"folder {version} holds model version {bundle.version}")
    if not bundle.sample_check_passes():
        raise ModelRefused(f"version {version} does not give its sample row the probability recorded in training")


def promote(models_dir: Path, version: str) -> str:
    version = linked_version(models_dir, version) or version
    check(models_dir, version)
    point_link(models_dir, CURRENT_LINK, version)
    return version


def rollback(models_dir: Path) -> str:
    current = linked_version(models_dir, CURRENT_LINK)
    older = [version for version in versions(models_dir) if current is None or version < current]
    if not older:
        raise ModelRefused(f"no version older than {current} to roll back to")
    return promote(models_dir, older[-1])


def describe(models_dir: Path) -> str:
    """One line per version: the cross-validated ROC AUC (mean ± spread over
    the folds of every seed), the test ROC AUC, the test accuracy with its 95%
    bootstrap interval beside the original article's, the test Brier score."""
    current, latest = linked_version(models_dir, CURRENT_LINK), linked_version(models_dir, LATEST_LINK)
    lines = [
        f"{'':2}{'version':<28}{'CV AUC':<17}{'test AUC':>8}  "
        f"{'accuracy [95% interval] (article ' + format(ARTICLE_TEST_ACCURACY, '.2%') + ')':<42}"
        f"{'Brier':>6}{'trees':>7}"
    ]
    for version in versions(models_dir):
        try:
            metadata = load_metadata(models_dir / version)
            metrics = metadata.metrics
            cv_auc = f"{metrics.cv_roc_auc_mean:.4f} ± {metrics.cv_roc_auc_std:.4f}"
            low, high = metrics.test_accuracy_interval
            accuracy = f"{metrics.test_accuracy:.2%} [{low:.2%}, {high:.2%}]"
            brier = f"{metrics.test_brier:.4f}"
            figures = f"{cv_auc:<17}{metrics.test_roc_auc:>8.4f}  {accuracy:<42}{brier:>6}{metadata.trees:>7}"
        except (OSError, ValueError) as error:
            figures = f"unreadable: {error}"
        marks = [name for name, linked in (("current", current), ("latest", latest)) if linked == version]
        lines.append(f"{'*' if version == current else ' '} {version:<28}{figures}  {' '.join(marks)}")
    return "\n".join(lines)


def main(argv) -> int:
    parser = argparse.ArgumentParser(description="List, promote and roll back model versions.")
    parser.add_argument("command", choices=["list", "promote", "rollback"])
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("version", nargs="?", default=LATEST_LINK)
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print(describe(args.models_dir))
        elif args.command == "promote":
            print(f"serving version {promote(args.models_dir, args.version)}")
        else:
            print(f"rolled back: serving version {rollback(args.models_dir)}")
    except (ModelRefused, OSError) as error:
        print(f"refused: {error}; still serving {linked_version(args.models_dir, CURRENT_LINK)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

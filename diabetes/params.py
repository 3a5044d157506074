"""Refuse parameter files that name a parameter the notebook does not have.

papermill only warns about an unknown name and runs with the default, so a
typo in a parameters file would silently train another model.

    python -m diabetes.params notebooks/train.ipynb params/train.yaml [more.yaml ...]
"""

import sys

import papermill
import yaml


def unknown_parameters(notebook_path, parameter_files) -> list[str]:
    known = set(papermill.inspect_notebook(notebook_path))
    given = []
    for path in parameter_files:
        with open(path) as file:
            given += [(path, name) for name in (yaml.safe_load(file) or {})]
    return [f"{path}: {name}" for path, name in given if name not in known]


def main(argv):
    notebook_path, *parameter_files = argv
    unknown = unknown_parameters(notebook_path, parameter_files)
    if unknown:
        known = ", ".join(papermill.inspect_notebook(notebook_path))
        print(f"unknown parameters for {notebook_path}:", *unknown, f"(it has: {known})", sep="\n  ", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

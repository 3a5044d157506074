"""What the project says of itself, held to the tree: the package docstring's
list of modules, the README's file list, the Makefile's prerequisites of a
model (taken from what training imports), and the commit hook that keeps
subjects short. None needs a model: each failure says what to add or remove."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from diabetes.notebook_imports import modules_imported_by
from tests.conftest import PROJECT, make

PACKAGE = PROJECT / "diabetes"
TRAINING_NOTEBOOK = PROJECT / "notebooks" / "train.ipynb"
# "    name  what it does": one module's line in the package docstring.
DOCSTRING_ENTRY = re.compile(r"^    (\w+) {2,}(\S.*)$")
HOOKS = PROJECT / ".githooks"
SUBJECT_LIMIT = 72


def package_modules() -> set[str]:
    return {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}


def differences(where: str, listed: list[str], present: set[str], spell=lambda name: name) -> str:
    """What to add to, remove from and list only once in `where`, so that it names what is `present`."""
    missing = sorted(present - set(listed))
    stale = sorted(set(listed) - present)
    twice = sorted({name for name in listed if listed.count(name) > 1})
    return "; ".join(
        f"{what} {', '.join(map(spell, names))}"
        for what, names in ((f"add to {where}:", missing), ("remove:", stale), ("list once only:", twice))
        if names
    )


def test_the_package_docstring_lists_every_module_once_with_a_line_of_its_own():
    docstring = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()), clean=False)
    lines = docstring.splitlines()
    entries = [match for line in lines if (match := DOCSTRING_ENTRY.match(line))]
    not_entries = [line for line in lines if line.startswith(" ") and not DOCSTRING_ENTRY.match(line)]
    assert not not_entries, f"each module's line in diabetes/__init__.py is '    name  what it does': {not_entries}"
    listed = [entry[1] for entry in entries]
    message = differences(
        "diabetes/__init__.py's list (a line '    name  what it does' each)", listed, package_modules()
    )
    assert not message, message


def what_is_where() -> list[str]:
    """The lines of the README's file tree (the code block under "What is where")."""
    section = (PROJECT / "README.md").read_text().split("\n## What is where\n", 1)[1]
    return section.split("```", 2)[1].splitlines()[1:]


def test_the_readmes_file_list_names_every_tracked_top_level_folder():
    tracked = subprocess.run(
        ["git", "-C", str(PROJECT), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    folders = {path.split("/", 1)[0] for path in tracked if "/" in path}
    named = {match[1] for line in what_is_where() if (match := re.match(r"([.\w-]+)/", line))}
    missing = sorted(folders - named)
    assert not missing, "add to the README's What is where a line for: " + ", ".join(f"{name}/" for name in missing)


def test_the_readmes_file_list_names_every_module_of_the_package_and_no_other():
    lines = what_is_where()
    start = next(index for index, line in enumerate(lines) if line.startswith("diabetes/"))
    end = next(index for index, line in enumerate(lines[start + 1 :], start + 1) if not line.startswith(" "))
    # diabetes/__init__.py, named for its docstring, is the package itself.
    named = [name for name in re.findall(r"\b(\w+)\.py\b", "\n".join(lines[start:end])) if name != "__init__"]
    message = differences("the README's What is where, under diabetes/", named, package_modules(), "{}.py".format)
    assert not message, message


def modules_python_loads_for(notebook) -> set[str]:
    """The package's modules that Python loads when it runs a notebook's
    import statements (those at the top of its cells), in a child process."""
    cells = [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]
    imports = [
        ast.unparse(node)
        for cell in cells
        for node in ast.parse("".join(cell["source"])).body
        if isinstance(node, ast.Import | ast.ImportFrom)
    ]
    script = "\n".join([*imports, "import sys", "print(' '.join(sorted(sys.modules)))"])
    loaded = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, check=True)
    return {name.split(".")[1] for name in loaded.stdout.split() if name.startswith("diabetes.")}


# Times in the past: make waits for a file whose time is in the future.
HOUR_AGO = time.time() - 3600
INSTALLED, MODEL_MADE, CHANGED = HOUR_AGO + 60, HOUR_AGO + 120, HOUR_AGO + 180


def project_copy(tmp_path):
    """What `make train` and `make setup` read, copied, with a venv and
    node_modules installed after it and a model made after that: every file
    made up to date."""
    copy = tmp_path / "project"
    for folder in ("diabetes", "notebooks", "params", "data"):
        shutil.copytree(PROJECT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    read = ("Makefile", "requirements.txt", "requirements-tracking.txt", "pyproject.toml", "package.json")
    for name in (*read, "package-lock.json"):
        shutil.copy(PROJECT / name, copy / name)
    for path in copy.rglob("*"):
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    installed = (".venv/.installed", "build/tracking-venv/.installed", "node_modules/.installed")
    for made in installed:
        (copy / made).parent.mkdir(parents=True)
        (copy / made).touch()
        os.utime(copy / made, (INSTALLED, INSTALLED))
    model_made(copy)
    return copy


def model_made(copy, when=MODEL_MADE):
    model = copy / "build" / "models" / "latest" / "metadata.json"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_text("{}")
    os.utime(model, (when, when))


def training_redone_after_a_change_to(copy, module) -> bool:
    """Whether `make train` wants to run again once `module` (a file of the
    copy) is newer than the model; the module's time is put back after."""
    os.utime(module, (CHANGED, CHANGED))
    try:
        status = make("-q", "train", project=copy, check=False).returncode
    finally:
        os.utime(module, (HOUR_AGO, HOUR_AGO))
    assert status in (0, 1), f"make -q train failed ({status})"
    return status == 1


def test_a_change_to_any_module_the_training_loads_makes_make_train_run_again(tmp_path):
    copy = project_copy(tmp_path)
    assert make("-q", "train", project=copy, check=False).returncode == 0
    loaded = modules_python_loads_for(TRAINING_NOTEBOOK)
    assert {"features", "training", "model_store"} <= loaded
    not_redone = sorted(
        name for name in loaded if not training_redone_after_a_change_to(copy, copy / f"diabetes/{name}.py")
    )
    assert not not_redone, f"make train does not run again after a change to: {not_redone}"


def test_a_change_to_a_module_the_training_never_imports_leaves_the_model_as_it_is(tmp_path):
    copy = project_copy(tmp_path)
    unused = sorted(package_modules() - {path.stem for path in modules_imported_by([TRAINING_NOTEBOOK])})
    assert "openapi" in unused
    assert not training_redone_after_a_change_to(copy, copy / "diabetes" / "openapi.py")


def test_a_module_the_training_notebook_starts_to_import_becomes_a_prerequisite_of_a_model(tmp_path):
    copy = project_copy(tmp_path)
    notebook = copy / "notebooks" / "train.ipynb"
    content = json.loads(notebook.read_text())
    content["cells"].append({"cell_type": "code", "metadata": {}, "source": ["import diabetes.openapi"], "outputs": []})
    notebook.write_text(json.dumps(content))
    os.utime(notebook, (HOUR_AGO, HOUR_AGO))
    assert make("-q", "train", project=copy, check=False).returncode == 0
    assert training_redone_after_a_change_to(copy, copy / "diabetes" / "openapi.py")


def commit(repository, message: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.org", "commit", "--allow-empty", "-m", message],
        cwd=repository,
        capture_output=True,
        text=True,
    )


@pytest.fixture()
def repository_with_the_hooks(tmp_path):
    subprocess.run(["git", "init", "--quiet", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "config", "core.hooksPath", str(HOOKS)], check=True)
    return tmp_path


def test_a_commit_subject_of_72_characters_or_more_is_refused_with_the_rule(repository_with_the_hooks):
    refused = commit(repository_with_the_hooks, "x" * SUBJECT_LIMIT + "\n\nWhy it changed.")
    assert refused.returncode != 0
    assert f"the subject has {SUBJECT_LIMIT} characters; keep it under {SUBJECT_LIMIT}" in refused.stderr


def test_a_commit_subject_under_72_characters_with_a_long_body_is_accepted(repository_with_the_hooks):
    accepted = commit(repository_with_the_hooks, "x" * (SUBJECT_LIMIT - 1) + "\n\n" + "why " * 100)
    assert accepted.returncode == 0, accepted.stderr


def hooks_path(repository) -> str:
    configured = subprocess.run(
        ["git", "-C", str(repository), "config", "core.hooksPath"], capture_output=True, text=True
    )
    return configured.stdout.strip()


def test_make_setup_enables_the_projects_hooks_only_in_its_own_git_checkout(tmp_path):
    copy = project_copy(tmp_path)
    # Unpacked inside someone else's checkout: that one's hooks are not ours to set.
    subprocess.run(["git", "init", "--quiet", str(tmp_path)], check=True)
    make("setup", project=copy)
    assert hooks_path(tmp_path) == ""
    subprocess.run(["git", "init", "--quiet", str(copy)], check=True)
    make("setup", project=copy)
    assert hooks_path(copy) == ".githooks"

"""The modules of this package that a notebook imports, directly or through
one another: the code a model is made from, so that the Makefile takes the
prerequisites of a model (`make train`) from the package rather than from a
list kept by hand.

    python3 -m diabetes.notebook_imports notebooks/train.ipynb [diabetes/params.py ...]

prints, on one line, the paths (`diabetes/name.py`) of the package's modules
that the given notebooks and modules import, the given modules included. An
import inside a function or an `if` counts: it runs when that code does. The
files are read with `ast` and nothing is imported, so that make can run it
on every call, with any python3, before the venv exists.
"""

import ast
import json
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def code_of(path: Path) -> list[str]:
    """A module's source, or each code cell of a notebook without its IPython
    lines (magics, shell escapes), which are not Python."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".ipynb":
        return [text]
    cells = [cell for cell in json.loads(text)["cells"] if cell["cell_type"] == "code"]
    return [
        "\n".join(line for line in "".join(cell["source"]).splitlines() if not line.lstrip().startswith(("%", "!")))
        for cell in cells
    ]


def imported_names(source: str) -> set[str]:
    """Every dotted name an import statement of `source` names, `from a
    import b` giving both `a` and `a.b` (b may be a module)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = f"{PACKAGE.name}.{node.module or ''}".rstrip(".") if node.level == 1 else node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def package_module(name: str) -> Path | None:
    """The file of `name` when it is a module of this package."""
    parts = name.split(".")
    if len(parts) == 2 and parts[0] == PACKAGE.name and (PACKAGE / f"{parts[1]}.py").is_file():
        return PACKAGE / f"{parts[1]}.py"
    return None


def modules_imported_by(paths: list[Path]) -> list[Path]:
    """The package's modules that `paths` import, transitively, with the
    modules among `paths` themselves; sorted."""
    found = {path.resolve() for path in paths if path.resolve().parent == PACKAGE}
    to_read = list(paths)
    while to_read:
        for source in code_of(to_read.pop()):
            for name in imported_names(source):
                module = package_module(name)
                if module is not None and module not in found:
                    found.add(module)
                    to_read.append(module)
    return sorted(found - {PACKAGE / "__init__.py"})


def main(argv=None) -> int:
    paths = [Path(argument) for argument in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        print("usage: python3 -m diabetes.notebook_imports NOTEBOOK_OR_MODULE...", file=sys.stderr)
        return 2
    root = PACKAGE.parent
    print(" ".join(str(module.relative_to(root)) for module in modules_imported_by(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

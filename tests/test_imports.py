"""How the modules of the package import each other, read from their source
(no module is imported, no model needed): none imports a private (underscore)
name of another, and no chain of imports comes back to where it started.
A name another module needs is public, named for what it does, in the module
it belongs to; a cycle means two modules that should be one, or a third.
"""

import ast
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = "diabetes"


def package_modules(root: Path = PROJECT / PACKAGE) -> dict[str, ast.Module]:
    """Dotted name -> syntax tree of every module of the package."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = ast.parse(path.read_text(), filename=str(path))
    return modules


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imported_modules(tree: ast.Module, modules) -> dict[str, str]:
    """Each local name bound to a module of the package (anywhere in the module) -> that module."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else PACKAGE
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def private_imports(modules) -> list[str]:
    """`from diabetes.x import _name` and `x._name` (x a module of the package), as file:line texts."""
    found = []
    for name, tree in modules.items():
        bound = imported_modules(tree, modules)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in modules and node.module != name:
                found += [
                    f"{name}:{node.lineno} from {node.module} import {alias.name}"
                    for alias in node.names
                    if is_private(alias.name)
                ]
            elif isinstance(node, ast.Attribute) and is_private(node.attr) and isinstance(node.value, ast.Name):
                other = bound.get(node.value.id)
                if other and other != name:
                    found.append(f"{name}:{node.lineno} {node.value.id}.{node.attr} ({other})")
    return found


def import_graph(modules) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports, at its top or inside a function alike."""
    graph = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                graph[name] |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module in modules and node.level == 0:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                graph[name] |= submodules
                if len(submodules) < len(node.names):  # names of the module itself, not its submodules
                    graph[name].add(node.module)
        graph[name].discard(name)
    return graph


def import_cycles(graph) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each as one cycle through it."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph[module]):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                groups.append(set(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return [cycle_through(graph, group) for group in groups]


def cycle_through(graph, group: set[str]) -> list[str]:
    """A path that leaves the group's first module and comes back to it, staying in the group."""
    start = min(group)
    paths = [[start]]
    while paths:
        path = paths.pop(0)
        for imported in sorted(graph[path[-1]] & group):
            if imported == start:
                return [*path, start]
            if imported not in path:
                paths.append([*path, imported])
    raise AssertionError(f"no cycle in {group}")


def test_no_module_of_the_package_imports_a_private_name_of_another():
    found = private_imports(package_modules())
    assert not found, "private names imported across modules (make them public where they belong):\n" + "\n".join(found)


def test_no_chain_of_imports_within_the_package_comes_back_to_its_start():
    cycles = import_cycles(import_graph(package_modules()))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / PACKAGE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / PACKAGE


def test_the_checks_find_a_planted_private_import_and_a_planted_cycle(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from diabetes.b import public\n\ndef _helper():\n    return public\n",
            "b.py": "def public():\n    from diabetes import c\n    return c.value\n",
            "c.py": "import diabetes.a\nfrom diabetes import a as alias\nvalue = alias._helper\n",
            "d.py": "from diabetes.a import _helper\n",
        },
    )
    modules = package_modules(package)
    assert private_imports(modules) == [
        "diabetes.c:3 alias._helper (diabetes.a)",
        "diabetes.d:1 from diabetes.a import _helper",
    ]
    assert import_cycles(import_graph(modules)) == [["diabetes.a", "diabetes.b", "diabetes.c", "diabetes.a"]]


def test_a_module_may_use_its_own_private_names_and_dunder_names_of_others(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__.py": "__version__ = '1'\n",
            "a.py": "import diabetes\nfrom diabetes import __version__\n\ndef _own():\n    return diabetes.__doc__\n\n"
            "value = _own()\n",
            "b.py": "from diabetes import a\n\nvalue = a.value\n",
        },
    )
    modules = package_modules(package)
    assert private_imports(modules) == []
    assert import_cycles(import_graph(modules)) == [], "a module that imports the package's __init__ is no cycle"

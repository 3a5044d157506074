"""Start a generated endpoint script under gunicorn, the production WSGI server,
and refuse to serve a release that is not what its manifest says.

    python -I RELEASE/package/diabetes/serving.py exec RELEASE PROGRAM [ARGUMENT...]

checks RELEASE against its manifest, then runs PROGRAM in place of itself
(the same pid), or refuses with a message. Run by path under `-I`, the
check imports nothing but the standard library and orjson: no module of the
release, no `sitecustomize` on a PYTHONPATH that names it, runs before it.
"""

import builtins
import hashlib
import importlib.util
import json
import os
import re
import stat
import sys
from http import HTTPStatus

import orjson


def _load_beside(file_name: str, module_name: str):
    """A module of this file's own folder, loaded by its path: run under `-I`,
    this file finds no package on the path, and must not take the working
    tree's for the release's."""
    spec = importlib.util.spec_from_file_location(module_name, os.path.join(os.path.dirname(__file__), file_name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Where a release keeps its script, package, model and manifest (diabetes/release_layout.py).
layout = _load_beside("release_layout.py", "_diabetes_release_layout")
# The manifest's format. 2: regular files by sha256 ("files"), symbolic links
# by target ("links"), folders implied by what they hold. 1 (releases sealed
# before links were recorded): "files" only, and such a release held no link
# (its files were copied, links followed), so one found there was added since.
MANIFEST_FORMAT = 2
# A release's id: when it was built, and the start of its content's sha256.
RELEASE_ID = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")


def running_in_notebook() -> bool:
    """True inside Jupyter, papermill or any IPython kernel, where
    `__name__ == "__main__"` holds too but a server must not start."""
    return hasattr(builtins, "__IPYTHON__")


def exec_gunicorn(script_path: str, app_name: str, host: str, port: int, workers: int, workers_port: int = 0):
    """Replace this process with a gunicorn master serving `app_name` from the
    script at `script_path`, with `workers` processes on host:port, or behind
    the edge on 127.0.0.1:`workers_port` (see `bind_address`).

    The master is a fresh process that never loads the model: each worker
    imports the script itself. XGBoost's OpenMP thread pool does not survive
    a fork (a worker forked from a process that has predicted hangs on its
    first prediction), and a worker that starts later, after a crash or a
    reload, loads the script and the model as they are on disk then. The
    process keeps its pid, so PM2 keeps supervising it.

    Run from a release (build/releases/current/serve.py, see
    diabetes/versions.py), the release's own package and the script's folder
    go first on the workers' path, named through the `current` link: a worker
    that starts after a reload imports the release `current` names, never the
    working tree. gunicorn puts its working directory (the project, where
    diabetes/ is) on the path too, and `--pythonpath` entries ahead of it only
    if they are not on the path already: so they are taken out of the
    PYTHONPATH this process passes on. (A hooks file that imports the package
    at its top would still get the working tree's: gunicorn reads it first.)

    A release that does not match its manifest is refused here, and gunicorn
    never starts (see `check_release`)."""
    script_dir, script_file = os.path.split(os.path.abspath(script_path))
    if is_release(script_dir):
        try:
            check_release(script_dir)
        except ReleaseDamaged as error:
            sys.exit(f"refused to start: {error}")
    module = os.path.splitext(script_file)[0]
    release_package = os.path.join(script_dir, layout.PACKAGE_DIR)
    # gunicorn puts each of these first on the path in turn: the last one ends up first.
    python_path = [script_dir, *([release_package] if os.path.isdir(release_package) else [])]
    inherited_path = [
        entry
        for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if entry and os.path.abspath(entry) not in python_path
    ]
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    if inherited_path:
        environment["PYTHONPATH"] = os.pathsep.join(inherited_path)
    os.execve(
        sys.executable,
        [
            sys.executable,
            "-m",
            "gunicorn",
            f"{module}:{app_name}",
            # A file, not a module: gunicorn reads it again on a reload (SIGHUP).
            "--config",
            os.path.join(os.path.dirname(__file__), "gunicorn_config.py"),
            "--pythonpath",
            ",".join(python_path),
            "--bind",
            bind_address(host, port, workers_port),
            "--workers",
            str(workers),
            "--name",
            module,
        ],
        environment,
    )


def bind_address(host: str, port: int, workers_port: int) -> str:
    """Where gunicorn listens: behind the edge (diabetes/edge.py, which PM2
    runs beside it), on the loopback interface at `workers_port`; run on its
    own, at `host`:`port`."""
    from diabetes.edge import BEHIND_EDGE_VARIABLE, WORKERS_HOST

    if os.environ.get(BEHIND_EDGE_VARIABLE):
        return f"{WORKERS_HOST}:{workers_port}"
    return f"{host}:{port}"


def write_server_refusal(sock, status: int, reason: str, message: str):
    """Answer a request that gunicorn itself refused (a malformed request
    line, a head over its limits, an unknown transfer coding) in the project's
    JSON error envelope, and count and log it; gunicorn calls this in place of
    its HTML page (see gunicorn_config.post_fork)."""
    from gunicorn.util import write_nonblock

    from diabetes.errors import ErrorCode, InvalidRequest
    from diabetes.observability import record_server_refusal

    if reason == "Bad Request" and status != 400:
        # gunicorn keeps this reason for some other statuses (501).
        reason = HTTPStatus(status).phrase
    code = ErrorCode.of_status(status)
    body = orjson.dumps(
        InvalidRequest(f"the server could not read the request: {message[:200]}", code, status).envelope()
    )
    try:
        peer = sock.getpeername()[0]
    except (OSError, IndexError, TypeError):
        peer = None
    record_server_refusal(status, code, peer)
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    write_nonblock(sock, head.encode("latin-1") + body)


# ---- A release is what its manifest says ------------------------------------------


class ReleaseDamaged(Exception):
    """A release that does not match its manifest; the message says how."""


def is_release(folder: str) -> bool:
    """Whether a script's folder is a release (or what is left of one): its
    package copy or its manifest beside the script, or a release's id as name."""
    return (
        os.path.isdir(os.path.join(folder, layout.PACKAGE_DIR))
        or os.path.lexists(os.path.join(folder, layout.MANIFEST_FILE))
        or RELEASE_ID.fullmatch(os.path.basename(os.path.realpath(folder))) is not None
    )


def sha256_of_file(path: str) -> str:
    """The sha256 of a regular file, never through a link (O_NOFOLLOW) nor
    from a pipe or device put in its place."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(f"{path} is not a regular file")
        return hashlib.file_digest(file, "sha256").hexdigest()


def release_entries(folder: str) -> tuple[dict[str, str], dict[str, str], set[str], list[str]]:
    """Every entry under `folder` but its manifest, never following a link:
    regular files by sha256, links by target (as written), folders, and the
    names of anything else (pipes, sockets, devices). Names are relative,
    with "/" between parts; files and links sorted by their parts."""
    files, links, folders, others = {}, {}, set(), []
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(os.path.join(folder, relative) if relative else folder) as entries:
            for entry in entries:
                name = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_symlink():
                    links[name] = os.readlink(entry.path)
                elif entry.is_dir(follow_symlinks=False):
                    folders.add(name)
                    pending.append(name)
                elif not entry.is_file(follow_symlinks=False):
                    others.append(name)
                elif name != layout.MANIFEST_FILE:
                    files[name] = sha256_of_file(entry.path)

    def by_parts(table):
        return dict(sorted(table.items(), key=lambda item: item[0].split("/")))

    return by_parts(files), by_parts(links), folders, sorted(others)


def content_sha256(files: dict[str, str], links: dict[str, str]) -> str:
    """The hash a release's id starts with: its files (bytecode aside, which
    is compiled from them) and links, in the manifest's order."""
    lines = [f"{name} {digest}\n" for name, digest in files.items() if not name.endswith(".pyc")]
    lines += [f"{name} -> {target}\n" for name, target in links.items()]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def leaves(folder: str, name: str) -> bool:
    """Whether the link `name` leads out of `folder` (a real path), or nowhere."""
    target = os.path.realpath(os.path.join(folder, name))
    return not target.startswith(folder + os.sep) or not os.path.exists(target)


def read_release_manifest(folder: str) -> dict:
    """A release's manifest, read from a regular file only (a link in its
    place is refused: it could name a manifest made elsewhere)."""
    descriptor = os.open(os.path.join(folder, layout.MANIFEST_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with open(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(f"{layout.MANIFEST_FILE} is not a regular file")
        return json.load(file)


def release_problems(folder: str) -> list[str]:
    """How the release in `folder` differs from its manifest, one line per
    entry: a file added, missing or changed, a link added, missing, changed,
    or leading out of the release, a folder that no listed entry is in,
    anything that is neither file, folder nor link; and a manifest that
    cannot be read, or that names another release or other content than its
    id. Empty when the release is exactly what it was sealed as."""
    folder = os.path.realpath(folder)
    try:
        manifest = read_release_manifest(folder)
        version = manifest.get("format", 1)
        if version not in (1, MANIFEST_FORMAT):
            return [f"{layout.MANIFEST_FILE} is in format {version!r}, which this check does not read"]
        recorded_files = dict(manifest["files"])
        recorded_links = dict(manifest["links"]) if version >= 2 else {}
        files, links, folders, others = release_entries(folder)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        return [f"cannot be checked: {error}"]
    problems = []
    for name in sorted(recorded_files.keys() | files.keys()):
        if name not in files:
            problems.append(f"{name}: missing" + (" (a link in its place)" if name in links else ""))
        elif name not in recorded_files:
            problems.append(f"{name}: a file its manifest does not list")
        elif files[name] != recorded_files[name]:
            problems.append(f"{name}: changed (its sha256 differs from the manifest's)")
    for name in sorted(recorded_links.keys() | links.keys()):
        target = links.get(name)
        if target is None:
            if name not in files:
                problems.append(f"{name}: a link its manifest lists, missing")
            continue
        if name not in recorded_links:
            why = "a link its manifest does not list" + (
                "" if version >= 2 else " (sealed before links were recorded, when it held none)"
            )
        elif target != recorded_links[name]:
            why = f"a link its manifest lists to {recorded_links[name]}"
        else:
            why = ""
        if leaves(folder, name):
            why += (", " if why else "") + "leading out of the release"
        if why:
            problems.append(f"{name} -> {target}: {why}")
    implied = {
        "/".join(name.split("/")[:depth])
        for name in [*recorded_files, *recorded_links]
        for depth in range(1, name.count("/") + 1)
    }
    problems += [f"{name}/: a folder its manifest does not list anything in" for name in sorted(folders - implied)]
    problems += [f"{name}: neither a file, a folder nor a link" for name in others]
    if manifest.get("release") != os.path.basename(folder):
        problems.append(
            f"{layout.MANIFEST_FILE}: says release {manifest.get('release')!r}, in folder {os.path.basename(folder)}"
        )
    content = content_sha256(recorded_files, recorded_links)
    if content != manifest.get("content_sha256") or not os.path.basename(folder).endswith(content[:8]):
        problems.append(f"{layout.MANIFEST_FILE}: its table of files is not the content its id was made from")
    return problems


def summary(problems: list[str], shown: int = 3) -> str:
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (f"; and {more} more" if more > 0 else "")


def check_release(folder: str):
    """Raise ReleaseDamaged unless the release in `folder` is exactly what its manifest says."""
    problems = release_problems(folder)
    if problems:
        name = os.path.basename(os.path.realpath(folder))
        raise ReleaseDamaged(f"release {name} does not match its manifest: {summary(problems)}")


def main(argv: list[str]) -> int:
    """`exec RELEASE PROGRAM [ARGUMENT...]`: check the release, then become PROGRAM."""
    if len(argv) < 3 or argv[0] != "exec":
        print(__doc__, file=sys.stderr)
        return 2
    release, program = argv[1], argv[2:]
    try:
        check_release(release)
    except ReleaseDamaged as error:
        print(f"refused to start: {error}", file=sys.stderr)
        return 1
    os.execv(program[0], program)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Deployment settings: a notebook's parameters, overridable from the environment."""

import ast
import os
import re

SERVE_NOTEBOOK = "notebooks/serve.ipynb"

# The service's name: PM2's app, its log files, the server's name in V2
# metadata. The Makefile (APP) and ecosystem.config.js, which cannot read it,
# define it once each; a test checks that all three agree.
APP_NAME = "diabetes-api"

ENVIRONMENT_PREFIX = "DIABETES_"


def override_from_environment(parameters: dict, prefix: str = ENVIRONMENT_PREFIX) -> dict:
    """Each parameter `name` takes the value of the environment variable
    `DIABETES_NAME` when it is set, converted to the type of its default, so
    that an operator can move a service (port, host, model) without
    regenerating its script."""
    settings = dict(parameters)
    for name, default in parameters.items():
        raw = os.environ.get(prefix + name.upper())
        if raw is None:
            continue
        if isinstance(default, bool):
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise ValueError(f"{prefix + name.upper()}={raw!r}: expected true or false")
            settings[name] = raw.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)):
            try:
                settings[name] = type(default)(raw)
            except ValueError:
                raise ValueError(f"{prefix + name.upper()}={raw!r}: expected a {type(default).__name__}") from None
        else:
            settings[name] = raw
    return settings


def notebook_defaults(notebook_path: str = SERVE_NOTEBOOK) -> dict:
    """The values of a notebook's parameters cell, read without running it."""
    import papermill  # imported here: it takes a second, and only tools need it

    return {
        name: ast.literal_eval(parameter["default"])
        for name, parameter in papermill.inspect_notebook(notebook_path).items()
    }


def service_settings() -> dict:
    """The endpoint notebook's parameters as the service reads them."""
    return override_from_environment(notebook_defaults(SERVE_NOTEBOOK))


class SettingRefused(ValueError):
    """A setting the service must not start with; the message says why."""


def read_api_key(api_key: str, api_key_file: str) -> str:
    """The API key: from `api_key_file` when set (a file of the service's own
    user that only this user can read, as ssh demands of a private key: a key
    that others can read, or that another user can rewrite, is no secret),
    otherwise `api_key`; empty means no key is needed. The file is checked as
    it is opened, so the checks and the read are of the same file."""
    if not api_key_file:
        return api_key
    try:
        with open(api_key_file, encoding="utf-8") as file:
            status = os.fstat(file.fileno())
            mode = status.st_mode & 0o777
            if status.st_uid != os.geteuid():
                raise SettingRefused(
                    f"{api_key_file} belongs to uid {status.st_uid}, not to the service's user (uid {os.geteuid()}): "
                    f"chown {os.geteuid()} {api_key_file}"
                )
            if mode & 0o077:
                raise SettingRefused(f"{api_key_file} is readable by others (mode {mode:o}): chmod 600 {api_key_file}")
            key = file.read().strip()
    except OSError as error:
        raise SettingRefused(f"cannot read the API key file: {error}") from None
    if not key:
        raise SettingRefused(f"{api_key_file} is empty")
    return key


# Names that always reach this machine only. A page on another site that
# renames itself to one of these (DNS rebinding) still sends its own name in
# the Host header, and is refused.
LOCAL_HOST_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_EVERY_INTERFACE = frozenset({"", "0.0.0.0", "::"})


def trusted_host_names(trusted_hosts: str, bind_host: str) -> frozenset | None:
    """The names the Host header may carry, lower case, without port; None
    means any. By default: the local names and the host the service binds."""
    if trusted_hosts.strip() == "*":
        return None
    if trusted_hosts.strip():
        return frozenset(name.strip().lower().strip("[]") for name in trusted_hosts.split(",") if name.strip())
    return LOCAL_HOST_NAMES | ({bind_host.lower()} - _EVERY_INTERFACE)


def host_name_of(host_header: str) -> str:
    """`example.org:5000` -> `example.org`, `[::1]:5000` -> `::1`."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")].lower() if "]" in host_header else host_header.lower()
    return host_header.rsplit(":", 1)[0].lower() if host_header.count(":") == 1 else host_header.lower()


# Characters that make flask-cors read an origin as a regular expression
# (its own heuristic, flask_cors.core._REGEX_HINT_CHARS).
_REGEX_HINTS = frozenset("*\\]?$^[]()")


def allowed_origins(cors_origins: str) -> str | re.Pattern | None:
    r"""What the `cors_origins` setting allows, as flask-cors's `origins`: "*"
    (any origin), one literal origin (compared case-insensitively), or a
    regular expression that must match the whole Origin header; None for ""
    (no page of another origin may read the answers: no CORS at all).

    flask-cors matches a pattern from the start of the origin only
    (`re.match`): given `https://app\.example\.com` it would let
    `https://app.example.com.evil.net` read the answers. So a pattern is
    handed over compiled, anchored at the very end too (`\Z`: a `$` also
    matches before a final newline), and case-insensitive as flask-cors
    compiles its own."""
    if not cors_origins:
        return None
    if cors_origins == "*" or _REGEX_HINTS.isdisjoint(cors_origins):
        return cors_origins
    try:
        return re.compile(rf"(?:{cors_origins})\Z", re.IGNORECASE)
    except re.error as error:
        raise SettingRefused(f"cors_origins {cors_origins!r} is not a regular expression: {error}") from None


# Who may call which route: marks set on a view where its route is defined,
# read by the endpoint's guards.
def needs_api_key(view):
    """Marks a prediction route: with an API key set, it answers only requests that carry it."""
    view.needs_api_key = True
    return view


def answers_any_host(view):
    """Marks a probe: it answers whatever the Host header names, as orchestrators call it by address."""
    view.answers_any_host = True
    return view

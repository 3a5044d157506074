"""Deployment settings: a notebook's parameters, overridable from the environment."""

import ast
import os

SERVE_NOTEBOOK = "notebooks/serve.ipynb"

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

    return {name: ast.literal_eval(parameter["default"])
            for name, parameter in papermill.inspect_notebook(notebook_path).items()}


def service_settings() -> dict:
    """The endpoint notebook's parameters as the service reads them."""
    return override_from_environment(notebook_defaults(SERVE_NOTEBOOK))

"""Deployment settings: a notebook's parameters, overridable from the environment."""

import os

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

"""Start a generated endpoint script under gunicorn, the production WSGI server."""

import builtins
import importlib

from gunicorn.app.base import BaseApplication


def running_in_notebook() -> bool:
    """True inside Jupyter, papermill or any IPython kernel, where
    `__name__ == "__main__"` holds too but a server must not start."""
    return hasattr(builtins, "__IPYTHON__")


class _Gunicorn(BaseApplication):
    def __init__(self, app_uri: str, options: dict):
        self.app_uri = app_uri
        self.options = options
        super().__init__()

    def load_config(self):
        for name, value in self.options.items():
            self.cfg.set(name, value)

    def load(self):
        # Imported here, in each worker, rather than in the master: a worker
        # started later (after a crash or a reload) loads the script and the
        # model as they are on disk then.
        module_name, app_name = self.app_uri.split(":")
        return getattr(importlib.import_module(module_name), app_name)


def serve_with_gunicorn(app_uri: str, host: str, port: int, workers: int, timeout: int = 30):
    """Run `module:app` with `workers` processes on host:port until stopped."""
    _Gunicorn(app_uri, {
        "bind": f"{host}:{port}",
        "workers": workers,
        "timeout": timeout,
        "proc_name": app_uri.split(":")[0],
        "accesslog": "-",
        # gunicorn would otherwise open a control socket in the user's home.
        "control_socket_disable": True,
    }).run()

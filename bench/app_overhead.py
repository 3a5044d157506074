"""The app's own CPU per request, without a server or a network: the endpoint
script's app and the ceiling's app called as WSGI applications with the
article's request, as gunicorn calls them. What a server adds is the same
for both, so the difference is what the service's app costs over a Flask app
that answers a constant; quicker and steadier than a load over HTTP on shared
cores, for comparing one change with the next.

    python -m bench.app_overhead --script scripts/serve.py --model-dir DIR [--requests N]

In a child process of its own when run by others: it imports XGBoost.
"""

import argparse
import gc
import importlib.util
import io
import json
import os
import sys
import time
from pathlib import Path
from statistics import median

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH

REPEATS = 7


def article_environ(body: bytes, port: int = 5000) -> dict:
    """What gunicorn hands the app for wrk's request (bench.measure)."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": ARTICLE_PATH,
        "RAW_URI": ARTICLE_PATH,
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(port),
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": f"127.0.0.1:{port}",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def request_caller(app):
    """A function that sends the app the article's request once, as gunicorn would."""
    body = json.dumps(ARTICLE_BODY).encode()

    def start_response(status, headers, exc_info=None):
        if not status.startswith("200"):
            raise RuntimeError(f"the app answered {status}")

    def one_request():
        for _ in app(article_environ(body), start_response):
            pass

    return one_request


def microseconds_per_request(apps: dict, requests: int) -> dict:
    """CPU time (process_time) per request of each app: REPEATS repeats, the
    apps taking turns within each, so that the machine's load hits them alike."""
    callers = {name: request_caller(app) for name, app in apps.items()}
    per_repeat = {name: [] for name in apps}
    for call in callers.values():
        for _ in range(200):
            call()
    for _ in range(REPEATS):
        for name, call in callers.items():
            gc.collect()
            started = time.process_time_ns()
            for _ in range(requests):
                call()
            per_repeat[name].append((time.process_time_ns() - started) / requests / 1000)
    return {name: {"median": median(times), "min": min(times), "max": max(times)} for name, times in per_repeat.items()}


def load_app(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.app


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", type=Path, required=True, help="the generated endpoint script")
    parser.add_argument("--model-dir", type=Path, required=True, help="a model version folder")
    parser.add_argument("--requests", type=int, default=5000, help="per repeat")
    arguments = parser.parse_args(argv)
    os.environ["DIABETES_MODEL_DIR"] = str(arguments.model_dir)
    # The access log goes to stdout, as under PM2 (to a file there): here to
    # /dev/null, and the figures to the stdout we were given.
    figures_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    service = load_app(arguments.script, "serve")
    ceiling = load_app(Path(__file__).with_name("ceiling_app.py"), "ceiling_app")
    figures = microseconds_per_request({"ceiling": ceiling, "service": service}, arguments.requests)
    figures["service_over_ceiling"] = {
        statistic: figures["service"][statistic] - figures["ceiling"][statistic] for statistic in ("median", "min")
    }
    print(json.dumps(figures, indent=2), file=figures_out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

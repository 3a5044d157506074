"""The app's own CPU per request, without a server or a network: the endpoint
script's app and the ceiling's app called as WSGI applications with the
article's request, as gunicorn calls them. What a server adds is the same
for both, so the difference is what the service's app costs over a Flask app
that answers a constant; quicker and steadier than a load over HTTP on shared
cores, for comparing one change with the next.

What CORS (flask-cors) costs is measured the same way: the service's app as
it serves, sent the request without an Origin (as every client but a browser
sends it) and with an allowed one (a browser page's), beside the same app
built with `cors_origins=""` (no CORS). `make bench` shows it (bench.run).

    python -m bench.app_overhead --script scripts/serve.py --model-dir DIR [--requests N] [--output FILE]

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
# A browser page's origin that the service's default cors_origins allows.
ALLOWED_ORIGIN = "http://localhost:3000"
# What each measured app is, by name.
APPS = {
    "ceiling": "a Flask app answering a constant (bench/ceiling_app.py)",
    "service": "the service's app, no Origin",
    "service_with_origin": f"the service's app, Origin: {ALLOWED_ORIGIN} (allowed)",
    "service_without_cors": 'the service\'s app without CORS (cors_origins=""), no Origin',
}


def article_environ(body: bytes, port: int = 5000, origin: str | None = None) -> dict:
    """What gunicorn hands the app for wrk's request (bench.measure), with
    the Origin header of a browser page if given."""
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
    } | ({"HTTP_ORIGIN": origin} if origin else {})


def request_caller(app, origin: str | None = None):
    """A function that sends the app the article's request once, as gunicorn would."""
    body = json.dumps(ARTICLE_BODY).encode()

    def start_response(status, headers, exc_info=None):
        if not status.startswith("200"):
            raise RuntimeError(f"the app answered {status}")

    def one_request():
        for _ in app(article_environ(body, origin=origin), start_response):
            pass

    return one_request


def microseconds_per_request(callers: dict, requests: int) -> dict:
    """CPU time (process_time) per request of each caller: REPEATS repeats,
    the callers taking turns within each, so that the machine's load hits them
    alike. The median, lowest and highest of the repeats, and each repeat's."""
    per_repeat = {name: [] for name in callers}
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
    return {
        name: {"median": median(times), "min": min(times), "max": max(times), "repeats": times}
        for name, times in per_repeat.items()
    }


def difference(figures: dict, name: str, reference: str) -> dict:
    """What `name` costs over `reference`, per request: the median, lowest and
    highest of the differences within each repeat (the two ran seconds apart)."""
    differences = [ours - theirs for ours, theirs in zip(figures[name]["repeats"], figures[reference]["repeats"])]
    return {"median": median(differences), "min": min(differences), "max": max(differences)}


def measure(script: Path, requests: int) -> dict:
    """Every app of APPS, timed; the service over the ceiling; CORS's cost with and without an Origin."""
    module = load_module(script, "serve")
    ceiling = load_module(Path(__file__).with_name("ceiling_app.py"), "ceiling_app").app
    without_cors = module.create_app(module.bundle, cors_origins="")
    callers = {
        "ceiling": request_caller(ceiling),
        "service": request_caller(module.app),
        "service_with_origin": request_caller(module.app, ALLOWED_ORIGIN),
        "service_without_cors": request_caller(without_cors),
    }
    figures = microseconds_per_request(callers, requests)
    return {
        "requests_per_repeat": requests,
        "repeats": REPEATS,
        "apps": {name: {"label": APPS[name], **figures[name]} for name in APPS},
        "service_over_ceiling": difference(figures, "service", "ceiling"),
        "cors_without_origin": difference(figures, "service", "service_without_cors"),
        "cors_with_origin": difference(figures, "service_with_origin", "service_without_cors"),
    }


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--script", type=Path, required=True, help="the generated endpoint script")
    parser.add_argument("--model-dir", type=Path, required=True, help="a model version folder")
    parser.add_argument("--requests", type=int, default=5000, help="per repeat")
    parser.add_argument("--output", type=Path, help="also write the figures there, as JSON")
    arguments = parser.parse_args(argv)
    os.environ["DIABETES_MODEL_DIR"] = str(arguments.model_dir)
    # The access log goes to stdout, as under PM2 (to a file there): here to
    # /dev/null, and the figures to the stdout we were given.
    figures_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    figures = measure(arguments.script, arguments.requests)
    if arguments.output:
        arguments.output.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2), file=figures_out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

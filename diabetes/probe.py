"""Wait until the service answers the article's request, then print the answer.

    python -m diabetes.probe [--timeout SECONDS] [--expect-model MODEL_DIR]
    python -m diabetes.probe --print-url

With an API key set (DIABETES_API_KEY or DIABETES_API_KEY_FILE, as the
service reads it), the probe sends it.

With --expect-model, wait until the answer comes from that model's version
(after a reload, old workers may answer for a moment).

The address is the endpoint notebook's `host` and `port` parameters, as the
service itself reads them (DIABETES_HOST and DIABETES_PORT override them).
"""

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.model_store import load_metadata
from diabetes.settings import read_api_key, service_settings


def service_url(settings: dict) -> str:
    host = "127.0.0.1" if settings["host"] in ("0.0.0.0", "") else settings["host"]
    return f"http://{host}:{settings['port']}"


def wait_for_answer(url: str, timeout: float, version: str | None = None, api_key: str = "") -> dict:
    headers = {"Content-Type": "application/json", **({"X-API-Key": api_key} if api_key else {})}
    request = urllib.request.Request(url + ARTICLE_PATH, data=json.dumps(ARTICLE_BODY).encode(), headers=headers)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                answer = {"version": response.headers["X-Model-Version"], **json.load(response)}
            if version in (None, answer["version"]):
                return answer
            problem = f"it still serves model {answer['version']}, not {version}"
        except urllib.error.HTTPError as error:
            problem = f"it answered {error.code}: {error.read()[:300].decode(errors='replace')}"
        except (urllib.error.URLError, OSError) as error:
            # Refused while the server starts, or slow while its workers load the model.
            problem = str(error)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer as expected within {timeout} s: {problem}")
        time.sleep(0.25)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--expect-model", metavar="MODEL_DIR", help="wait for this model's version")
    parser.add_argument("--print-url", action="store_true", help="print the service's address and exit")
    args = parser.parse_args(argv)
    settings = service_settings()
    url = service_url(settings)
    if args.print_url:
        print(url)
        return 0
    version = load_metadata(args.expect_model).version if args.expect_model else None
    try:
        api_key = read_api_key(settings["api_key"], settings["api_key_file"])
        answer = wait_for_answer(url, args.timeout, version, api_key)
    except (TimeoutError, ValueError) as error:
        print(error, file=sys.stderr)
        return 1
    print(
        f"serving model {answer['version']} at {url}{ARTICLE_PATH}: "
        f"{json.dumps(ARTICLE_BODY)} -> prediction {answer['prediction']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

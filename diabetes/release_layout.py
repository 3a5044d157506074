"""Where a release keeps each part of what the service runs, declared once:
diabetes/versions.py builds releases by it, and every reader takes its paths
from here (diabetes/serving.py, diabetes/pm2_metrics.py; ecosystem.config.js
and the Makefile ask the command below).

    build/releases/<id>/
        serve.py         the script nbconvert generated from the endpoint notebook
        serve.ipynb      that notebook, which papermill runs against the release to check it
        package/         the project's package (diabetes/) as it was, first on the workers' path
        model/           what serving needs of the model version: its model file and metadata.json
        settings.json    the service's settings as resolved at build (secrets left out)
        manifest.json    every entry with its hash, and what the release was built from

    python -I diabetes/release_layout.py RELEASE [PART]

prints the path of each part of RELEASE as JSON, or of one PART as a line.
Only the standard library: diabetes/serving.py loads this file by its path
when it checks a release, before anything of the release may be imported.
"""

import json
import os
import sys

SCRIPT_FILE = "serve.py"
NOTEBOOK_FILE = "serve.ipynb"
PACKAGE_DIR = "package"
MODEL_DIR = "model"
SETTINGS_FILE = "settings.json"
MANIFEST_FILE = "manifest.json"
# The release's own copy of its check (diabetes/serving.py), which PM2 runs
# before anything else of the release: a file of its package.
CHECK_FILE = os.path.join(PACKAGE_DIR, "diabetes", "serving.py")


def parts(release: str) -> dict[str, str]:
    """The path of each part of the release in the folder `release`."""
    names = {
        "script": SCRIPT_FILE,
        "notebook": NOTEBOOK_FILE,
        "package": PACKAGE_DIR,
        "model": MODEL_DIR,
        "settings": SETTINGS_FILE,
        "manifest": MANIFEST_FILE,
        "check": CHECK_FILE,
    }
    return {part: os.path.join(release, name) for part, name in names.items()}


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or (len(argv) == 2 and argv[1] not in parts("")):
        print(__doc__, file=sys.stderr)
        return 2
    paths = parts(argv[0])
    print(paths[argv[1]] if len(argv) == 2 else json.dumps(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

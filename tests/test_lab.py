"""`make lab` starts JupyterLab wherever it runs (as root too), prints its URL
with the token, and serves the notebooks through Jupyter's REST API. The first
run installs JupyterLab into the venv (about a minute from PyPI)."""

import os
import re
import signal
import socket
import subprocess
import time

import pytest
import requests

from tests.conftest import PROJECT, needs
from tests.processes import clean_environment, free_port

pytestmark = pytest.mark.server

STARTUP_SECONDS = 300  # includes installing JupyterLab on first use


@pytest.fixture(scope="module")
@needs("server")
def lab(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(PROJECT), "lab", f"LAB_PORT={port}", "LAB_FLAGS=--no-browser"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=clean_environment(),
            start_new_session=True,
        )
    try:
        url = None
        deadline = time.monotonic() + STARTUP_SECONDS
        while url is None and time.monotonic() < deadline and process.poll() is None:
            found = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=[0-9a-f]+", log.read_text())
            url = found.group(0) if found else time.sleep(0.5)
        if url is None:
            pytest.fail(f"make lab printed no URL with a token (exit {process.poll()}):\n{log.read_text()[-3000:]}")
        yield {"url": url, "port": port, "log": log}
    finally:
        # make, and JupyterLab under it, are in a process group of their own.
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_make_lab_serves_the_notebooks_to_whoever_has_the_token(lab):
    base, token = lab["url"].split("/lab?token=")
    listing = requests.get(f"{base}/api/contents", params={"token": token}, timeout=30)
    assert listing.status_code == 200
    names = {item["name"] for item in listing.json()["content"]}
    assert {"train.ipynb", "serve.ipynb", "sweep_report.ipynb"} <= names

    notebook = requests.get(f"{base}/api/contents/train.ipynb", params={"token": token}, timeout=30)
    assert notebook.status_code == 200 and notebook.json()["type"] == "notebook"
    assert requests.get(f"{base}/api/contents", timeout=30).status_code == 403, "no token, no notebooks"


def test_jupyterlab_stays_out_of_papermills_start(lab):
    # JupyterLab pulls in rfc3987-syntax, which adds ~2 s to every process that imports nbformat.
    found = subprocess.run(
        [str(PROJECT / ".venv/bin/python"), "-c", "import rfc3987_syntax"], capture_output=True, timeout=60
    )
    assert found.returncode != 0
    if os.geteuid() == 0:
        assert "--allow-root" in lab["log"].read_text()

"""The service as a user runs it: `make serve` publishes the generated script
under PM2 (gunicorn workers), it answers over HTTP on 127.0.0.1, newman runs
the Postman collection against it, and `make stop` ends it all."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from diabetes.features import FEATURE_NAMES
from diabetes.settings import APP_NAME
from tests.conftest import PROJECT, make, pm2, pm2_app
from tests.reference import reference_model

pytestmark = [pytest.mark.model, pytest.mark.pm2]

ROUTE = "/katana-ml/api/v1.0/diabetes"


def children_of(pid: int) -> list[int]:
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(child) for child in children.split()]


def test_pm2_runs_the_generated_script_with_the_projects_python_under_gunicorn(service):
    app = pm2_app(service)
    environment = app["pm2_env"]
    assert environment["status"] == "online"
    assert environment["pm_exec_path"] == str(service["releases_dir"] / "current" / "serve.py")
    assert environment["exec_interpreter"] == str(PROJECT / ".venv" / "bin" / "python")
    command = Path(f"/proc/{app['pid']}/cmdline").read_text().split("\0")
    assert "gunicorn" in command and "serve:app" in command
    assert len(children_of(app["pid"])) == 2, "expected the 2 gunicorn workers of the notebook's default"


def test_the_article_request_over_http_answers_a_probability(service):
    response = requests.post(service["url"] + ROUTE, json={"data": "1,106,70,28,135,34.2,0.142,22"}, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    model = reference_model((service["models_dir"] / "current").resolve())
    model.assert_probabilities([[1, 106, 70, 28, 135, 34.2, 0.142, 22]], [response.json()["prediction"]])
    assert response.headers["X-Model-Version"] == model.version


def test_every_row_of_the_data_set_is_served_as_the_training_notebook_predicted_it(service):
    expected = pd.read_csv(service["models_dir"] / "current" / "predictions.csv")
    with requests.Session() as session:
        served = [
            session.post(service["url"] + ROUTE, json={"data": ",".join(map(str, row))}, timeout=5).json()["prediction"]
            for row in expected[list(FEATURE_NAMES)].itertuples(index=False)
        ]
    assert len(served) == 768
    assert abs(pd.Series(served) - expected["probability"]).max() < 1e-6


def test_a_bad_request_over_http_answers_a_json_400(service):
    response = requests.post(service["url"] + ROUTE, json={"data": "1,2"}, timeout=5)
    assert response.status_code == 400
    assert response.json()["code"] == "wrong_value_count"


def test_a_second_make_serve_with_nothing_changed_is_a_no_op(service):
    before = pm2_app(service)
    started = time.monotonic()
    result = make("serve", *service["variables"], env=service["env"])
    elapsed = time.monotonic() - started
    after = pm2_app(service)
    assert "papermill" not in result.stdout and "nbconvert" not in result.stdout
    assert after["pid"] == before["pid"]
    assert after["pm2_env"]["restart_time"] == before["pm2_env"]["restart_time"]
    assert [app["name"] for app in json.loads(pm2(service, "jlist"))].count(APP_NAME) == 1, "a second copy was started"
    assert elapsed < 30


def test_a_gunicorn_worker_killed_is_replaced_and_the_service_keeps_answering(service):
    master = pm2_app(service)["pid"]
    victim = children_of(master)[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (victim in children_of(master) or len(children_of(master)) < 2):
        time.sleep(0.1)
    assert victim not in children_of(master) and len(children_of(master)) == 2
    response = requests.post(service["url"] + ROUTE, json={"data": "1,106,70,28,135,34.2,0.142,22"}, timeout=5)
    assert response.status_code == 200


def test_newman_runs_the_postman_collection_against_the_service(service):
    result = make("postman", *service["variables"], env=service["env"])
    assert "AssertionError" not in result.stdout
    assert service["url"] in result.stdout

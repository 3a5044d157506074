"""Patients' rows and the service's secrets, tried as another user of the host
would try them (issue 22): every file a training run writes into a model
version, the prediction log of the PM2-served service and its rotated copies,
an API key file of another user, a CORS origin that only starts like an
allowed one, and a CSV body whose first line is empty fields.

The files live in a folder every user may enter, as `build/` is in a clone:
there, only a file's own mode keeps it private. The other user is `nobody`
(uid 65534); making a process of that user takes root."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from diabetes.api_examples import ARTICLE_BODY, ARTICLE_PATH
from diabetes.model_store import LATEST_LINK, METADATA_FILE, MODEL_FILE, PRIVATE_FILES
from diabetes.settings import APP_NAME
from tests.conftest import FAST_PARAMS, PROJECT, pm2, service_of_its_own
from tests.processes import clean_environment, free_port

pytestmark = [
    pytest.mark.model,
    pytest.mark.pm2,
    pytest.mark.skipif(os.geteuid() != 0, reason="trying files as another user takes root"),
]

NOBODY = 65534
# Copied into the version by `make train` after the notebook has published it.
NOTEBOOK_COPIES = frozenset({"train.ipynb", "train.html"})
# The version's files that hold no patient's row: the served model, and its
# metadata (metrics, feature ranges, the article's example row).
PUBLIC_FILES = frozenset({MODEL_FILE, METADATA_FILE})
API_KEY = "k3y-privacy"
ORIGINS = r"https://app\.example\.com"


def readable_by_another_user(paths) -> dict[str, bool]:
    """Whether `nobody` can read each file (its first byte), by name."""
    script = "import sys\nfor path in sys.argv[1:]:\n    try:\n        open(path, 'rb').read(1); print(1)\n"
    script += "    except OSError:\n        print(0)\n"
    result = subprocess.run(
        ["/usr/bin/python3", "-c", script, *map(str, paths)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return {Path(path).name: answer == "1" for path, answer in zip(paths, result.stdout.split())}


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def open_folder():
    """A folder any user of the host may enter and list."""
    folder = Path(tempfile.mkdtemp(prefix="diabetes-privacy-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture(scope="module")
def run_under_umask_022(open_folder) -> dict:
    """`make train` with the fast parameter set from a shell whose umask is
    0022, as in a fresh clone: what it writes is created 0644 unless the code
    says otherwise."""
    variables = {
        "MODELS_DIR": open_folder / "models",
        "RUNS_DIR": open_folder / "runs",
        "TRAIN_PARAMS": FAST_PARAMS,
    }
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(PROJECT), "train", *[f"{k}={v}" for k, v in variables.items()]],
        env=clean_environment(),
        umask=0o022,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"version": (variables["MODELS_DIR"] / LATEST_LINK).resolve(), "runs": variables["RUNS_DIR"]}


# ---- a model version ------------------------------------------------------------------------


def test_every_file_of_a_version_is_either_private_or_holds_no_patients_rows(run_under_umask_022):
    """A file added to a version later must be put on one side or the other (model_store.PRIVATE_FILES)."""
    names = {path.name for path in run_under_umask_022["version"].iterdir()}
    assert names <= PRIVATE_FILES | PUBLIC_FILES, names - PRIVATE_FILES - PUBLIC_FILES
    assert {"data.csv", "predictions.csv", "cv_predictions.csv"} | PUBLIC_FILES <= names


def test_the_rows_and_predictions_the_training_run_publishes_are_readable_by_their_owner_only(run_under_umask_022):
    version = run_under_umask_022["version"]
    private = sorted(version / name for name in PRIVATE_FILES - NOTEBOOK_COPIES)
    assert {path.name: mode_of(path) for path in private} == {path.name: 0o600 for path in private}
    assert not any(readable_by_another_user(private).values())


def test_the_model_and_its_metadata_stay_readable_and_nothing_is_writable_by_others(run_under_umask_022):
    """They hold no patient's row, and a service of another user (the image's,
    with `make run-image IMAGE_MODELS=...`) reads them through the version's
    folder, which follows the umask like the models folder that holds it."""
    version = run_under_umask_022["version"]
    assert mode_of(version) == mode_of(version.parent) == 0o755
    assert {name: mode_of(version / name) for name in PUBLIC_FILES} == {name: 0o644 for name in PUBLIC_FILES}
    assert all(readable_by_another_user([version / name for name in PUBLIC_FILES]).values())
    assert not [path.name for path in version.iterdir() if mode_of(path) & 0o022]


def test_the_executed_notebook_that_shows_the_rows_is_readable_by_its_owner_only(run_under_umask_022):
    copies = [run_under_umask_022["version"] / name for name in sorted(NOTEBOOK_COPIES)]
    runs = [run_under_umask_022["runs"] / name for name in sorted(NOTEBOOK_COPIES)]
    assert [mode_of(path) for path in copies] == [0o600, 0o600]
    assert not any(readable_by_another_user(copies).values())
    assert not any(readable_by_another_user(runs).values())


# ---- the PM2-served service ---------------------------------------------------------------


@pytest.fixture(scope="module")
def service(trained, tmp_path_factory, open_folder):
    """`make serve` with a prediction log that an operator made beforehand,
    0644, with a rotated copy 0644; rotated past 1,500 bytes (a few requests);
    the API key from a 0600 file; one allowed browser origin."""
    workspace = tmp_path_factory.mktemp("privacy")
    logs = open_folder / "prediction-logs"
    logs.mkdir(mode=0o755)
    logs.chmod(0o755)
    log = logs / "predictions.jsonl"
    for path in (log, logs / "predictions.jsonl.1"):
        path.write_text('{"inputs": [[6, 148, 72, 35, 0, 33.6, 0.627, 50]]}\n')
        path.chmod(0o644)
    key_file = workspace / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    with service_of_its_own(
        trained,
        workspace,
        DIABETES_PREDICTION_LOG=str(log),
        DIABETES_PREDICTION_LOG_MAX_BYTES="1500",
        DIABETES_API_KEY_FILE=str(key_file),
        DIABETES_CORS_ORIGINS=ORIGINS,
    ) as service:
        yield {**service, "prediction_log": log}


def predict(service, **headers):
    return requests.post(
        service["url"] + ARTICLE_PATH, json=ARTICLE_BODY, headers={"X-API-Key": API_KEY, **headers}, timeout=10
    )


def log_files(service) -> list[Path]:
    """The log and its rotated copies (not the workers' lock file)."""
    return sorted(path for path in service["prediction_log"].parent.iterdir() if not path.name.endswith(".lock"))


def test_a_prediction_log_made_readable_before_the_service_started_is_narrowed(service):
    assert predict(service).status_code == 200
    assert {path.name: mode_of(path) for path in log_files(service)} == {
        "predictions.jsonl": 0o600,
        "predictions.jsonl.1": 0o600,
    }
    assert not any(readable_by_another_user(log_files(service)).values())


def test_a_prediction_log_widened_while_served_is_narrowed_at_the_workers_restart_with_a_warning(service):
    log, error_log = service["prediction_log"], service["workspace"] / "logs" / f"{APP_NAME}.error.log"
    log.chmod(0o644)
    pm2(service, "sendSignal", "SIGHUP", APP_NAME)  # gunicorn's graceful reload: new workers open the log
    deadline = time.monotonic() + 60
    while mode_of(log) != 0o600 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert mode_of(log) == 0o600
    assert predict(service).status_code == 200
    warning = f"prediction log {log} had mode 644: others could read the patients' rows it holds; narrowed to 600"
    deadline = time.monotonic() + 10
    while warning not in error_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert warning in error_log.read_text()


def test_a_rotated_copy_widened_while_served_is_narrowed_as_it_is_rotated(service):
    service["prediction_log"].with_name("predictions.jsonl.1").chmod(0o604)
    for _ in range(12):  # past 1,500 bytes at least once: .1 moves to .2
        assert predict(service).status_code == 200
    files = log_files(service)
    assert "predictions.jsonl.2" in [path.name for path in files]
    assert {path.name: mode_of(path) for path in files} == {path.name: 0o600 for path in files}
    assert not any(readable_by_another_user(files).values())


@pytest.mark.parametrize(
    "origin, allowed",
    [
        ("https://app.example.com", True),
        ("HTTPS://APP.EXAMPLE.COM", True),
        ("https://app.example.com.evil.net", False),
        ("https://app.example.com:8443", False),
        ("https://app.example.com/", False),
        ("https://evil.net", False),
    ],
)
def test_a_browser_origin_is_allowed_only_when_the_pattern_matches_all_of_it(service, origin, allowed):
    answer = predict(service, Origin=origin)
    assert answer.status_code == 200
    assert answer.headers.get("Access-Control-Allow-Origin") == (origin if allowed else None)


def test_a_csv_body_whose_first_line_is_empty_fields_is_refused_as_an_empty_row(service):
    answer = requests.post(
        service["url"] + "/predict",
        data=",,,,,,,\n1,106,70,28,135,34.2,0.142,22\n",
        headers={"X-API-Key": API_KEY, "Content-Type": "text/csv"},
        timeout=10,
    )
    assert answer.status_code == 400
    error = answer.json()
    assert (error["code"], error["field"], error["row"]) == ("wrong_value_count", "/rows/0", 0)
    assert error["error"].startswith("line 1 has 0 values (every field is empty), expected 8")


# ---- the API key file ---------------------------------------------------------------------


def test_a_service_given_a_key_file_of_another_user_refuses_to_start(scripts, trained, tmp_path):
    """The file is 0600, so only its owner reads it; but its owner is not the
    service's user: that user could rewrite the key the service trusts."""
    key_file = tmp_path / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    os.chown(key_file, NOBODY, NOBODY)
    port = free_port()
    env = clean_environment(
        DIABETES_PORT=str(port),
        DIABETES_MODEL_DIR=str(trained["models_dir"] / "latest"),
        DIABETES_API_KEY_FILE=str(key_file),
        DIABETES_WORKERS="1",
    )
    result = subprocess.run(
        [sys.executable, str(scripts / "serve.py")], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert f"{key_file} belongs to uid {NOBODY}, not to the service's user (uid 0): chown 0 {key_file}" in result.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)

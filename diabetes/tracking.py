"""MLflow tracking: each `make train` and each run of `make sweep` as an MLflow
run, each published model version as a version of the registered model
`diabetes`, and its alias `champion` on the version that `current` serves.

Tracking is a step after the notebooks, fed by their records: the executed
notebook (its parameters, its plots), its HTML and the model version's files
(metadata.json's metrics and data source). It runs in a venv of its own
(build/tracking-venv, from requirements-tracking.txt), so the service's venv,
its releases and its image never carry MLflow:

    build/tracking-venv/bin/python -m diabetes.tracking train build/models/latest
    build/tracking-venv/bin/python -m diabetes.tracking sweep build/sweeps/latest
    build/tracking-venv/bin/python -m diabetes.tracking champion build/models/current
    build/tracking-venv/bin/python -m diabetes.tracking ui --port 5050 [--store sqlite:///other.db]
    python -m diabetes.tracking wanted train build/models/latest   # exit 0: it would log

Where it logs is the training notebook's parameter `tracking_uri`, read from
the executed notebook: by default a SQLite store under build/ (relative paths
are the project's), any MLflow server's URL otherwise, empty for no tracking.

Tracking never blocks training: an unreachable server or any other failure is
a warning, and the command still exits 0. Only the functions that log import
mlflow; the rest is standard library.
"""

import ast
import base64
import csv
import json
import logging
import os
import sys
import tempfile
import urllib.parse
from pathlib import Path

from diabetes import model_metadata

PROJECT = Path(__file__).resolve().parents[1]
NOTEBOOK = PROJECT / "notebooks" / "train.ipynb"
TRACKING_VENV = PROJECT / "build" / "tracking-venv"  # the Makefile's TRACKING_VENV
EXPERIMENT = "diabetes"  # the experiment of every run
REGISTERED_MODEL = "diabetes"  # the registered model of every published version
CHAMPION = "champion"  # the alias of the version `current` serves
VERSION_TAG = "model_version"  # the project's version id, on runs and registered versions
WINNER_TAG = "winner"  # "true" on the sweep's best child run
# An unreachable server must not hold `make train` for minutes of retries
# (MLflow's defaults); the environment may say otherwise.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def notebook_parameters(notebook) -> dict:
    """The parameters a notebook ran with: its parameters cell's defaults,
    overridden by the cell papermill injected (credentials already redacted)."""
    cells = json.loads(Path(notebook).read_text())["cells"]
    parameters = {}
    for tag in ("parameters", "injected-parameters"):
        for cell in cells:
            if tag in cell.get("metadata", {}).get("tags", []):
                for statement in ast.parse("".join(cell["source"])).body:
                    if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name):
                        parameters[statement.targets[0].id] = ast.literal_eval(statement.value)
    return parameters


def resolved_uri(uri: str) -> str:
    """A SQLite store's relative path is the project's, wherever the command runs."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(PROJECT / uri[len(prefix) :])
    return uri


def local_artifacts(uri: str) -> str | None:
    """Artifacts of a SQLite store lie beside its database, in artifacts/."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return None


def plots(notebook) -> list[tuple[str, bytes]]:
    """The PNG images of the executed notebook's outputs, named by cell."""
    found = []
    for index, cell in enumerate(json.loads(Path(notebook).read_text())["cells"]):
        images = [
            output["data"]["image/png"] for output in cell.get("outputs", []) if "image/png" in output.get("data", {})
        ]
        for number, image in enumerate(images, 1):
            found.append((f"cell-{index:02d}-{number}.png", base64.b64decode(image)))
    return found


def run_metrics(metadata: model_metadata.ModelMetadata) -> dict[str, float]:
    """Every figure of the run: test metrics with their 95% intervals, the
    cross-validated ones with their spread, the trees, each calibrator's Brier."""
    figures = {"trees": metadata.trees}
    for name, value in vars(metadata.metrics).items():
        if isinstance(value, list):
            figures[f"{name}_low"], figures[f"{name}_high"] = value
        else:
            figures[name] = value
    for method, brier in metadata.calibration.cv_brier.items():
        figures[f"cv_brier_{method}"] = brier
    return figures


def run_tags(metadata: model_metadata.ModelMetadata) -> dict[str, str]:
    return {
        VERSION_TAG: metadata.version,
        "data.source": metadata.data.source,
        "data.sha256": metadata.data.sha256,
        "data.rows": str(metadata.data.rows),
        "model.sha256": metadata.model_sha256,
    }


def tracking_uri_of(notebook) -> str:
    return resolved_uri(str(notebook_parameters(notebook).get("tracking_uri", "")))


def private_local_store(uri: str):
    """A local store holds the version's rows, predictions and executed
    notebook, as the version folder does: its owner's alone (0700 folders,
    0600 files), whatever the umask. A server's store is its operator's to
    keep so: every file a run logs is sent to it."""
    os.umask(0o077)
    if uri.startswith("sqlite:///"):
        store = Path(uri[len("sqlite:///") :]).parent
        store.mkdir(parents=True, exist_ok=True)
        store.chmod(0o700)


def start_tracking(uri: str):
    """MLflow, pointed at `uri` and the project's experiment (made if need be)."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # not its INFO lines on every `make train`
    private_local_store(uri)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=local_artifacts(uri))
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def log_version(mlflow, version_dir: Path, notebook: Path, html: Path | None):
    """The current run's parameters, metrics, tags and artifacts, from a model
    version's folder and the executed notebook that wrote it."""
    metadata = model_metadata.read(version_dir)
    mlflow.log_params({name: str(value)[:6000] for name, value in notebook_parameters(notebook).items()})
    mlflow.log_metrics(run_metrics(metadata))
    mlflow.set_tags(run_tags(metadata))
    for record in (notebook, html):
        if record is not None and record.exists() and record.parent != version_dir:  # not twice
            mlflow.log_artifact(str(record), "notebook")
    with tempfile.TemporaryDirectory() as folder:
        for name, image in plots(notebook):
            (Path(folder) / name).write_bytes(image)
        mlflow.log_artifacts(folder, "plots")
    mlflow.log_artifacts(str(version_dir), "model_version")
    owners_alone(mlflow.get_artifact_uri())
    return metadata


def owners_alone(artifact_uri: str):
    """A local store's copies of a run's records keep no wider mode than the
    owner's: MLflow copies a file's mode with it (an executed notebook of a
    sweep, 0644 under the shell's umask, shows rows)."""
    if not artifact_uri.startswith("file:"):
        return
    for folder, _, files in os.walk(urllib.parse.urlparse(artifact_uri).path):
        os.chmod(folder, 0o700)
        for name in files:
            path = os.path.join(folder, name)
            os.chmod(path, os.stat(path).st_mode & 0o700)


def log_training(version_dir) -> str:
    """`make train`'s run, and its model registered as a version of
    REGISTERED_MODEL (MLflow's XGBoost flavour, the very model.ubj)."""
    version_dir = Path(version_dir).resolve()
    notebook = version_dir / "train.ipynb"
    uri = tracking_uri_of(notebook)
    if not uri:
        return "tracking is off (tracking_uri is empty)"
    mlflow = start_tracking(uri)
    import xgboost
    from mlflow import xgboost as xgboost_flavour

    with mlflow.start_run(run_name=f"train {version_dir.name}") as run:
        metadata = log_version(mlflow, version_dir, notebook, version_dir / "train.html")
        already = registered_version(mlflow.MlflowClient(), metadata.version)
        if already is not None:  # the step run again by hand: one registered version per published one
            return f"run {run.info.run_id}; {metadata.version} was registered already (version {already.version})"
        booster = xgboost.Booster(model_file=str(version_dir / metadata.model_file))
        info = xgboost_flavour.log_model(
            booster,
            name="model",
            model_format="ubj",
            pip_requirements=[f"xgboost-cpu=={xgboost.__version__}"],
            registered_model_name=REGISTERED_MODEL,
        )
        registered = info.registered_model_version
        mlflow.MlflowClient().set_model_version_tag(REGISTERED_MODEL, registered, VERSION_TAG, metadata.version)
    return f"run {run.info.run_id}, registered {REGISTERED_MODEL} version {registered} ({metadata.version}) at {uri}"


def best_row(rows: list[dict]) -> dict | None:
    """The sweep's winner, by its own rule (diabetes.sweep.best_run): the
    highest CV ROC AUC; ties, the lower CV log loss."""
    done = [row for row in rows if row["status"] == "ok"]
    return min(done, key=lambda row: (-float(row["cv_roc_auc_mean"]), float(row["cv_log_loss_mean"])), default=None)


def log_sweep(sweep_dir) -> str:
    """A sweep as one parent run (its file, results and report) with one
    child run per parameter set; the winner tagged."""
    sweep_dir = Path(sweep_dir).resolve()
    with open(sweep_dir / "results.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    uri = tracking_uri_of(step_notebook("sweep", sweep_dir))
    if not uri:
        return "tracking is off (tracking_uri is empty)"
    mlflow = start_tracking(uri)
    winner = best_row(rows)
    with mlflow.start_run(run_name=f"sweep {sweep_dir.name}") as parent:
        mlflow.set_tags({"sweep": sweep_dir.name, "runs": str(len(rows))})
        for name in ("sweep.yaml", "results.csv", "best.yaml", "report.html"):
            if (sweep_dir / name).exists():
                mlflow.log_artifact(str(sweep_dir / name))
        for row in rows:
            with mlflow.start_run(run_name=f"sweep {sweep_dir.name} run {row['run']}", nested=True):
                mlflow.set_tags({"sweep": sweep_dir.name, "sweep.run": row["run"]})
                if row["status"] == "ok":
                    log_version(mlflow, Path(row["model_dir"]), Path(row["notebook"]), None)
                else:
                    mlflow.log_params(
                        {name: str(value)[:6000] for name, value in notebook_parameters(row["notebook"]).items()}
                    )
                    mlflow.set_tag("error", row["error"])
                if row is winner:
                    mlflow.set_tag(WINNER_TAG, "true")
                    mlflow.set_tag(f"{WINNER_TAG}.run_id", mlflow.active_run().info.run_id)
                mlflow.end_run("FINISHED" if row["status"] == "ok" else "FAILED")
        if winner is not None:
            mlflow.set_tag(WINNER_TAG, winner["run"])
    return f"run {parent.info.run_id} with {len(rows)} child runs at {uri}"


def registered_version(client, version_id: str):
    """The registered model's version that holds the project's version `version_id`."""
    found = [
        version
        for version in client.search_model_versions(f"name='{REGISTERED_MODEL}'")
        if version.tags.get(VERSION_TAG) == version_id
    ]
    return max(found, key=lambda version: int(version.version), default=None)


def set_champion(version_dir) -> str:
    """The alias CHAMPION on the registered version of the version `current` serves."""
    version_dir = Path(version_dir).resolve()
    uri = tracking_uri_of(version_dir / "train.ipynb")
    if not uri:
        return "tracking is off (tracking_uri is empty)"
    mlflow = start_tracking(uri)
    client = mlflow.MlflowClient()
    registered = registered_version(client, version_dir.name)
    if registered is None:
        raise LookupError(f"{version_dir.name} is not a version of {REGISTERED_MODEL} at {uri} (trained untracked?)")
    client.set_registered_model_alias(REGISTERED_MODEL, CHAMPION, registered.version)
    return f"{REGISTERED_MODEL}@{CHAMPION} is version {registered.version} ({version_dir.name}) at {uri}"


def default_tracking_uri() -> str:
    """The training notebook's default store (its parameters cell)."""
    return resolved_uri(notebook_parameters(NOTEBOOK)["tracking_uri"])


def ui(port: int, store: str = ""):
    """MLflow's UI on a SQLite store (by default the notebook's), on 127.0.0.1 only."""
    uri = resolved_uri(store) if store else default_tracking_uri()
    private_local_store(uri)
    print(f"MLflow's UI on {uri}: http://127.0.0.1:{port}", flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += [
        "--default-artifact-root",
        local_artifacts(uri),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI's job workers: not used here
    os.execv(sys.executable, command)


STEPS = {"train": log_training, "sweep": log_sweep, "champion": set_champion}


def step_notebook(step: str, folder) -> Path:
    """The executed training notebook whose `tracking_uri` a step logs to."""
    folder = Path(folder).resolve()
    if step == "sweep":
        with open(folder / "results.csv", newline="") as file:
            return Path(next(csv.DictReader(file))["notebook"])
    return folder / "train.ipynb"


def wanted(step: str, folder) -> bool:
    """Whether a step would log anything (its notebook's `tracking_uri` is
    not empty): the Makefile installs the tracking venv only then. Standard
    library only, so that the service's venv can ask."""
    try:
        return bool(tracking_uri_of(step_notebook(step, folder)))
    except (OSError, ValueError, KeyError, StopIteration, SyntaxError):
        return False


def main(argv) -> int:
    if argv[:1] == ["ui"]:
        options = dict(zip(argv[1::2], argv[2::2]))
        ui(int(options.get("--port", 5050)), options.get("--store", ""))
    if len(argv) == 3 and argv[0] == "wanted" and argv[1] in STEPS:
        return 0 if wanted(argv[1], argv[2]) else 1
    if len(argv) != 2 or argv[0] not in STEPS:
        print(__doc__, file=sys.stderr)
        return 2
    step, folder = argv
    try:
        print(f"tracking: {STEPS[step](folder)}", flush=True)
    except Exception as error:  # noqa: BLE001 -- tracking never blocks training
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        print(f"tracking: WARNING, {step} not tracked: {error.__class__.__name__}: {first_line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What MLflow's own client sees in a store, as JSON: run with the tracking
venv's python (the project's venv has no MLflow), from the project's folder.

    build/tracking-venv/bin/python -m tests.mlflow_view runs URI
    build/tracking-venv/bin/python -m tests.mlflow_view registry URI
    build/tracking-venv/bin/python -m tests.mlflow_view predict URI "1,106,70,28,135,34.2,0.142,22"

tests/test_tracking.py reads its answers; it imports nothing of the tests'
own (conftest needs the project's venv)."""

import hashlib
import json
import sys
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient

from diabetes.features import FEATURE_NAMES, to_model_input
from diabetes.tracking import CHAMPION, EXPERIMENT, REGISTERED_MODEL


def artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def runs(client) -> list[dict]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return [
        {
            "id": run.info.run_id,
            "name": run.info.run_name,
            "status": run.info.status,
            "params": run.data.params,
            "metrics": run.data.metrics,
            "tags": {name: value for name, value in run.data.tags.items() if not name.startswith("mlflow.")},
            "parent": run.data.tags.get("mlflow.parentRunId"),
            "artifacts": artifacts(client, run.info.run_id),
        }
        for run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    ]


def registry(client) -> dict:
    versions = []
    for version in client.search_model_versions(f"name='{REGISTERED_MODEL}'"):
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{REGISTERED_MODEL}/{version.version}"))
        versions.append(
            {
                "version": version.version,
                "tags": version.tags,
                "run_id": version.run_id,
                "files": sorted(path.name for path in folder.iterdir()),
                "model_sha256": hashlib.sha256((folder / "model.ubj").read_bytes()).hexdigest(),
            }
        )
    aliases = client.get_registered_model(REGISTERED_MODEL).aliases
    return {"versions": versions, "champion": aliases.get(CHAMPION)}


def predict(row: str) -> list[float]:
    model = mlflow.pyfunc.load_model(f"models:/{REGISTERED_MODEL}@{CHAMPION}")
    values = [float(value) for value in row.split(",")]
    frame = pd.DataFrame(to_model_input([values]), columns=list(FEATURE_NAMES))
    return [float(probability) for probability in model.predict(frame)]


def main(argv):
    view, uri, *rest = argv
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    answer = {"runs": lambda: runs(client), "registry": lambda: registry(client), "predict": lambda: predict(*rest)}
    print(json.dumps(answer[view]()))


if __name__ == "__main__":
    main(sys.argv[1:])

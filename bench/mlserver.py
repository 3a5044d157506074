"""MLServer (Seldon's Open Inference Protocol server) on the service's model
file, from the benchmark's own venv (build/bench-venv, which `make bench`
installs from bench/requirements-mlserver.txt): the server a user would pick
instead of this one for the V2 route."""

import json
import os
import shutil
from pathlib import Path

from bench.bodies import V2_SINGLE_ROW
from bench.servers import PROJECT, ChildProcessServer
from diabetes.api_examples import V2_INFER
from tests.processes import LOCALHOST, free_port

BENCH_VENV = PROJECT / "build" / "bench-venv"
# The service's model name, so that both answer on the same path.
MODEL_NAME = V2_INFER.split("/")[3]


def mlserver_executable(venv: Path = BENCH_VENV) -> Path | None:
    executable = venv / "bin" / "mlserver"
    return executable if executable.exists() else None


class MlserverServer(ChildProcessServer):
    """`mlserver start` on a model repository of one model, the service's
    model.ubj, with MLServer's defaults but for two settings this machine
    needs (toolchain notes, Peers on the V2 route): it listens on 127.0.0.1
    only, and it predicts in its main process (`parallel_workers` 0: its
    default pool of one worker process failed to load the model here).

    mlserver-xgboost loads a .ubj file as an XGBRegressor, so its output
    `predict` holds the probability, as the service's `probability` does.

    XGBoost predicts there with all cores by default (OpenMP); `threads`
    sets OMP_NUM_THREADS instead, as the service runs one thread per worker."""

    key = "mlserver"
    label = "MLServer 1.7.1 (mlserver-xgboost, parallel_workers 0)"
    path = V2_INFER
    body = V2_SINGLE_ROW
    start_timeout = 120

    def __init__(self, workdir: Path, model_file: Path, executable: Path, threads: int | None = None):
        super().__init__(workdir)
        self.model_file = model_file
        self.executable = executable
        self.threads = threads
        self.repository = self.workdir / "mlserver"
        if threads:
            self.label = self.label[:-1] + f", OMP_NUM_THREADS={threads})"

    def environment(self) -> dict | None:
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads)} if self.threads else None

    def command(self):
        return [str(self.executable), "start", str(self.repository)]

    def prepare(self):
        """The model repository: settings.json with the HTTP port picked for
        it and two more free ones, and the model's folder."""
        model_dir = self.repository / MODEL_NAME
        model_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.model_file, model_dir / "model.ubj")
        (model_dir / "model-settings.json").write_text(
            json.dumps(
                {
                    "name": MODEL_NAME,
                    "implementation": "mlserver_xgboost.XGBoostModel",
                    "parameters": {"uri": "./model.ubj"},
                }
            )
        )
        ports = {self.port}
        while len(ports) < 3:
            ports.add(free_port())
        grpc_port, metrics_port = sorted(ports - {self.port})
        (self.repository / "settings.json").write_text(
            json.dumps(
                {
                    "host": LOCALHOST,
                    "http_port": self.port,
                    "grpc_port": grpc_port,
                    "metrics_port": metrics_port,
                    "parallel_workers": 0,
                }
            )
        )

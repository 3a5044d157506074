"""The ceiling of the service's stack: Flask under the service's own gunicorn
command line (configuration, worker count and class), answering the
article's route with a constant. No body is read and no model runs, so the
gap between the service and this is what the service's own work costs.

    python -m bench.ceiling_app --port PORT --workers N [--workers-port PORT]

With WORKERS_BEHIND_EDGE set (bench.servers.EdgeCeilingServer), gunicorn
binds 127.0.0.1:--workers-port, as the service's does behind its edge.
"""

import argparse

from flask import Flask, jsonify

from diabetes.serving import exec_gunicorn

app = Flask(__name__)


# The path is spelled out rather than imported from diabetes.api_examples, whose
# import brings numpy into every worker: the ceiling carries nothing it does not need.
@app.post("/katana-ml/api/v1.0/diabetes")
def constant_prediction():
    return jsonify({"prediction": 0.5})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--workers-port", type=int, default=0)
    arguments = parser.parse_args()
    exec_gunicorn(__file__, "app", "127.0.0.1", arguments.port, arguments.workers, arguments.workers_port)

"""The article's endpoint as the article wrote it: the benchmark's baseline.

    python -m bench.article_app --model MODEL.pkl --port PORT

Flask's development server, a pickled XGBClassifier with XGBoost's default
threading, and per request a split string turned into a one-row pandas
DataFrame. Only the benchmark runs it; the pickle it loads lives in the
benchmark's temporary folder, never in the project.
"""

import argparse
import pickle

import pandas as pd
from flask import Flask, jsonify, request

from diabetes.features import FEATURE_NAMES

app = Flask(__name__)
model = None  # the unpickled classifier, loaded before the server starts


def article_prediction(classifier, data: str) -> float:
    """The article's work per request, also timed in process by bench.in_process."""
    values = [float(value) for value in data.split(",")]
    row = pd.DataFrame([values], columns=list(FEATURE_NAMES))
    return float(classifier.predict_proba(row)[0][1])


@app.route("/katana-ml/api/v1.0/diabetes", methods=["POST"])
def predict():
    return jsonify({"prediction": article_prediction(model, request.json["data"])})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the pickled XGBClassifier")
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    with open(arguments.model, "rb") as file:
        model = pickle.load(file)
    app.run(host="127.0.0.1", port=arguments.port)

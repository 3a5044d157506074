"""One row predicted in process, without HTTP: the served bundle's
`predict_proba`, XGBoost's own `inplace_predict`, and the article's
per-request path, each timed call by call; how far the bundle's answers are
from XGBoost's over the whole data set; and the size of the model.

    python -m bench.in_process --model-dir DIR --budget-seconds S --output FILE

bench.run starts it as a child process: it imports XGBoost, whose threads
must stay out of the benchmark's own process (it forks the servers).
"""

import argparse
import json
import time
from pathlib import Path
from statistics import median

import numpy as np
from xgboost import XGBClassifier

from bench.article_app import article_prediction
from bench.bodies import data_rows
from diabetes.api_examples import ARTICLE_BODY, ARTICLE_VALUES
from diabetes.features import to_model_input
from diabetes.prediction import load_bundle

MOST_CALLS = 20_000
REPEATS = 5
WARMUP_CALLS = 20  # Treelite's predictor is built on the first call


def microseconds_per_call(call, budget_seconds: float) -> dict:
    """Each call timed on its own, so that the median ignores the calls a
    garbage collection or another process interrupted. Up to MOST_CALLS calls
    in REPEATS repeats, each repeat stopping at its share of the budget: the
    article's path is a hundred times slower than the bundle's."""
    for _ in range(WARMUP_CALLS):
        call()
    repeat_medians, calls = [], 0
    for _ in range(REPEATS):
        deadline = time.perf_counter() + budget_seconds / REPEATS
        timings = []
        while len(timings) < MOST_CALLS // REPEATS and (len(timings) < 50 or time.perf_counter() < deadline):
            started = time.perf_counter_ns()
            call()
            timings.append(time.perf_counter_ns() - started)
        repeat_medians.append(median(timings) / 1000)
        calls += len(timings)
    return {"median": median(repeat_medians), "min": min(repeat_medians), "max": max(repeat_medians), "calls": calls}


def tree_depth(node: dict) -> int:
    return 0 if "leaf" in node else 1 + max(tree_depth(child) for child in node["children"])


def leaf_count(node: dict) -> int:
    return 1 if "leaf" in node else sum(leaf_count(child) for child in node["children"])


def model_size(bundle) -> dict:
    trees = [json.loads(tree) for tree in bundle.booster.get_dump(dump_format="json")]
    return {
        "trees": bundle.metadata.trees,
        "trees_in_booster": len(trees),
        "max_depth": max(map(tree_depth, trees)),
        "leaves": sum(map(leaf_count, trees)),
    }


def measure(model_dir: Path, budget_seconds: float) -> dict:
    bundle = load_bundle(model_dir)
    # Loaded as the article's pickle was made (bench.run), with XGBoost's default threads.
    classifier = XGBClassifier()
    classifier.load_model(model_dir / bundle.metadata.model_file)
    batch_of_one = [ARTICLE_VALUES]
    rows = data_rows()
    one_at_a_time = np.array([bundle.predict_proba([values])[0] for values in rows], dtype=np.float64)
    all_at_once = bundle.booster.inplace_predict(to_model_input(rows)).astype(np.float64)
    return {
        "row": ARTICLE_BODY["data"],
        "microseconds": {
            "bundle": microseconds_per_call(lambda: bundle.predict_proba(batch_of_one), budget_seconds),
            "xgboost": microseconds_per_call(
                lambda: bundle.booster.inplace_predict(to_model_input(batch_of_one)), budget_seconds
            ),
            "article": microseconds_per_call(
                lambda: article_prediction(classifier, ARTICLE_BODY["data"]), budget_seconds
            ),
        },
        "max_difference_to_xgboost": float(np.max(np.abs(one_at_a_time - all_at_once))),
        "rows_compared": len(rows),
        "model": model_size(bundle),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a model version folder")
    parser.add_argument("--budget-seconds", type=float, required=True, help="most time spent timing each path")
    parser.add_argument("--output", type=Path, required=True, help="where the figures go, as JSON")
    arguments = parser.parse_args()
    # A file rather than stdout, where XGBoost may print its own warnings.
    arguments.output.write_text(json.dumps(measure(arguments.model_dir, arguments.budget_seconds), indent=2))

"""The API's routes that other code calls by name, and the article's example
request: the OpenAPI document shows it, the probe sends it, and the tests and
benchmarks reuse it."""

from diabetes.features import FEATURE_NAMES

ARTICLE_PATH = "/katana-ml/api/v1.0/diabetes"
ARTICLE_VALUES = [1, 106, 70, 28, 135, 34.2, 0.142, 22]
ARTICLE_BODY = {"data": ",".join(map(str, ARTICLE_VALUES))}
EXAMPLE_RECORD = dict(zip(FEATURE_NAMES, ARTICLE_VALUES))
CSV_HEADER = ",".join(FEATURE_NAMES)
V2_INFER = "/v2/models/diabetes/infer"

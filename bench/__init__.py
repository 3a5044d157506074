"""A side-by-side HTTP benchmark of the article's route: the article's own
endpoint, this project's service as `make serve` runs it, and the ceiling of
the same stack. `python -m bench.run [--quick] [--mlflow]`; see bench/README.md."""

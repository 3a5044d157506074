"""The project's shared Python code, imported by the notebooks (and so by the
scripts generated from them), the Makefile's tools and the tests:

- features, model_store, prediction, versions, release_layout: the model's
  inputs, model versions on disk, a loaded model that predicts, the life of
  model versions and releases (build, list, check, switch, roll back), and
  where a release keeps each part;
- contract, open_inference, openapi, api_examples: what the API accepts
  (and Triton's binary tensor data extension of V2), its OpenAPI document,
  the routes other code names and the article's example request;
- observability, docs, serving, gunicorn_config: metrics and logs, the docs
  page, and how gunicorn runs the endpoint script;
- params, settings, probe: notebook parameters, their environment overrides,
  and waiting for the service to answer;
- processes, wrk, dask_cluster: what the tests and the benchmark start and
  watch (ports, bounded commands, process trees' CPU and memory, wrk loads,
  a Dask cluster of real processes); the service imports none of them.
"""

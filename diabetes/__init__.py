"""The project's shared Python code, imported by the notebooks (and so by the
scripts generated from them), the Makefile's tools and the tests.

Its modules, one line each (tests/test_words.py holds this list to the tree):

Training a model
    data              the training rows, from a CSV file or SQL, checked and named by a hash
    features          the model's inputs: names, meaning and units, in the model's order
    training          choosing, fitting and measuring a model on the training rows only
    cluster_training  the training notebook's steps on a Dask cluster (xgboost.dask)
    trainers          the training notebook's one Trainer: in this process or on a Dask cluster
    bigdata           a synthetic Pima-shaped data set of any size, as Parquet (make bigdata)
    sweep             the training notebook once per parameter set, compared (make sweep)
    params            refuses a parameter file that names a parameter the notebook lacks
    credentials       data URLs' credentials: recorded redacted, handed only to the run
    notebook_imports  the modules a notebook imports: the Makefile's prerequisites of a model
    tracking          each run and published version in MLflow, champion following current

Model versions and releases
    model_metadata    metadata.json's contract: every key typed, checked at publish and load
    model_store       model versions on disk, the latest and current links, checked loads
    versions          model versions and releases: built, checked, listed, switched, rolled back
    release_layout    where a release keeps its script, package, model, settings and manifest
    prediction        a loaded model that predicts: XGBoost, folded trees or Treelite
    additive_trees    trees that each split on one feature, folded into step functions

The API
    contract          what every route accepts, from the model's metadata: the body readers
    errors            the error catalogue: codes, statuses, the JSON envelope
    number_checks     the numbers of a body checked: per value, and at C speed for many
    request_body      a request's body, read within its size and time limits, decompressed
    responses         the JSON answers, handed to the WSGI server as they are
    open_inference    the Open Inference Protocol V2: names, parameters, Triton's binary data
    openapi           the OpenAPI 3 document, derived from the contract
    docs              the Swagger UI page, its assets served by the app itself
    api_examples      the routes other code names, and the article's example request
    settings          the service's settings: parameters, environment, who may call
    observability     metrics, JSON access logs, stage timings and the prediction log
    gathered_metrics  prometheus-client's multiprocess values, their writes gathered

Running the service
    serving           starts an endpoint script under gunicorn, once its release checks out
    gunicorn_config   gunicorn's settings of the service
    gevent_worker     gunicorn's gevent worker, made fair to every connection
    worker_memory     a worker's memory cap: past it, the worker leaves gracefully
    edge              HAProxy in front of gunicorn, started and watched by PM2
    pm2_metrics       the whole service's figures in pm2 monit
    probe             waits until the service answers the article's request
"""

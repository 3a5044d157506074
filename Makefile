# A notebook-first diabetes API: `make serve` publishes it, `make test` proves it.
# `make` alone lists the verbs.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules --warn-undefined-variables

# ---- Settings (override on the command line: make train TRAIN_PARAMS="...") --
VENV         := .venv
# Parameter files of the training notebook, applied in order (later wins).
TRAIN_PARAMS := params/train.yaml
# Model versions, the `latest` link to the newest, the `current` link to the one served.
MODELS_DIR   := build/models
# Executed notebooks and reports of the latest runs.
RUNS_DIR     := build/runs
# PM2's state (never the user's global ~/.pm2) and the service's logs.
PM2_HOME     := $(CURDIR)/build/pm2
LOG_DIR      := $(CURDIR)/build/logs
# The service's settings are the endpoint notebook's parameters, overridable
# from the environment: DIABETES_PORT=8080 DIABETES_HOST=0.0.0.0 make serve
DIABETES_MODEL_DIR ?= $(abspath $(MODELS_DIR))/current
# The SQLite database `make db` loads the data set into.
DB           := build/diabetes.sqlite
# papermill's progress bar for `make train` in a terminal; quiet in CI and logs.
CI           ?=
# Parameter sets of `make sweep`; PUBLISH=best publishes its best run through
# `make train` (and its quality gate).
SWEEP        := params/sweep.yaml
SWEEPS_DIR   := build/sweeps
PUBLISH      :=
# `make lab`: JupyterLab's port, and more of its flags (e.g. --no-browser).
LAB_PORT     := 8888
LAB_FLAGS    :=
# `make bench QUICK=1`: one round of short loads, a smoke run (otherwise
# three rounds of 5 s loads).
QUICK        :=
# MLServer, the benchmark's peer on the V2 route, in a venv of its own.
BENCH_VENV   := build/bench-venv

# ---- Variables ----------------------------------------------------------------
APP       := diabetes-api# the app's name in ecosystem.config.js
PYTHON    := $(VENV)/bin/python
PM2       := node_modules/.bin/pm2
NEWMAN    := node_modules/.bin/newman
PAPERMILL := $(PYTHON) -m papermill -k python3 --no-progress-bar
NBCONVERT := $(PYTHON) -m nbconvert
MODEL     := $(MODELS_DIR)/latest/metadata.json
# When the latest model and script were last checked and promoted.
DEPLOYED  := $(MODELS_DIR)/.deployed
VENV_OK   := $(VENV)/.installed
BENCH_VENV_OK := $(BENCH_VENV)/.installed
TRAIN_PROGRESS := $(if $(CI),--no-progress-bar,$(shell [ -t 2 ] && echo --progress-bar || echo --no-progress-bar))
NODE_OK   := node_modules/.installed

export PM2_HOME LOG_DIR DIABETES_MODEL_DIR
# Kernels come from the project's venv only, never from the user's Jupyter.
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
export JUPYTER_PREFER_ENV_PATH := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# ---- Verbs --------------------------------------------------------------------
.PHONY: help setup train scripts serve stop status logs monit models rollback postman collection test bench reliability lab lock clean wrk db postgresql sweep

## help     list the verbs (the default)
help:
	@sed -n 's/^## /make /p' $(MAKEFILE_LIST)

## setup    install Python packages in .venv and the Node tools (pm2, newman) in node_modules
setup: $(VENV_OK) $(NODE_OK)

## train    run notebooks/train.ipynb with papermill, publishing the model if it passes its gate
train: $(MODEL)

## db       load the data set into a SQLite database (build/diabetes.sqlite) to train from SQL
db: $(DB)

## sweep    train once per parameter set of params/sweep.yaml, in parallel; results.csv and report.html (PUBLISH=best)
sweep: $(VENV_OK)
	@mkdir -p $(SWEEPS_DIR)
	$(PYTHON) -m diabetes.sweep $(SWEEP) --sweeps-dir $(SWEEPS_DIR)
	@if [ "$(PUBLISH)" = best ]; then \
	    $(MAKE) --no-print-directory train TRAIN_PARAMS="$$(cat $(SWEEPS_DIR)/latest/train-params)"; \
	elif [ -n "$(PUBLISH)" ]; then echo "PUBLISH=$(PUBLISH): only PUBLISH=best is known" >&2; exit 2; fi

## scripts  convert the notebooks into scripts/*.py with nbconvert
scripts: scripts/train.py scripts/serve.py

## serve    install, train if needed, convert, and run the API under PM2 (reloads it after a change)
serve: $(DEPLOYED)
	@# PM2's state (its dump, its sockets) is the user's alone.
	@mkdir -p $(PM2_HOME) && chmod 700 $(PM2_HOME)
	@$(PM2) describe $(APP) > /dev/null 2>&1 || $(PM2) start ecosystem.config.js
	@$(PYTHON) -m diabetes.probe --timeout 60 --expect-model $(DIABETES_MODEL_DIR)

## stop     stop the API and the project's PM2 daemon
stop:
	@# pm2 stop lets the requests in flight finish (pm2 kill alone does not wait for them).
	@if [ -e $(PM2_HOME)/pm2.pid ]; then $(PM2) stop all > /dev/null; $(PM2) kill; else echo "PM2 is not running"; fi

## models   list the model versions with their metrics (* marks the one served)
models: $(VENV_OK)
	@$(PYTHON) -m diabetes.models list $(MODELS_DIR)

## rollback serve the version before the current one (checked first; reloads without downtime)
rollback: $(VENV_OK) $(NODE_OK)
	$(PYTHON) -m diabetes.models rollback $(MODELS_DIR)
	@if $(PM2) describe $(APP) > /dev/null 2>&1; then $(PM2) sendSignal SIGHUP $(APP) > /dev/null; \
	    $(PYTHON) -m diabetes.probe --timeout 60 --expect-model $(DIABETES_MODEL_DIR); fi

## status   show the API's process under PM2
status: $(NODE_OK)
	@$(PM2) status

## logs     show the API's recent logs (access log and errors)
logs: $(NODE_OK)
	@$(PM2) logs $(APP) --nostream --lines 50

## monit    watch the API's CPU, memory and logs live with pm2 monit
monit: $(NODE_OK)
	@$(PM2) monit

## postman  run the Postman collection with newman against the running API
postman: serve
	@$(NEWMAN) run postman/diabetes-api.postman_collection.json \
	    --environment postman/local.postman_environment.json \
	    --env-var baseUrl=$$($(PYTHON) -m diabetes.probe --print-url)

## collection  regenerate the Postman collection from diabetes/catalog.py
collection: $(VENV_OK)
	$(PYTHON) -m diabetes.postman

## test     run the whole test suite (trains, serves under PM2, runs newman; cleans up)
test: setup wrk postgresql
	$(PYTHON) -m pytest

## bench    load the API over HTTP beside the article's endpoint, a hello-world ceiling, MLServer and MLflow if installed (QUICK=1: short)
bench: setup wrk $(BENCH_VENV_OK)
	$(PYTHON) -m bench.run --mlflow --mlserver-venv $(BENCH_VENV) $(if $(QUICK),--quick)

## reliability  the long load, deploy and fault scenarios; prints what was lost
reliability: setup wrk
	RELIABILITY=long $(PYTHON) -m pytest -q -s tests/test_reliability.py

## lab      open the notebooks in JupyterLab (installed on first use)
lab: $(VENV_OK)
	@# Installed within requirements.txt's pins; rfc3987-syntax (which jupyterlab pulls in, and which
	@# adds ~2 s to every papermill and nbconvert start) is removed: jsonschema only uses it if present.
	@$(PYTHON) -c "import jupyterlab" 2> /dev/null || { \
	    $(PYTHON) -m pip install --quiet -r requirements-lab.txt -c <(grep -v '^-e ' requirements.txt) && \
	    $(PYTHON) -m pip uninstall --quiet --yes rfc3987-syntax; }
	@# As root (containers, CI), Jupyter refuses to start without --allow-root. It prints its URL with the token.
	$(PYTHON) -m jupyterlab --ip=127.0.0.1 --port=$(LAB_PORT) $(if $(filter 0,$(shell id -u)),--allow-root) \
	    $(LAB_FLAGS) notebooks/

## lock     re-pin requirements.txt from requirements.in in a clean venv
lock:
	rm -rf build/lock-venv
	python3 -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet -r requirements.in
	{ echo "# Pinned by \`make lock\` from requirements.in: edit that file, not this one."; \
	  build/lock-venv/bin/pip freeze --exclude-editable; \
	  echo "# The project's own shared code (diabetes/), importable by notebooks, scripts and tests"; \
	  echo "-e ."; } > requirements.txt
	rm -rf build/lock-venv

## clean    stop the API and delete everything runs produced (build/, scripts/)
clean: stop
	rm -rf build scripts

# The HTTP load generator of the benchmark and the reliability tests, from
# Debian's packages.
wrk:
	@command -v wrk > /dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    apt-get update -qq && apt-get install -y -qq wrk > /dev/null; \
	  else echo "install wrk first: sudo apt-get install wrk"; exit 1; fi; }

# Debian's PostgreSQL server, which the tests start (as the `postgres` user, in
# a temporary folder) to train from a real database.
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl > /dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    apt-get update -qq && apt-get install -y -qq postgresql > /dev/null; \
	  else echo "install PostgreSQL first: sudo apt-get install postgresql"; exit 1; fi; }

# ---- Files --------------------------------------------------------------------
$(VENV_OK): requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.txt
	@# Quiet kernels: no "running over TCP" warning, tracebacks without colour codes.
	mkdir -p $(VENV)/etc/ipython
	printf 'c.IPKernelApp.log_level = "ERROR"\nc.InteractiveShell.colors = "nocolor"\n' \
	    > $(VENV)/etc/ipython/ipython_kernel_config.py
	touch $@

# The benchmark's MLServer: every package pinned, installed without resolving
# so that xgboost-cpu stands in for the xgboost that mlserver-xgboost names.
$(BENCH_VENV_OK): bench/requirements-mlserver.txt
	rm -rf $(BENCH_VENV)
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet --no-deps -r $<
	touch $@

$(NODE_OK): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The executed notebook is the run's record even when the run fails, so it is
# not a target: the model is. A failed gate publishes nothing.
$(MODEL): notebooks/train.ipynb $(TRAIN_PARAMS) data/pima-indians-diabetes.data.csv \
          diabetes/features.py diabetes/bundle.py diabetes/data.py diabetes/training.py | $(VENV_OK)
	@mkdir -p $(RUNS_DIR)
	$(PYTHON) -m diabetes.params notebooks/train.ipynb $(TRAIN_PARAMS)
	$(PAPERMILL) $(TRAIN_PROGRESS) --log-output notebooks/train.ipynb $(RUNS_DIR)/train.ipynb \
	    $(addprefix -f ,$(TRAIN_PARAMS)) -p models_dir $(MODELS_DIR)
	$(NBCONVERT) --to html --log-level=WARN $(RUNS_DIR)/train.ipynb
	cp $(RUNS_DIR)/train.ipynb $(RUNS_DIR)/train.html $(MODELS_DIR)/latest/

$(DB): data/pima-indians-diabetes.data.csv diabetes/data.py | $(VENV_OK)
	@mkdir -p $(dir $@)
	rm -f $@
	$(PYTHON) -m diabetes.data load $< sqlite:///$@

scripts/%.py: notebooks/%.ipynb notebooks/templates/generated_script.py.j2 | $(VENV_OK)
	$(NBCONVERT) --to python --no-prompt --log-level=WARN --output-dir scripts \
	    --template-file notebooks/templates/generated_script.py.j2 \
	    --TagRemovePreprocessor.remove_cell_tags='["notebook-only"]' $<

# Before a new script or model goes live, the endpoint notebook runs under
# papermill against them (loads the latest model, checks its sample
# prediction, answers test requests), and the model is checked again as it is
# promoted to `current`: a model that fails is never served, and the command
# fails saying why. A running service then reloads with gunicorn's graceful
# SIGHUP: new workers load the new script and model, old ones finish the
# requests they hold.
$(DEPLOYED): scripts/serve.py $(MODEL) $(wildcard diabetes/*.py) | $(VENV_OK) $(NODE_OK)
	@mkdir -p $(RUNS_DIR)
	DIABETES_MODEL_DIR=$(abspath $(MODELS_DIR))/latest $(PAPERMILL) notebooks/serve.ipynb $(RUNS_DIR)/serve.ipynb
	$(PYTHON) -m diabetes.models promote $(MODELS_DIR) latest
	@if $(PM2) describe $(APP) > /dev/null 2>&1; then $(PM2) sendSignal SIGHUP $(APP) > /dev/null; fi
	touch $@

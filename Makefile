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
# Releases of the service (script, package, model, settings, manifest) and the
# `current` link to the one served; beside the models by default.
RELEASES_DIR := $(dir $(MODELS_DIR))releases
# The scripts nbconvert generates from the notebooks.
SCRIPTS_DIR  := scripts
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
# `make bigdata`: how many synthetic Pima-shaped rows, and where their Parquet
# partitions go (train on them: data_url: build/bigdata, dask_scheduler: local).
ROWS         := 10000000
BIGDATA_DIR  := build/bigdata
# `make lab`: JupyterLab's port, and more of its flags (e.g. --no-browser).
LAB_PORT     := 8888
LAB_FLAGS    :=
# `make bench QUICK=1`: one round of short loads, a smoke run (otherwise
# three rounds of 5 s loads).
QUICK        :=
# MLServer, the benchmark's peer on the V2 route, in a venv of its own.
BENCH_VENV   := build/bench-venv
# MLflow, in a venv of its own (requirements-tracking.txt), never the service's:
# make train and make sweep log their runs where the training notebook's
# tracking_uri says; make mlflow shows the local store on port MLFLOW_PORT.
TRACKING_VENV := build/tracking-venv
MLFLOW_PORT   := 5050
# make mlflow's store: empty, the training notebook's default tracking_uri.
MLFLOW_STORE  :=
# The container image (make image): its name, tagged with the id of the
# release it carries (the one `make serve` checked and serves) and `latest`.
IMAGE        = $(APP)
# A Python 3.11 Debian image to build on. Where the engine can neither find
# nor pull it (no registry), the image is built on $(LOCAL_BASE), which
# `make base-image` makes from Debian's own packages.
BASE_IMAGE   := python:3.11-slim-bookworm
# make run-image: the host's port of the API. IMAGE_NETWORK=host shares the
# host's network instead of mapping a port (where the engine cannot map one);
# DIABETES_WORKERS_PORT from the environment then moves gunicorn's port too.
IMAGE_PORT    := 5000
IMAGE_NETWORK :=
# make run-image: a models folder of this host to serve (its `current`
# version), mounted over the image's own; empty: the model baked in.
IMAGE_MODELS  :=
# make image IMAGE_WITH_TRAINING_ROWS=1: the image carries the served model
# version's training record too (its rows, test predictions, executed
# notebook) in /app/training/<version>/, the service user's alone. Empty:
# none of it, only what serving needs (the release: code, model, model card).
IMAGE_WITH_TRAINING_ROWS :=
# make stack: the stack's name on the swarm, its replicas, the host's port of
# its edge, and the names clients call it by (DIABETES_TRUSTED_HOSTS).
STACK         := diabetes
REPLICAS      := 2
STACK_PORT    := 8080
TRUSTED_HOSTS :=
# The swarm the stack runs on: the one DOCKER_HOST names, else one the
# project runs itself (deploy/swarm/nodes), its state in SWARM_DIR.
SWARM_DIR     := build/swarm
DOCKER_HOST   ?=
# The container engine, podman or docker: by default podman when installed.
# CONTAINER_STORE=DIR keeps podman's images and containers there.
CONTAINER_ENGINE ?=
CONTAINER_STORE  ?=

# ---- Variables ----------------------------------------------------------------
# The service's name: PM2's app, its log files, the image. ecosystem.config.js
# and diabetes/settings.py (APP_NAME) say the same; a test checks that they agree.
APP       := diabetes-api
PYTHON    := $(VENV)/bin/python
# PM2's state (its dump, its sockets, the apps' logs) is the user's alone:
# every pm2 command runs with umask 077 and a PM2_HOME of mode 0700.
PM2       := bash -c 'umask 077 && mkdir -p "$$PM2_HOME" && chmod 700 "$$PM2_HOME" && exec node_modules/.bin/pm2 "$$@"' pm2
NEWMAN    := node_modules/.bin/newman
PAPERMILL := $(PYTHON) -m papermill -k python3 --no-progress-bar
NBCONVERT := $(PYTHON) -m nbconvert
MODEL     := $(MODELS_DIR)/latest/metadata.json
# The package's modules a model is made from, as a rule that make includes
# (see the Files below).
MODEL_CODE := build/model.d
# Model versions and releases: list, check, switch, roll back; build a release.
VERSIONS  := $(PYTHON) -m diabetes.versions
# A part of a release (script, notebook, package, model, settings, manifest,
# check) where diabetes/release_layout.py says it lives: $(call release_part,RELEASE_DIR,PART)
release_part = $(shell $(PYTHON) -I diabetes/release_layout.py $(1) $(2))
# The release being built and checked, before it is sealed under its id.
STAGED    := $(RELEASES_DIR)/.staging
# When the latest model, script and package were last released.
DEPLOYED  := $(RELEASES_DIR)/.deployed
VENV_OK   := $(VENV)/.installed
TRAIN_PROGRESS := $(if $(CI),--no-progress-bar,$(shell [ -t 2 ] && echo --progress-bar || echo --no-progress-bar))
BENCH_VENV_OK := $(BENCH_VENV)/.installed
TRACKING_VENV_OK := $(TRACKING_VENV)/.installed
# A step of diabetes/tracking.py (train, sweep, champion) in the tracking venv,
# installed first if the step would log (tracking is on by default, and a
# fresh `make serve` trains). It never fails: tracking never blocks training
# or a release.
track = if [ ! -e $(TRACKING_VENV_OK) ] && $(PYTHON) -m diabetes.tracking wanted $(1); then \
            echo "tracking: installing MLflow in $(TRACKING_VENV) (once)" >&2; \
            $(MAKE) --no-print-directory $(TRACKING_VENV_OK) > /dev/null || true; fi; \
          if [ -e $(TRACKING_VENV_OK) ]; then $(TRACKING_VENV)/bin/python -m diabetes.tracking $(1) \
            || echo "tracking: WARNING, $(TRACKING_VENV)'s python failed: not tracked" >&2; \
          else echo "tracking: WARNING, no $(TRACKING_VENV) (make setup installs it): not tracked" >&2; fi
NODE_OK   := node_modules/.installed
# podman (or docker) with the options this machine needs (see the script).
ENGINE     := container/engine
LOCAL_BASE := localhost/diabetes-base:bookworm
IMAGE_DIR  := build/image
# What the image's build copies in (see Containerfile).
IMAGE_CONTEXT := $(IMAGE_DIR)/context
# Node packages the image runs: PM2 and its log rotation, not newman.
IMAGE_NODE_PACKAGES := pm2 pm2-logrotate
# The other devDependencies of ./package.json, as `npm pkg delete` names them.
NODE_PACKAGES_NOT_IN_IMAGE := Object.keys(require("./package.json").devDependencies) \
  .filter((name) => !process.argv.includes(name)).map((name) => `devDependencies.$${name}`).join(" ")
# The swarm `make stack` deploys on: DOCKER_HOST's (SWARM_HOST marks it so),
# else the project's own, started if need be.
swarm_host = $(if $(DOCKER_HOST),$(DOCKER_HOST) SWARM_HOST=1,$$(deploy/swarm/nodes $(SWARM_DIR) up | tail -n 1 | sed 's/^DOCKER_HOST=//'))
# The release the image carries, and what its manifest says of it.
IMAGE_RELEASE = $(realpath $(RELEASES_DIR)/current)
release_field = $(shell $(PYTHON) -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
                  $(call release_part,$(IMAGE_RELEASE),manifest) $(1))
# The Debian mirror that apt uses here: make base-image installs from it.
DEBIAN_MIRROR = $(or $(shell apt-get indextargets --format '$$(REPO_URI)' 'Identifier: Packages' \
                  'Codename: bookworm' 'Component: main' 2> /dev/null | head -n 1),http://deb.debian.org/debian/)

export PM2_HOME LOG_DIR DIABETES_MODEL_DIR RELEASES_DIR
export CONTAINER_ENGINE CONTAINER_STORE
# Kernels come from the project's venv only, never from the user's Jupyter.
export JUPYTER_PATH := $(CURDIR)/$(VENV)/share/jupyter
export JUPYTER_PREFER_ENV_PATH := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# ---- Verbs --------------------------------------------------------------------
.PHONY: help setup train scripts serve stop status logs monit models releases rollback postman collection check test lint format bench reliability lab lock clean wrk db postgresql sweep bigdata bench-train haproxy mlflow chromium

## help     list the verbs (the default)
help:
	@sed -n 's/^## /make /p' $(MAKEFILE_LIST)

## setup    install Python packages in .venv, MLflow in build/tracking-venv, the Node tools (pm2, newman) in node_modules; enable .githooks
# The installs, side by side: each waits mostly on unpacking and the network.
SETUP_INSTALLS := $(VENV_OK) $(TRACKING_VENV_OK) $(NODE_OK)
setup:
	@$(MAKE) --no-print-directory -j 3 $(SETUP_INSTALLS)
	@# In a git checkout, the project's hooks: commit-msg refuses a subject of 72 characters or more.
	@if [ "$$(git rev-parse --show-toplevel 2> /dev/null)" = "$(CURDIR)" ]; then git config core.hooksPath .githooks; fi

## train    run notebooks/train.ipynb with papermill, publishing the model if it passes its gate
train: $(MODEL)

## db       load the data set into a SQLite database (build/diabetes.sqlite) to train from SQL
db: $(DB)

## bigdata  write ROWS synthetic Pima-shaped rows as Parquet partitions in BIGDATA_DIR (to train on a Dask cluster)
bigdata: $(VENV_OK)
	$(PYTHON) -m diabetes.bigdata $(ROWS) $(BIGDATA_DIR)

## sweep    train once per parameter set of params/sweep.yaml, in parallel; results.csv and report.html (PUBLISH=best)
sweep: $(VENV_OK)
	@mkdir -p $(SWEEPS_DIR)
	$(PYTHON) -m diabetes.sweep $(SWEEP) --sweeps-dir $(SWEEPS_DIR)
	@$(call track,sweep $(SWEEPS_DIR)/latest)
	@if [ "$(PUBLISH)" = best ]; then \
	    $(MAKE) --no-print-directory train TRAIN_PARAMS="$$(cat $(SWEEPS_DIR)/latest/train-params)"; \
	elif [ -n "$(PUBLISH)" ]; then echo "PUBLISH=$(PUBLISH): only PUBLISH=best is known" >&2; exit 2; fi

## scripts  convert the notebooks into scripts/*.py with nbconvert
scripts: $(SCRIPTS_DIR)/train.py $(SCRIPTS_DIR)/serve.py

## serve    install, train if needed, convert, build and check a release, and run it under PM2 (reloads it after a change)
serve: $(DEPLOYED) | haproxy
	@for app in $(APP) $(APP)-edge log-rotation; do \
	    $(PM2) describe $$app > /dev/null 2>&1 || $(PM2) start ecosystem.config.js --only $$app > /dev/null; done
	@$(PYTHON) -m diabetes.probe --timeout 60 --expect-model $(call release_part,$(RELEASES_DIR)/current,model)

## stop     stop the API and the project's PM2 daemon
stop:
	@# pm2 stop lets the requests in flight finish (pm2 kill alone does not wait for them): the edge's
	@# first, while the workers still answer what it holds, then the workers' own.
	@if [ -e $(PM2_HOME)/pm2.pid ]; then $(PM2) stop $(APP)-edge > /dev/null 2>&1 || true; \
	    $(PM2) stop all > /dev/null; $(PM2) kill; else echo "PM2 is not running"; fi

## models   list the model versions with their metrics (* marks the one served)
models: $(VENV_OK)
	@$(VERSIONS) models list $(MODELS_DIR)

## releases list the releases: id, model version, code commit, when built, checks passed (* marks the one served)
releases: $(VENV_OK)
	@$(VERSIONS) releases list $(RELEASES_DIR)

## rollback serve the release before the current one, code and model together (checked first; reloads without downtime)
rollback: $(VENV_OK) $(NODE_OK)
	$(VERSIONS) releases rollback $(RELEASES_DIR) --models-dir $(MODELS_DIR)
	@$(call track,champion $(MODELS_DIR)/current)
	@if $(PM2) describe $(APP) > /dev/null 2>&1; then $(PM2) sendSignal SIGHUP $(APP) > /dev/null; \
	    $(PYTHON) -m diabetes.probe --timeout 60 --expect-model $(call release_part,$(RELEASES_DIR)/current,model); fi

## status   show the API's process under PM2
status: $(NODE_OK)
	@$(PM2) status
	@$(PYTHON) -m diabetes.edge status $(PM2_HOME)/run || true

## logs     show the API's recent logs (access log and errors)
logs: $(NODE_OK)
	@$(PM2) logs $(APP) --nostream --lines 50

## monit    watch the API's CPU, memory and logs live with pm2 monit
monit: $(NODE_OK)
	@$(PM2) monit

## postman  run the Postman collection with newman against the running API
postman: serve
	@$(NEWMAN) run postman/$(APP).postman_collection.json \
	    --environment postman/local.postman_environment.json \
	    --env-var baseUrl=$$($(PYTHON) -m diabetes.probe --print-url)

## collection  regenerate the Postman collection from the tests' calls (tests/postman_collection.py)
collection: $(VENV_OK)
	$(PYTHON) -m tests.postman_collection

## check    lint, then the fast tier of the tests: those that need no model, PM2, server or container (under a minute)
check: lint
	$(PYTHON) -m pytest -m fast

## mlflow   MLflow's UI on the local store (runs of make train and make sweep, the registry) on 127.0.0.1:MLFLOW_PORT
mlflow: $(TRACKING_VENV_OK)
	$(TRACKING_VENV)/bin/python -m diabetes.tracking ui --port $(MLFLOW_PORT) $(if $(MLFLOW_STORE),--store $(MLFLOW_STORE))

## test     lint, then run the whole test suite (trains, serves under PM2, runs newman, a stack on a two-node swarm; cleans up)
test: wrk postgresql haproxy docker busybox-static chromium
	@$(MAKE) --no-print-directory -j 4 $(SETUP_INSTALLS) $(BENCH_VENV_OK)
	@$(MAKE) --no-print-directory setup lint
	$(PYTHON) -m pytest

## lint     ruff's checks and its formatting, of the code and the notebooks (make format applies both)
lint: $(VENV_OK)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

## format   format the code and the notebooks, and fix what ruff's checks can fix
format: $(VENV_OK)
	$(PYTHON) -m ruff check --fix .
	$(PYTHON) -m ruff format .

## bench    load the API over HTTP beside the article's endpoint, a hello-world ceiling, MLServer and MLflow if installed (QUICK=1: short)
bench: setup wrk docker $(BENCH_VENV_OK)
	$(PYTHON) -m bench.run --mlflow --mlserver-venv $(BENCH_VENV) $(if $(QUICK),--quick)

## bench-train  training time and peak memory per process: 1 M and 10 M rows, in process, LocalCluster, external scheduler
bench-train: $(VENV_OK)
	$(PYTHON) -m bench.train_on_cluster --data-dir build/bench-train

## reliability  the long load, deploy and fault scenarios; prints what was lost
reliability: setup wrk
	RELIABILITY=long $(PYTHON) -m pytest -q -s tests/test_reliability.py

.PHONY: image run-image base-image container-engine debootstrap stack stack-down stack-status docker busybox-static

## image    build the service's container image from the release make serve checked (made first if need be), tagged <release id> and latest
image: $(DEPLOYED) $(IMAGE_DIR)/wheels.staged $(IMAGE_DIR)/node_modules.staged | container-engine
	@# The release as sealed, once it matches its manifest; not one that carries its model version's
	@# training record (a release sealed before releases left it out).
	$(VERSIONS) releases check $(RELEASES_DIR) --release $(notdir $(IMAGE_RELEASE)) --serving-only
	@# The previous context's copy is read-only.
	chmod -R u+w $(IMAGE_CONTEXT)/app $(IMAGE_CONTEXT)/training 2> /dev/null || true
	rm -rf $(IMAGE_CONTEXT)/app $(IMAGE_CONTEXT)/training
	mkdir -p $(IMAGE_CONTEXT)/app/container $(IMAGE_CONTEXT)/app/releases $(IMAGE_CONTEXT)/training
	cp ecosystem.config.js $(IMAGE_CONTEXT)/app/
	cp container/ecosystem.config.js container/healthcheck.py container/pm2-runtime.js $(IMAGE_CONTEXT)/app/container/
	cp -a $(IMAGE_RELEASE) $(IMAGE_CONTEXT)/app/releases/
	ln -s $(notdir $(IMAGE_RELEASE)) $(IMAGE_CONTEXT)/app/releases/current
	@# Sealed, a release is its owner's alone (0400, 0500); in the image it is root's, and the service
	@# runs as another user (10001, or whichever an orchestrator picks): files 0444, folders 0555, which
	@# it reads and cannot change. Its content, which its manifest checks, is the same.
	chmod -R a=rX $(IMAGE_CONTEXT)/app/releases/$(notdir $(IMAGE_RELEASE))
	$(VERSIONS) releases check $(IMAGE_CONTEXT)/app/releases --serving-only
	if [ -n "$(IMAGE_WITH_TRAINING_ROWS)" ]; then \
	    cp -R $(MODELS_DIR)/$(call release_field,model_version) $(IMAGE_CONTEXT)/training/ \
	    && chmod -R u=rX,go= $(IMAGE_CONTEXT)/training/$(call release_field,model_version); fi
	@base=$(BASE_IMAGE); if ! $(ENGINE) image inspect $$base > /dev/null 2>&1 \
	    && ! timeout 120 $(ENGINE) pull --quiet $$base > /dev/null 2>&1; then \
	    echo "$$base cannot be pulled (no registry): building on $(LOCAL_BASE) (make base-image)"; \
	    $(MAKE) --no-print-directory base-image > /dev/null; base=$(LOCAL_BASE); fi; \
	$(ENGINE) build --file Containerfile --build-arg BASE_IMAGE=$$base \
	    --label org.opencontainers.image.revision=$(call release_field,commit) \
	    --label org.opencontainers.image.version=$(notdir $(IMAGE_RELEASE)) \
	    --label org.opencontainers.image.created=$(call release_field,built_at) \
	    --label diabetes.release=$(notdir $(IMAGE_RELEASE)) \
	    --label diabetes.model.version=$(call release_field,model_version) \
	    --label diabetes.training-rows=$(if $(IMAGE_WITH_TRAINING_ROWS),included,none) \
	    --tag $(IMAGE):$(notdir $(IMAGE_RELEASE)) --tag $(IMAGE):latest $(IMAGE_CONTEXT)

## run-image  run the image in the foreground, the API on port IMAGE_PORT of this host (Ctrl-C stops it)
run-image: | container-engine
	$(ENGINE) run --rm --name $(notdir $(IMAGE)) \
	    $(if $(IMAGE_NETWORK),--network $(IMAGE_NETWORK) --env DIABETES_PORT=$(IMAGE_PORT) \
	        $${DIABETES_WORKERS_PORT:+--env DIABETES_WORKERS_PORT=$$DIABETES_WORKERS_PORT},--publish $(IMAGE_PORT):5000) \
	    $(if $(IMAGE_MODELS),--volume $(abspath $(IMAGE_MODELS)):/app/models:ro --env DIABETES_MODEL_DIR=/app/models/current) \
	    $(IMAGE):latest

## stack    run the release's image on Docker Swarm: REPLICAS replicas behind the edge, on port STACK_PORT (deploy/compose.yaml)
stack: image | docker
	@export DOCKER_HOST=$(swarm_host); image=$(IMAGE):$(notdir $(IMAGE_RELEASE)); \
	if ! docker image inspect $$image > /dev/null 2>&1; then \
	    $(ENGINE) save localhost/$$image | docker load --quiet > /dev/null && docker tag localhost/$$image $$image; fi; \
	if [ -z "$${SWARM_HOST-}" ]; then deploy/swarm/nodes $(SWARM_DIR) load $$image; fi; \
	edge=$$(docker service inspect --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}' $(STACK)_edge 2> /dev/null \
	        | sed 's/@.*//' || true); \
	IMAGE=$$image EDGE_IMAGE=$${edge:-$$image} REPLICAS=$(REPLICAS) PORT=$(STACK_PORT) TRUSTED_HOSTS=$(TRUSTED_HOSTS) \
	    docker stack deploy --resolve-image never --prune --compose-file deploy/compose.yaml $(STACK) > /dev/null; \
	$(PYTHON) deploy/stack.py wait $(STACK) $(notdir $(IMAGE_RELEASE)) 300
	@echo "the stack $(STACK) answers on http://127.0.0.1:$(STACK_PORT) (make stack-status, make stack-down)"

## stack-down  remove the stack (and stop the project's own swarm, if it runs one)
stack-down:
	@if [ -n "$${DOCKER_HOST-}" ]; then docker stack rm $(STACK); \
	elif [ -e $(SWARM_DIR)/settings ]; then deploy/swarm/nodes $(SWARM_DIR) down; fi

## stack-status  each replica of the stack: state, node, release, model version; and the edge's view of them
stack-status:
	@DOCKER_HOST=$${DOCKER_HOST:-$$(deploy/swarm/nodes $(SWARM_DIR) host)} $(PYTHON) deploy/stack.py status $(STACK)

## base-image  make a Python 3.11 base image from Debian's own packages (debootstrap; no registry needed)
base-image: $(IMAGE_DIR)/debian-bookworm.tar | container-engine
	@$(ENGINE) image inspect $(LOCAL_BASE) > /dev/null 2>&1 || $(ENGINE) import $< $(LOCAL_BASE)
	@echo "base image $(LOCAL_BASE): make image BASE_IMAGE=$(LOCAL_BASE)"

# Debian's packages of the container targets, installed when missing (as
# root, with apt-get): podman with runc (which runs containers where crun
# cannot), unless the engine is docker (CONTAINER_ENGINE=docker, or a docker
# that runs here and no podman); debootstrap for the base image.
container-engine:
	@if [ "$(notdir $(CONTAINER_ENGINE))" = docker ] || { [ -z "$(CONTAINER_ENGINE)" ] \
	    && ! command -v podman > /dev/null && docker info > /dev/null 2>&1; }; then exit 0; fi; \
	command -v podman > /dev/null && command -v runc > /dev/null || { $(call apt_install,podman runc); }

debootstrap:
	@command -v debootstrap > /dev/null || { $(call apt_install,debootstrap); }

# A static busybox: the tiny image of the swarm nodes' test (tests/test_swarm_nodes.py).
busybox-static:
	@dpkg-query --show --showformat='$${Status}' busybox-static 2> /dev/null | grep -q 'install ok installed' \
	    || { $(call apt_install,busybox-static); }

# Debian's Docker (dockerd, containerd, runc, the docker command) and docker-compose, for the
# stack, installed when missing.
docker:
	@command -v dockerd > /dev/null && command -v docker > /dev/null && command -v docker-compose > /dev/null || { $(call apt_install,docker.io docker-compose); }

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
	@# Releases are read-only: their owner may delete them once they are writable again.
	chmod -R u+w build 2> /dev/null || true
	rm -rf build $(SCRIPTS_DIR)

# The HTTP load generator of the benchmark and the reliability tests, from
# Debian's packages.
wrk:
	@command -v wrk > /dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    apt-get update -qq && apt-get install -y -qq wrk > /dev/null; \
	  else echo "install wrk first: sudo apt-get install wrk"; exit 1; fi; }

# Headless Chromium, which opens make mlflow's page in the tests, from Debian's packages.
chromium:
	@command -v chromium > /dev/null || { $(call apt_install,chromium); }

# The service's edge (diabetes/edge.py), from Debian's packages.
haproxy:
	@command -v haproxy > /dev/null || { $(call apt_install,haproxy); }

# Debian's PostgreSQL server, which the tests start (as the `postgres` user, in
# a temporary folder) to train from a real database.
postgresql:
	@ls /usr/lib/postgresql/*/bin/pg_ctl > /dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    apt-get update -qq && apt-get install -y -qq postgresql > /dev/null; \
	  else echo "install PostgreSQL first: sudo apt-get install postgresql"; exit 1; fi; }

# ---- Files --------------------------------------------------------------------
# apt-get install $(1) as root on Debian; elsewhere, say what to install.
apt_install = if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(1) > /dev/null; \
	  else echo "install $(1) first: sudo apt-get install $(1)"; exit 1; fi

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

# MLflow for tracking: every package pinned (requirements-tracking.txt says how to re-pin).
$(TRACKING_VENV_OK): requirements-tracking.txt
	rm -rf $(TRACKING_VENV)
	python3 -m venv $(TRACKING_VENV)
	$(TRACKING_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRACKING_VENV)/bin/python -m pip install --quiet --no-deps -r $<
	touch $@

$(NODE_OK): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The executed notebook is the run's record even when the run fails, so it is
# not a target: the model is. A failed gate publishes nothing. papermill writes
# the parameters into the executed notebook (and so train.html and the model's
# copy): diabetes.credentials gives it every data URL redacted, and the URL
# itself only in the environment of this run (diabetes/credentials.py). Then
# MLflow logs the run from those records (diabetes/tracking.py; a warning at worst).
$(MODEL): notebooks/train.ipynb $(TRAIN_PARAMS) data/pima-indians-diabetes.data.csv | $(VENV_OK)
	@# The executed notebook shows training rows: its copies are the user's alone.
	@install -d -m 700 $(RUNS_DIR)
	$(PYTHON) -m diabetes.params notebooks/train.ipynb $(TRAIN_PARAMS)
	$(PYTHON) -m diabetes.credentials run $(PAPERMILL) $(TRAIN_PROGRESS) --log-output \
	    notebooks/train.ipynb $(RUNS_DIR)/train.ipynb $(addprefix -f ,$(TRAIN_PARAMS)) -p models_dir $(MODELS_DIR)
	$(NBCONVERT) --to html --log-level=WARN $(RUNS_DIR)/train.ipynb
	install -m 600 $(RUNS_DIR)/train.ipynb $(RUNS_DIR)/train.html $(MODELS_DIR)/latest/
	@$(call track,train $(MODELS_DIR)/latest)

# The model's other prerequisites: the package's modules that the training
# notebook and the recipe's tools import, directly or through one another.
# diabetes.notebook_imports reads them (with ast, importing nothing, with any
# python3); make includes its answer, remade when the notebook or a module changes.
$(MODEL_CODE): notebooks/train.ipynb $(wildcard diabetes/*.py)
	@mkdir -p $(dir $@)
	@modules=$$(python3 -m diabetes.notebook_imports $< diabetes/params.py diabetes/credentials.py) && \
	    echo "\$$(MODEL): $$modules" > $@.$$$$ && mv $@.$$$$ $@
include $(MODEL_CODE)

$(DB): data/pima-indians-diabetes.data.csv diabetes/data.py | $(VENV_OK)
	@mkdir -p $(dir $@)
	rm -f $@
	$(PYTHON) -m diabetes.data load $< sqlite:///$@

$(SCRIPTS_DIR)/%.py: notebooks/%.ipynb notebooks/templates/generated_script.py.j2 | $(VENV_OK)
	$(NBCONVERT) --to python --no-prompt --log-level=WARN --output-dir $(SCRIPTS_DIR) \
	    --template-file notebooks/templates/generated_script.py.j2 \
	    --TagRemovePreprocessor.remove_cell_tags='["notebook-only"]' $<

# A new script, package or model goes live as a release (diabetes/versions.py):
# staged (the script, the notebook it came from, a copy of diabetes/ and of
# the latest model, the resolved settings), checked (the endpoint notebook runs
# under papermill against the release's own package and model: loads it,
# checks its sample prediction, answers test requests; then the model's checks
# run again, with the release's code), then sealed (manifest, read-only, its
# id) and made `current`. A release that fails is never served, and the
# command fails saying why. A running service then reloads with gunicorn's
# graceful SIGHUP: new workers import the new release, old ones finish the
# requests they hold.
$(DEPLOYED): $(SCRIPTS_DIR)/serve.py $(MODEL) $(wildcard diabetes/*.py) diabetes/haproxy.cfg | $(VENV_OK) $(NODE_OK)
	@mkdir -p $(RUNS_DIR)
	$(VERSIONS) releases stage $(RELEASES_DIR) --script $(SCRIPTS_DIR)/serve.py --notebook notebooks/serve.ipynb \
	    --package diabetes --model $(MODELS_DIR)/latest > /dev/null
	PYTHONPATH=$(call release_part,$(abspath $(STAGED)),package) \
	DIABETES_MODEL_DIR=$(call release_part,$(abspath $(STAGED)),model) \
	    $(PAPERMILL) --cwd $(STAGED) $(call release_part,$(STAGED),notebook) $(RUNS_DIR)/serve.ipynb
	PYTHONPATH=$(call release_part,$(abspath $(STAGED)),package) $(PYTHON) -P -m diabetes.versions releases seal \
	    $(RELEASES_DIR) --passed "endpoint notebook under papermill" --models-dir $(MODELS_DIR)
	@$(call track,champion $(MODELS_DIR)/current)
	@# (Any pm2 command starts a daemon: none is asked unless one runs.)
	@if [ -e $(PM2_HOME)/pm2.pid ] && $(PM2) describe $(APP) > /dev/null 2>&1; then \
	    $(PM2) sendSignal SIGHUP $(APP) > /dev/null; fi
	touch $@

# The service's Python packages as wheels, built here at the versions that
# requirements.txt pins: the image's build installs them without a network.
$(IMAGE_DIR)/wheels.staged: container/requirements.in requirements.txt | $(VENV_OK)
	rm -rf $(IMAGE_CONTEXT)/wheels
	mkdir -p $(IMAGE_CONTEXT)
	grep -v '^-e ' requirements.txt > $(IMAGE_DIR)/constraints.txt
	$(PYTHON) -m pip wheel --quiet --disable-pip-version-check -r container/requirements.in \
	    --constraint $(IMAGE_DIR)/constraints.txt --wheel-dir $(IMAGE_CONTEXT)/wheels
	cd $(IMAGE_CONTEXT)/wheels && sha256sum *.whl > SHA256SUMS
	touch $@

# The Node packages the image runs, at the versions package-lock.json pins:
# npm ci in a copy of the project's package files whose devDependencies keep
# only those packages, then npm prune drops the rest of the tree.
$(IMAGE_DIR)/node_modules.staged: package.json package-lock.json
	rm -rf $(IMAGE_DIR)/npm $(IMAGE_CONTEXT)/node_modules
	mkdir -p $(IMAGE_DIR)/npm $(IMAGE_CONTEXT)
	cp package.json package-lock.json $(IMAGE_DIR)/npm/
	cd $(IMAGE_DIR)/npm && npm ci --prefer-offline --no-audit --no-fund --loglevel=error \
	  && node -p '$(NODE_PACKAGES_NOT_IN_IMAGE)' $(IMAGE_NODE_PACKAGES) | xargs --no-run-if-empty npm pkg delete \
	  && npm prune --no-audit --no-fund --loglevel=error
	mv $(IMAGE_DIR)/npm/node_modules $(IMAGE_CONTEXT)/node_modules
	rm -rf $(IMAGE_DIR)/npm
	touch $@

# Debian bookworm (Python 3.11) from the mirror apt uses, as a tar of its
# files, kept here so that the base image is made once per machine. apt's
# downloads and lists are left out, as Debian's own images do.
$(IMAGE_DIR)/debian-bookworm.tar: | debootstrap
	rm -rf $(IMAGE_DIR)/rootfs
	mkdir -p $(IMAGE_DIR)
	debootstrap --variant=minbase --include=python3,python3-venv bookworm $(IMAGE_DIR)/rootfs $(DEBIAN_MIRROR) > $(IMAGE_DIR)/debootstrap.log
	rm -rf $(IMAGE_DIR)/rootfs/var/cache/apt/archives/*.deb $(IMAGE_DIR)/rootfs/var/lib/apt/lists/*
	tar --create --file $@ --directory $(IMAGE_DIR)/rootfs .
	rm -rf $(IMAGE_DIR)/rootfs

# Developer entry points. The venv is rebuilt only when a requirements file changes.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
SIM_ARGS ?=

.PHONY: venv test lint run sim

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -r requirements-dev.txt
	touch $(STAMP)

test: venv
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

run:
	@echo "make run: the local cluster command (3 nodes + web API + Celery worker) arrives" >&2
	@echo "with the node process (issue \"Raft node process\"). Nothing is started yet." >&2
	@exit 1

sim: venv
	$(VENV)/bin/python -m raft_node.sim $(SIM_ARGS)

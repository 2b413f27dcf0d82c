# Developer entry points. The venv is rebuilt only when a requirements file or pyproject changes.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
SIM_ARGS ?=

.PHONY: venv test lint run sim

venv: $(STAMP)

# The project itself is installed editable (no dependencies: the pins above are the tested set),
# so its entry points (the raft result backend, `celery raftsync`, the `raftsync` script) exist.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -r requirements-dev.txt
	$(VENV)/bin/python -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

# --dist loadfile: a test file's module-scoped cluster (and the plugin tests' venv) is started
# once. Three workers on two cores: the real-process tests spend much of their time waiting on
# their node and worker processes, so a third worker fills those waits (216 s against 255 s). (xdist's loadgroup marks do nothing under pytest 9.2 with xdist 3.8: xdist sets
# item._nodeid, which pytest 9 no longer reads.)
test: venv
	$(VENV)/bin/python -m pytest -n 3 --dist loadfile $(PYTEST_ARGS)

# The deep search, run by CI after the default suite: the property tests with their large example
# counts and the simulators with 3000 seeds (tests/search_depth.py), plus anything marked slow
# there, and Django's cache tests under each serializer and compressor.
.PHONY: test-deep
test-deep: venv
	RAFTSYNC_TEST_DEPTH=deep $(VENV)/bin/python -m pytest -n 2 -m "not chaos" \
		tests/sim tests/primitives tests/raft tests/conformance/test_django_cache_codecs.py \
		$(PYTEST_ARGS)

# Fault-injection runs with real processes (disk faults, partitions, the soak's short form),
# deselected from `make test`; CI runs them after it. Their long forms are also `slow`.
.PHONY: test-chaos
test-chaos: venv
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile -m "chaos and not slow" tests/realprocess $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

# Local 3-node cluster in the demo's DEBUG mode (data under var/, a development secret generated
# in var/cluster.secret); Ctrl-C stops it.
run: venv
	RAFTSYNC_DEBUG=1 $(VENV)/bin/python manage.py run_cluster --nodes 3

sim: venv
	$(VENV)/bin/python -m raft_node.sim $(SIM_ARGS)

# Consensus benchmark: raftsync vs PySyncObj (about 3 min); BENCH_ARGS=--quick for a smoke run.
BENCH_ARGS ?=
.PHONY: bench
bench: venv
	$(VENV)/bin/python bench/bench_raft.py $(BENCH_ARGS)

# Coordination-primitives benchmark: locks, queue, cache vs redis-py (about 2 min); BENCH_ARGS=--quick for a smoke run.
.PHONY: bench-primitives
bench-primitives: venv
	$(VENV)/bin/python bench/bench_primitives.py $(BENCH_ARGS)

# Celery end-to-end benchmark: raft:// vs redis:// with a real prefork worker, with one producer
# thread and with eight, with confirmed publishes (the default) and with
# confirm_publish=false (about 4 min); BENCH_ARGS=--quick for a smoke run.
.PHONY: bench-celery
bench-celery: venv
	$(VENV)/bin/python bench/bench_celery.py $(BENCH_ARGS)
	$(VENV)/bin/python bench/bench_celery.py --producers 8 $(BENCH_ARGS)
	$(VENV)/bin/python bench/bench_celery.py --raft-option confirm_publish=false $(BENCH_ARGS)
	$(VENV)/bin/python bench/bench_celery.py --producers 8 --raft-option confirm_publish=false $(BENCH_ARGS)

# raftsync next to etcd, side by side in alternating rounds: writes, locks, failover, etcd's Go
# load tool, CPU per operation (about 5 min). Needs the etcd binary (apt-get install -y
# etcd-server etcd-client); without it, it says how to install it and exits 0.
# BENCH_ARGS=--quick for a smoke run (seconds).
.PHONY: bench-etcd
bench-etcd: venv
	$(VENV)/bin/python bench/bench_vs_etcd.py $(BENCH_ARGS)

# How cost grows with the state: cache write/read throughput and p99, lock pairs and queue cycles
# at 10k, 100k and 1M keys, with 100k queued messages and with 100 B / 4 KiB / 64 KiB values; each
# node's RSS, memory per key and snapshot time (about 6 min). BENCH_ARGS=--quick: 1k/2k keys (~10 s).
.PHONY: bench-growth
bench-growth: venv
	$(VENV)/bin/python bench/bench_growth.py $(BENCH_ARGS)

# ElkFS: every target installs what it needs first (scripts/setup.sh is idempotent).
PY := .venv/bin/python
SEEDS ?= 20000
MINUTES ?= 5

.PHONY: setup demo demo-stop test sim sim-mutants bench chaos clean

setup:
	@./scripts/setup.sh

demo: setup
	@$(PY) -m elkfs.testing.demo start

demo-stop: setup
	@$(PY) -m elkfs.testing.demo stop

test: setup
	@$(PY) -m pytest -q -ra --durations=25 tests

sim: setup
	@$(PY) -m tests.sim.run --seeds $(SEEDS)

sim-mutants: setup
	@$(PY) -m tests.sim.mutants

bench: setup
	@$(PY) bench/throughput.py

chaos: setup
	@$(PY) bench/chaos.py --minutes $(MINUTES)

clean:
	rm -rf .venv build *.egg-info

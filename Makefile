# Two entry points for a fresh machine: `make run` (the demo) and `make test` (the full suite).
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test bench clean

# Set-up is quiet: pip's output goes to $(VENV)/install.log and is shown only when it fails.
$(STAMP): pyproject.toml scripts/find-python
	@PY=$$(scripts/find-python) && echo "setting up $(VENV) with $$PY" && \
	  { [ -x $(VENV)/bin/python ] || $$PY -m venv $(VENV); }
	@{ $(VENV)/bin/python -m pip install --upgrade pip && $(VENV)/bin/python -m pip install -e '.[test]'; } \
	  > $(VENV)/install.log 2>&1 || { cat $(VENV)/install.log; echo "set-up failed (log: $(VENV)/install.log)"; exit 1; }
	@touch $@

run: $(STAMP)
	$(VENV)/bin/openclaw-sidecar demo

# One pytest-xdist worker per core, each taking whole modules (tests/conftest.py); `-n 0` in
# PYTEST_ARGS runs the suite in one process.
test: $(STAMP)
	scripts/ensure-redis
	scripts/ensure-gateway $(VENV)/bin/python
	$(VENV)/bin/python -m pytest -n auto $(PYTEST_ARGS)

# The issue-13 performance report (not part of `make test`): table + bench/results/latest.json.
# `make bench BENCH_ARGS=--quick` is the ~5-minute version; bench/README.md says what each row means.
bench: $(STAMP)
	scripts/ensure-bench-tools
	scripts/ensure-gateway $(VENV)/bin/python
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

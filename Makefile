# Two entry points for a fresh machine: `make run` (the demo) and `make test` (the full suite).
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test clean

$(STAMP): pyproject.toml scripts/find-python
	@PY=$$(scripts/find-python) && echo "using $$PY" && \
	  { [ -x $(VENV)/bin/python ] || $$PY -m venv $(VENV); }
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	@touch $@

run: $(STAMP)
	$(VENV)/bin/openclaw-sidecar demo

test: $(STAMP)
	scripts/ensure-redis
	scripts/ensure-gateway $(VENV)/bin/python
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

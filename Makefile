# The two commands a newcomer runs (as root): `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test lint unit bench clean

setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/bin/cni-harness demo

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check impl harness tests
	cd playbooks && PATH=$(CURDIR)/$(VENV)/bin:$$PATH ansible-lint --offline -q

unit: setup
	$(PY) -m pytest -m unit $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/cni-harness bench cluster
	$(VENV)/bin/cni-harness bench datapath

clean:
	rm -rf $(VENV) build *.egg-info

# Two commands are the contract: `make demo` and `make test`; `make check` is the fast lane.
# The venv is built from this repository's files only. TORCH picks the torch
# requirement: the CPU wheel by default; on a GPU cluster `make demo TORCH=torch`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.voxtune-installed
TORCH  ?= torch==2.13.0

.PHONY: demo test check venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/voxtune demo --out demo-run

test: $(STAMP)
	$(PY) -m pytest

# Everything but the tests marked slow (Ray clusters, kills, multi-process, full size): the README's
# quick start still runs end to end through Ray (tests/test_readme.py). Stops at the first failure.
check: $(STAMP)
	$(PY) -m pytest -m "not slow" -x -q

clean:
	rm -rf $(VENV) demo-run .pytest_cache

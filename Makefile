# Two commands are the contract: `make demo` and `make test`.
# The venv is built from this repository's files only. TORCH picks the torch
# requirement: the CPU wheel by default; on a GPU cluster `make demo TORCH=torch`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.voxtune-installed
TORCH  ?= torch==2.13.0

.PHONY: demo test venv clean

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

clean:
	rm -rf $(VENV) demo-run .pytest_cache

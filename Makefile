# Set-up and the two commands: `make quickstart`, `make test`.
# Finds a Python >= 3.12 itself: pyenv's installed 3.12+ interpreters first (the
# python3.12 shim refuses to run without PYENV_VERSION), then python3.x on PATH.
PYTHON ?= $(shell for p in $$(ls -d $$(pyenv root 2>/dev/null)/versions/3.1[2-9]*/bin/python 2>/dev/null) \
	python3.14 python3.13 python3.12 python3 python; do \
	if $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then echo $$p; break; fi; done)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: venv quickstart test docs notebooks bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: no Python >= 3.12 found; install one or run 'make PYTHON=/path/to/python3.12'"; exit 1; }
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

quickstart: venv
	$(VENV)/bin/jaxrel quickstart --overwrite

test: venv
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile tests

docs: venv
	$(VENV)/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "API reference: docs/_build/html/index.html"

notebooks: venv
	$(VENV)/bin/python notebooks/execute.py

bench: venv
	$(VENV)/bin/python benchmarks/train_rmd17.py

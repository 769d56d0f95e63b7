# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?=
PYTEST_ARGS ?=

.PHONY: install test demo bench clean

install: $(STAMP)

# Reinstall when the dependency list changes.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/build_bench.py
	$(PY) bench/pipeline_bench.py
	$(PY) bench/train_bench.py

demo: install
	$(PY) demo.py $(if $(DATA_DIR),--data_dir=$(DATA_DIR),)

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info

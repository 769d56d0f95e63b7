# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?=
PYTEST_ARGS ?=

.PHONY: install test demo bench clean

install: $(STAMP)

# Reinstall when the dependency list changes. Editable in compat mode: the repository root goes
# on sys.path, so a package added to the tree later needs no reinstall.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
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

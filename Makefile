# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make demo DATA_DIR=/path/to/nih [WEIGHTS=none|imagenet|PATH] [IMAGE_SIZE=128] [EPOCHS=2]
DATA_DIR ?=
WEIGHTS ?=
IMAGE_SIZE ?=
EPOCHS ?=
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
	$(PY) demo.py $(if $(DATA_DIR),--data_dir=$(DATA_DIR),) $(if $(WEIGHTS),--weights=$(WEIGHTS),) \
		$(if $(IMAGE_SIZE),--image_size=$(IMAGE_SIZE),) $(if $(EPOCHS),--epochs=$(EPOCHS),)

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info

# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# make install GPU=1: TensorFlow with its CUDA libraries (setup.cfg's `gpu` extra). It has its own
# stamp, so adding GPU=1 later reinstalls, and a venv installed with it keeps it for later targets.
GPU ?= $(if $(wildcard $(VENV)/.installed-gpu),1,)
comma := ,
EXTRAS := dev$(if $(GPU),$(comma)gpu,)
STAMP := $(VENV)/.installed$(if $(GPU),-gpu,)
# make demo NIH_DIR=/path/to/nih [WEIGHTS=none|imagenet|PATH] [IMAGE_SIZE=128] [EPOCHS=2]
NIH_DIR ?=
WEIGHTS ?=
IMAGE_SIZE ?=
EPOCHS ?=
PYTEST_ARGS ?=

.PHONY: install test demo bench clean

# The demo's variable follows its flag, --nih_dir (--data_dir names a shard folder in every tool).
ifeq ($(origin DATA_DIR)$(filter demo,$(MAKECMDGOALS)),command linedemo)
$(error make demo: DATA_DIR is now NIH_DIR (make demo NIH_DIR=/path/to/nih))
endif

install: $(STAMP)
	@if [ -z "$(GPU)" ] && nvidia-smi >/dev/null 2>&1; then \
		echo "nvidia-smi sees a GPU here: make install GPU=1 installs TensorFlow with its CUDA libraries"; fi

# Reinstall when the dependency list changes. Editable in compat mode: the repository root goes
# on sys.path, so a package added to the tree later needs no reinstall.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]' --config-settings editable_mode=compat
	touch $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) bench/build_bench.py
	$(PY) bench/pipeline_bench.py
	$(PY) bench/train_bench.py

demo: install
	$(PY) demo.py $(if $(NIH_DIR),--nih_dir=$(NIH_DIR),) $(if $(WEIGHTS),--weights=$(WEIGHTS),) \
		$(if $(IMAGE_SIZE),--image_size=$(IMAGE_SIZE),) $(if $(EPOCHS),--epochs=$(EPOCHS),)

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info

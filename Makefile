# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# A user's install is setup.cfg's dependencies alone. Extras come on top, each named in the
# venv's stamp (.installed[-gpu][-dev]); a venv keeps the extras it was installed with for every
# later target (`make clean` starts over):
#   GPU=1  TensorFlow with its CUDA libraries (the `gpu` extra): make install GPU=1
#   DEV=1  the test suite and the Beam runner (the `dev` extra): make install DEV=1, make test, make bench
GPU ?= $(if $(wildcard $(VENV)/.installed-gpu*),1,)
DEV ?= $(if $(wildcard $(VENV)/.installed*-dev),1,)
comma := ,
USER_STAMP := $(VENV)/.installed$(if $(GPU),-gpu,)
DEV_STAMP := $(USER_STAMP)-dev
USER_EXTRAS := $(if $(GPU),[gpu],)
DEV_EXTRAS := [dev$(if $(GPU),$(comma)gpu,)]
# make demo NIH_DIR=/path/to/nih [WEIGHTS=none|imagenet|PATH] [IMAGE_SIZE=128] [EPOCHS=2]
NIH_DIR ?=
WEIGHTS ?=
IMAGE_SIZE ?=
EPOCHS ?=
PYTEST_ARGS ?=
# make test: test files run in this many processes (pytest-xdist), each file whole in one of them,
# so a module's shared shards and runs are built once. 1 runs them in this process, one by one.
TEST_WORKERS ?= 2
# make constraints: its fresh venv, removed once the suite has passed there
FRESH_VENV ?= $(or $(TMPDIR),/tmp)/cxr-constraints-venv

.PHONY: install test demo bench constraints clean

# The demo's variable follows its flag, --nih_dir (--data_dir names a shard folder in every tool).
ifeq ($(origin DATA_DIR)$(filter demo,$(MAKECMDGOALS)),command linedemo)
$(error make demo: DATA_DIR is now NIH_DIR (make demo NIH_DIR=/path/to/nih))
endif

install: $(if $(DEV),$(DEV_STAMP),$(USER_STAMP))
	@if [ -z "$(GPU)" ] && nvidia-smi >/dev/null 2>&1; then \
		echo "nvidia-smi sees a GPU here: make install GPU=1 installs TensorFlow with its CUDA libraries"; fi

# $(call install_venv,EXTRAS): install the project with EXTRAS at the versions the suite passed with.
# Editable in compat mode: the repository root goes on sys.path, so a package added to the tree
# later needs no reinstall.
define install_venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.$(1)' --config-settings editable_mode=compat
	touch $@
endef

# Reinstall when the dependency list or the pinned versions change.
$(USER_STAMP): setup.cfg pyproject.toml constraints.txt
	$(call install_venv,$(USER_EXTRAS))

$(DEV_STAMP): setup.cfg pyproject.toml constraints.txt
	$(call install_venv,$(DEV_EXTRAS))

# The linter first (pyproject.toml, [tool.ruff]): a red lint fails the suite before it starts.
test: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile,) $(PYTEST_ARGS)

# build_bench.py times the Beam runner; the train and predict benches write shards with tests/shard_factory.py.
bench: $(DEV_STAMP)
	$(PY) bench/build_bench.py
	$(PY) bench/pipeline_bench.py
	$(PY) bench/train_bench.py

demo: install
	$(PY) demo.py $(if $(NIH_DIR),--nih_dir=$(NIH_DIR),) $(if $(WEIGHTS),--weights=$(WEIGHTS),) \
		$(if $(IMAGE_SIZE),--image_size=$(IMAGE_SIZE),) $(if $(EPOCHS),--epochs=$(EPOCHS),)

# Refresh constraints.txt (docs/install.md, "Maintainers: the pinned versions"): the newest versions within
# setup.cfg's bounds, dev extras included, resolved in a fresh venv without the old pins; the suite
# runs there, and only once it passes do its versions replace constraints.txt.
constraints:
	rm -rf $(FRESH_VENV)
	$(PYTHON) -m venv $(FRESH_VENV)
	$(FRESH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FRESH_VENV)/bin/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	$(FRESH_VENV)/bin/python -m pip freeze --exclude-editable | LC_ALL=C sort --ignore-case -t= -k1,1 \
		> $(FRESH_VENV)/constraints.txt
	$(FRESH_VENV)/bin/python -m pytest $(PYTEST_ARGS)
	(echo "# The exact versions the suite passed with; make constraints refreshes them."; \
		cat $(FRESH_VENV)/constraints.txt) > constraints.txt
	rm -rf $(FRESH_VENV)

clean:
	rm -rf $(VENV) runs/demo runs/demo-* .pytest_cache *.egg-info

# Two entry points for a fresh machine with nothing but Python:
#   make demo   creates .venv if missing, installs llm-st, runs the main job on built-in data
#   make test   same environment plus the test extras, runs the default test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a machine without a CUDA GPU the CPU build of torch is installed first, so that the
# unpinned torch requirement does not pull several GB of CUDA wheels. Override TORCH_SPEC
# (and PIP_EXTRA_INDEX_URL) to choose another build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export LLM_ST_DATA ?= $(abspath ../shared/data)

.PHONY: demo test venv clean-venv lint bench

$(VENV)/.torch:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA GPU found: installing the default (CUDA) torch build"; \
		$(PY) -m pip install -q "torch>=2.2"; \
	else \
		echo "no CUDA GPU: installing the CPU torch build ($(TORCH_SPEC))"; \
		$(PY) -m pip install -q "$(TORCH_SPEC)"; \
	fi
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml setup.py
	$(PY) -m pip install -q -e ".[pretrained]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test,pretrained]"
	touch $@

venv: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/llm-st demo

test: $(VENV)/.installed-test
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(PY) -m ruff check llm_st scripts tests

clean-venv:
	rm -rf $(VENV)

# The oldest transformers llm-st is tested with (the floor in pyproject.toml): `make test-floor`
# builds $(FLOOR_VENV) with exactly that version and runs the default test suite there. Its tiny
# test models are built by that version too, in their own cache.
FLOOR_VENV ?= .venv-floor
FLOOR_TRANSFORMERS ?= 5.0.0
FLOOR_PY := $(FLOOR_VENV)/bin/python

.PHONY: test-floor

$(FLOOR_VENV)/.installed: pyproject.toml setup.py
	test -x $(FLOOR_PY) || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_PY) -m pip install -q --upgrade pip
	$(FLOOR_PY) -m pip install -q "$(TORCH_SPEC)"
	$(FLOOR_PY) -m pip install -q -e ".[test,pretrained]" "transformers==$(FLOOR_TRANSFORMERS)"
	touch $@

test-floor: $(FLOOR_VENV)/.installed
	LLM_ST_CACHE=$(abspath $(FLOOR_VENV))/llm_st_cache $(FLOOR_PY) -m pytest -q $(PYTEST_ARGS)

# The README's two commands: `make demo` (the main job on the bundled default) and `make test`.
# Each creates its own virtualenv from the project's files. The venvs use the system Python with
# --system-site-packages so Debian's (or JetPack's) python3-gi / GStreamer bindings are visible,
# exactly as on a Jetson.

PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV ?= .venv
EDGE_VENV ?= .venv-edge
PIP_FLAGS ?= -q --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: test demo lint typecheck pytest slow arm64 clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) -c constraints.txt -e ".[train,edge,dev,pretrained]"
	touch $@

$(EDGE_VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv --system-site-packages $(EDGE_VENV)
	$(EDGE_VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(EDGE_VENV)/bin/python -m pip install $(PIP_FLAGS) -c constraints.txt -e ".[edge]"
	touch $@

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

pytest: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

## make test: lint, types and the default (fast) test suite
test: lint typecheck pytest

## make slow: the heavy tests (long training, soak, 10^4-case fuzzing)
slow: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -m slow $(PYTEST_ARGS)

## make demo: install endoedge[edge] only (no TensorFlow) and run the daemon on the sample clip
demo: $(EDGE_VENV)/.installed
	$(EDGE_VENV)/bin/endoedge demo --out demo-output $(DEMO_ARGS)

## make arm64: the Jetson install path on emulated aarch64 (needs root; minutes, not part of make test);
## writes benchmarks/arm64/RESULTS.md (see benchmarks/arm64/README.md)
arm64:
	benchmarks/arm64/run.sh

clean:
	rm -rf $(VENV) $(EDGE_VENV) demo-output .pytest_cache .mypy_cache .ruff_cache

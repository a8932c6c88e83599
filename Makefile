# One virtual environment in the checkout; every target installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The machine's pip settings may point at a local CPU-only torch wheel that the
# registry's torchvision cannot import against: take torch from the registry. No wheel cache: the
# torch build is several GB, and a cached copy beside the installed one doubles what the install
# needs on disk (a CI run once stopped with "No space left on device" during this step).
PIP_ENV = PIP_FIND_LINKS= PIP_NO_CACHE_DIR=1

.PHONY: install demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(BIN)/python -m pip install -q --upgrade pip
	$(PIP_ENV) $(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The demo: the whole pipeline on the built-in synthetic dataset, on CPU (wsss demo). A rerun
# skips the steps that are complete and continues an interrupted one.
RUN ?= runs/demo
demo: install
	$(BIN)/wsss demo --out $(RUN)

test: install
	$(BIN)/python -m pytest -q

# Everything but the multi-process and the slow tests (marked dist / slow); CI runs `make test`.
test-fast: install
	$(BIN)/python -m pytest -q -m "not dist and not slow"

clean:
	rm -rf $(VENV) runs

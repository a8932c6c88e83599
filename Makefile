# One virtual environment in the checkout; every target installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The machine's pip settings may point at a local CPU-only torch wheel that the
# registry's torchvision cannot import against: take torch from the registry.
PIP_ENV = PIP_FIND_LINKS=

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP_ENV) $(BIN)/python -m pip install -q --upgrade pip
	$(PIP_ENV) $(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/wsss make-toy --out runs/toy
	$(BIN)/wsss eval --pred runs/toy/SegmentationClass --gt runs/toy/SegmentationClass --out runs/toy/eval_identity.json

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs

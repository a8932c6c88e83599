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

# The demo: every stage that exists so far, on the synthetic dataset, on CPU. Each step skips or
# resumes what a previous (interrupted) run already wrote.
RUN  ?= runs
WSSS  = $(BIN)/wsss
demo: install
	$(WSSS) make-toy --out $(RUN)/toy
	$(WSSS) eval --pred $(RUN)/toy/SegmentationClass --gt $(RUN)/toy/SegmentationClass --out $(RUN)/toy/eval_identity.json
	$(WSSS) train-cls --config configs/toy_conformer.yaml --data-root $(RUN)/toy --out $(RUN)/cls_conformer --epochs 2 --resume
	$(WSSS) extract-cam --cls-dir $(RUN)/cls_conformer --method cam --data-root $(RUN)/toy --split val --out $(RUN)/cam
	$(WSSS) extract-cam --cls-dir $(RUN)/cls_conformer --method adcam --data-root $(RUN)/toy --split val --out $(RUN)/adcam
	$(WSSS) eval-cam --cam-dir $(RUN)/cam --data-root $(RUN)/toy --split val
	$(WSSS) eval-cam --cam-dir $(RUN)/adcam --data-root $(RUN)/toy --split val
	$(WSSS) make-pseudo --cam-dir $(RUN)/adcam --refine crf --data-root $(RUN)/toy --split val --out $(RUN)/pseudo_crf
	$(WSSS) eval --pred $(RUN)/pseudo_crf --gt $(RUN)/toy/SegmentationClass
	$(WSSS) visualize --data-root $(RUN)/toy --split val --num 6 --cam cam=$(RUN)/cam --cam adcam=$(RUN)/adcam --mask pseudo=$(RUN)/pseudo_crf --out $(RUN)/figure.png

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs

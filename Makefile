# Two commands: `make demo` (synthetic-data demo on CPU) and `make test`. Both install into .venv first.
# `make demo-videomae`: the demo's VideoMAE V2 mode (pretraining, fine-tuning, distillation);
# `make demo-msta`: its MSTA mode (adapters on the frozen stage-0 CLIP: base-to-novel and 4-shot).
PY ?= python3.11
VENV := .venv

$(VENV)/.installed: setup.py
	$(PY) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	touch $@

.PHONY: test
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest -q tests

.PHONY: demo
demo: $(VENV)/.installed
	$(VENV)/bin/python -m umt_jax.demo --workdir $${WORKDIR:-/tmp/umt_demo}

.PHONY: demo-videomae
demo-videomae: $(VENV)/.installed
	$(VENV)/bin/python -m umt_jax.demo --method videomae --workdir $${WORKDIR:-/tmp/umt_demo}

.PHONY: demo-msta
demo-msta: $(VENV)/.installed
	$(VENV)/bin/python -m umt_jax.demo --method msta --workdir $${WORKDIR:-/tmp/umt_demo}

# Two commands for a fresh machine: `make report` and `make test`.
# Each creates the virtual environment .venv from pyproject.toml when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?=
EPOCHS ?=
KL_WEIGHTS ?= 1,100,0
DEVICE ?= auto

.PHONY: report test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[notebooks,test]'
	touch $@

report: $(VENV)/.installed
	$(PY) -m vaehelpers report --kl-weights $(KL_WEIGHTS) --device $(DEVICE) \
		$(if $(DATA),--data $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS))

test: $(VENV)/.installed
	$(PY) -m pytest

clean:
	rm -rf runs reports/figures

# Two commands for a fresh machine: `make report` and `make test`.
# Each creates the virtual environment .venv from pyproject.toml when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?=
EPOCHS ?=
KL_WEIGHTS ?= 1,100,0,0.1,10
DEVICE ?= auto

LATEX_PACKAGES := texlive-xetex texlive-fonts-recommended texlive-plain-generic pandoc fonts-dejavu-core poppler-utils

.PHONY: report test lab venv latex clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[notebooks,test]'
	touch $@

# LaTeX for the PDF report: installed with apt where we are root, else one line says what to install.
latex:
	@if command -v xelatex >/dev/null && command -v pandoc >/dev/null && command -v pdfinfo >/dev/null && fc-list 2>/dev/null | grep -q "DejaVu Serif"; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing LaTeX for the PDF report (a few minutes, once): $(LATEX_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(LATEX_PACKAGES) >/dev/null; \
	else echo "The PDF report needs LaTeX: install $(LATEX_PACKAGES); the HTML report is made without it."; fi

report: $(VENV)/.installed
	-@$(MAKE) --no-print-directory latex
	$(PY) -m vaehelpers report --kl-weights $(KL_WEIGHTS) --device $(DEVICE) \
		$(if $(DATA),--data $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS))

test: $(VENV)/.installed
	$(PY) -m pytest

# JupyterLab on the project's environment, opening the interactive explorer (as root, too: containers).
lab: $(VENV)/.installed
	$(PY) -m jupyter lab notebooks/explore.ipynb $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf runs reports/*.ipynb reports/*.html reports/*.pdf

# Commands for a fresh machine: `make report`, `make test` (the quick tier) and `make check` (every test).
# Each creates the virtual environment .venv from the lock when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?=
EPOCHS ?=
KL_WEIGHTS ?= 1,100,0,0.1,10
DEVICE ?= auto
SEEDS ?=
LATENT_DIMS ?=
EXECUTOR ?= local

BROWSER_PACKAGES := chromium chromium-driver
SLURM_PACKAGES := slurmctld slurmd slurm-client munge slurmdbd mariadb-server
LATEX_PACKAGES := texlive-xetex texlive-fonts-recommended texlive-plain-generic pandoc fonts-dejavu-core poppler-utils

# The exact versions of every package (Linux x86-64, CPython 3.11), from pyproject.toml by pip-compile.
LOCK := requirements-lock.txt
EXTRAS := notebooks test
PIP_TOOLS := pip-tools==7.6.2
# pip-compile does not read pip's configured constraint file (pip.conf's `constraint`, such as a cap on torch):
# `make lock` passes it on, so that the lock holds what this machine's pip installs.
PIP_CONSTRAINT_FILE = $(shell $(PYTHON) -m pip config list 2>/dev/null | sed -n "s/^[^=]*\.constraint='\(.*\)'$$/\1/p" | head -1)

# The tiers of tests (docs/testing.md): `make test` leaves out what needs a real part or takes long; `make check`
# runs everything, with the real parts installed and started where it is root. PYTEST_ARGS: more pytest options.
QUICK := not (slurm or browser or latex or slow)
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder
PYTEST_ARGS ?=

.PHONY: report test check lab board picture venv lock latex browser slurm clean

venv: $(VENV)/.installed

# An environment the user has activated (a virtualenv other than $(VENV), or a conda env other than base) is not
# the one make builds and uses: said in one line where make builds $(VENV) beside it (docs/install.md).
ACTIVE_ENV_NOTE = Note: make builds its own $(VENV) from the lock and does not use the active environment $(ACTIVE_ENV); \
	to use that one instead, keeping its torch: pip install -e '.[notebooks]', then python -m vaehelpers report (docs/install.md).
ACTIVE_ENV := $(if $(VIRTUAL_ENV),$(filter-out $(abspath $(VENV)),$(abspath $(VIRTUAL_ENV))),$(if $(filter-out base,$(CONDA_DEFAULT_ENV)),$(CONDA_PREFIX)))
# Where none is active, the Python that makes $(VENV) may have PyTorch already (Colab, a JupyterHub image, conda's
# base): its prefix, said the same way (looked up only where $(VENV) is built).
TORCH_ENV = $(shell $(PYTHON) -c "import importlib.util as u, os, sys; r = os.path.realpath; print(sys.prefix if u.find_spec('torch') and r(sys.prefix) != r('$(VENV)') else '')" 2>/dev/null)
TORCH_ENV_NOTE = Note: make builds its own $(VENV) from the lock beside $(TORCH_ENV), whose $(PYTHON) already has PyTorch; \
	to use that one instead, keeping its torch: pip install -e '.[notebooks]', then python -m vaehelpers report (docs/install.md).
ENV_NOTE = $(if $(ACTIVE_ENV),@echo "$(ACTIVE_ENV_NOTE)",$(if $(TORCH_ENV),@echo "$(TORCH_ENV_NOTE)"))

# The locked packages, then the project itself without dependencies; pip check proves the lock complete.
# In a git checkout, nbstripout becomes the notebooks' git filter, so outputs are never committed.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(ENV_NOTE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -r $(LOCK)
	$(PY) -m pip install --no-deps -e .
	$(PY) -m pip check
	if git rev-parse --git-dir >/dev/null 2>&1; then $(VENV)/bin/nbstripout --install --attributes .gitattributes; fi
	$(ENV_NOTE)
	touch $@

# Refresh the lock after editing pyproject.toml: keeps the versions already locked, adds what is new;
# `make lock UPGRADE=1` moves every package to the newest release allowed. pip-tools lives in .venv-lock.
UPGRADE ?=
lock:
	test -x .venv-lock/bin/pip-compile || { $(PYTHON) -m venv .venv-lock && .venv-lock/bin/pip install -q $(PIP_TOOLS); }
	CUSTOM_COMPILE_COMMAND="make lock" .venv-lock/bin/pip-compile --quiet --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
		$(addprefix --extra ,$(EXTRAS)) $(if $(UPGRADE),--upgrade) \
		$(if $(PIP_CONSTRAINT_FILE),--constraint $(PIP_CONSTRAINT_FILE)) --output-file $(LOCK) pyproject.toml

# $(call apt,what,packages,test that they are there,what happens without them[,apt-get install options]): Debian
# packages installed with apt where we are root and they are missing, else one line says what to install.
define apt
	@if $(3); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing $(1) (a few minutes, once): $(2)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(5) $(2) >/dev/null; \
	else echo "$(1): install $(2); $(4)."; fi
endef

# LaTeX for the PDF report.
latex:
	$(call apt,LaTeX for the PDF report,$(LATEX_PACKAGES),command -v xelatex >/dev/null && command -v pandoc >/dev/null && command -v pdfinfo >/dev/null && fc-list 2>/dev/null | grep -q "DejaVu Serif",the HTML report is made without it)

# Chromium and its WebDriver for the browser tests (tests/test_browser.py).
browser:
	$(call apt,Chromium for the browser tests,$(BROWSER_PACKAGES),command -v chromium >/dev/null && command -v chromedriver >/dev/null,without it those tests are skipped with that reason)

# A single-node Slurm cluster on this machine (as root) for the tests of --executor slurm: Debian's Slurm, with
# job accounting (slurmdbd on MariaDB), which submitit needs to see a cancelled task end; scripts/slurm.sh starts it.
slurm:
	$(call apt,Slurm for the cluster tests,$(SLURM_PACKAGES),test -x /usr/sbin/slurmctld && test -x /usr/sbin/slurmdbd && test -x /usr/sbin/mariadbd && command -v sbatch >/dev/null,without it those tests are skipped with that reason,--no-install-recommends)
	@if [ "$$(id -u)" = 0 ] && test -x /usr/sbin/slurmctld; then scripts/slurm.sh start; \
	else echo "Slurm not started (it needs root and the packages above): the cluster tests are skipped with that reason."; fi

report: $(VENV)/.installed
	-@$(MAKE) --no-print-directory latex
	$(PY) -m vaehelpers report --kl-weights $(KL_WEIGHTS) --device $(DEVICE) --executor $(EXECUTOR) \
		$(if $(DATA),--data $(DATA)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(LATENT_DIMS),--latent-dims $(LATENT_DIMS))

# The unit and notebook tests: installs no system package and starts no service.
test: $(VENV)/.installed
	$(PYTEST) -m "$(QUICK)" $(PYTEST_ARGS)

# Every test, the real parts among them: as root, installs LaTeX, Chromium and Slurm (with MariaDB and munge) and
# starts a one-node Slurm cluster on this machine; elsewhere their tests are skipped, each with its reason.
check: $(VENV)/.installed
	-@$(MAKE) --no-print-directory latex
	-@$(MAKE) --no-print-directory browser
	-@$(MAKE) --no-print-directory slurm
	$(PYTEST) --durations=20 $(PYTEST_ARGS)

# JupyterLab on the project's environment, opening the interactive explorer (as root, too: containers).
# Its kernels talk to it over Unix sockets, not TCP ports (vaehelpers.execute.LOCAL_KERNEL says why).
lab: $(VENV)/.installed
	$(PY) -m jupyter lab notebooks/explore.ipynb --KernelManager.transport=ipc $(if $(filter 0,$(shell id -u)),--allow-root)

# TensorBoard on the runs folder (curves, images, the HParams table of every run), on localhost.
PORT ?= 6006
board: $(VENV)/.installed
	$(PY) -m vaehelpers board --runs-dir runs --port $(PORT)

# The README's picture (docs/three-settings.png) from the runs of a finished `make report`.
picture: $(VENV)/.installed
	$(PY) scripts/picture.py runs docs/three-settings.png

clean:
	rm -rf runs reports/*.ipynb reports/*.html reports/*.pdf reports/.report.* test-artifacts

# The Bayesian Learning Rule: book and library.
#
#   make book   build the HTML book (every notebook executed, zero Sphinx warnings)
#   make test   pytest on tests/, nbval on every notebook in book/, and the warning-free book build
#
# Both create .venv and install everything the first time; later runs reuse it
# (the stamp .venv/.installed is redone only when pyproject.toml changes).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# torch is installed first and pinned: any other torch resolves to the multi-GB CUDA
# wheels. On a machine without a local CPU wheel, point pip at PyTorch's CPU index:
#   make venv TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH          ?= torch==2.13.0
TORCH_PIP_ARGS ?=

# Per-cell timeout for nbval; keep equal to execute.timeout in _config.yml.
CELL_TIMEOUT ?= 300
# Threads per process. `make test` runs the nbval pass and the book build side by
# side; one BLAS/OpenMP thread each keeps two cores from being oversubscribed.
TEST_THREADS ?= 1
THREAD_ENV = OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) \
             OPENBLAS_NUM_THREADS=$(TEST_THREADS) NUMEXPR_NUM_THREADS=$(TEST_THREADS)
# Quiet the kernel's start-up warnings (Jupyter paths, debugpy on frozen modules).
NB_ENV = JUPYTER_PLATFORM_DIRS=1 PYDEVD_DISABLE_FILE_VALIDATION=1

NOTEBOOKS = $(shell find book -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' -not -path '*/_build/*' 2>/dev/null | sort)

.PHONY: help venv book test test-unit test-nbval test-build strip clean clean-all lab

help:
	@echo "make book    build the HTML book into _build/html (zero warnings)"
	@echo "make test    pytest tests/ + nbval on book/ + warning-free book build"
	@echo "make venv    create $(VENV) and install blrlib[test] (done by book/test)"
	@echo "make strip   strip outputs and execution counts from every notebook"
	@echo "make lab     start JupyterLab in the environment (if installed)"
	@echo "make clean   remove _build (keeps $(VENV)); make clean-all also removes $(VENV)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH)"
	$(BIN)/python -m pip install -e ".[test]"
	@# First import of matplotlib builds its font cache and says so on stderr;
	@# do it here so no notebook page shows that message.
	$(BIN)/python -c "import matplotlib.pyplot, torch"
	@touch $@

# ---------------------------------------------------------------- the book
book: $(STAMP)
	@$(BIN)/python -c "import matplotlib.pyplot" 2>/dev/null
	@echo "== jupyter-book build (every notebook executed; warnings are errors)"
	@$(NB_ENV) $(BIN)/jupyter-book build . -W -n --keep-going \
	  || { echo; echo "FAILED: the book build (see the warnings above;"; \
	       echo "        tracebacks of failing notebooks are in _build/html/reports/)"; exit 1; }
	@echo
	@echo "The book is at: $(CURDIR)/_build/html/index.html"

# ---------------------------------------------------------------- tests
# The three parts run side by side (-j3; pytest on tests/ is short); -k lets every
# part finish, so one run reports every failure. Output is grouped per part.
test: $(STAMP)
	@start=$$(date +%s); \
	status=0; \
	$(MAKE) --no-print-directory -k -j3 --output-sync=target test-unit test-nbval test-build || status=$$?; \
	echo; \
	if [ $$status -ne 0 ]; then \
	  echo "make test: FAILED after $$(( $$(date +%s) - start )) s (see the FAILED lines above)"; exit 1; \
	fi; \
	echo "make test: all passed in $$(( $$(date +%s) - start )) s"

test-unit: $(STAMP)
	@echo "== pytest tests/"
	@$(THREAD_ENV) $(BIN)/python -m pytest -q tests/ \
	  || { echo "FAILED: pytest tests/"; exit 1; }

test-nbval: $(STAMP)
	@echo "== nbval: every notebook in book/ runs without error"
	@if [ -z "$(NOTEBOOKS)" ]; then echo "no notebooks in book/ yet"; exit 0; fi; \
	$(THREAD_ENV) $(NB_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=$(CELL_TIMEOUT) book/ \
	  || { echo "FAILED: nbval (a notebook cell raised; see above)"; exit 1; }

test-build: $(STAMP)
	@$(THREAD_ENV) $(MAKE) --no-print-directory book

# ---------------------------------------------------------------- niceties
strip: $(STAMP)
	$(BIN)/python scripts/strip_notebooks.py $(NOTEBOOKS)

lab: $(STAMP)
	$(BIN)/python -m jupyterlab || $(BIN)/python -m notebook

clean:
	rm -rf _build .pytest_cache

clean-all: clean
	rm -rf $(VENV) .hypothesis *.egg-info

# The Bayesian Learning Rule: book and library.
#
#   make book   build the HTML book (every notebook executed, zero Sphinx warnings)
#   make test   pytest on tests/ and the warning-free book build (every notebook executed),
#               then the browser test of the built site (headless Chromium; see test-site)
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
# Threads per process. The build executes one notebook per core side by side, next to
# pytest; one BLAS/OpenMP thread each keeps the cores from being oversubscribed.
TEST_THREADS ?= 1
THREAD_ENV = OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) \
             OPENBLAS_NUM_THREADS=$(TEST_THREADS) NUMEXPR_NUM_THREADS=$(TEST_THREADS)
# Quiet the kernel's start-up warnings (Jupyter paths, debugpy on frozen modules).
NB_ENV = JUPYTER_PLATFORM_DIRS=1 PYDEVD_DISABLE_FILE_VALIDATION=1

# The browser test (tests/test_site.py) drives Debian's chromium through chromedriver:
#   apt-get install chromium chromium-driver
# Without them `make test` skips it and says so; with REQUIRE_BROWSER=1 (CI) that is an error.
REQUIRE_BROWSER ?= 0
# MathJax 3 for the offline build (the test build serves it from node_modules/).
MATHJAX = node_modules/mathjax/es5/tex-mml-chtml.js
BOOK_OK = _build/.book-ok

NOTEBOOKS = $(shell find book -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' -not -path '*/_build/*' 2>/dev/null | sort)

.PHONY: help venv book book-offline _book mathjax test test-unit test-nbval test-build test-site strip clean clean-all lab

help:
	@echo "make book    build the HTML book into _build/html (zero warnings)"
	@echo "make test    pytest tests/ + warning-free book build (every notebook run) + browser test"
	@echo "make test-nbval  nbval on every notebook in book/ (each notebook runs without error)"
	@echo "make test-site  the browser test of an already built _build/html (headless Chromium)"
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
# `make book` is the public build (MathJax from the CDN); `make book-offline` serves MathJax
# from node_modules/ (npm), so the pages read without internet; the tests use that one.
book: $(STAMP)
	@$(MAKE) --no-print-directory _book OFFLINE_MATH=0

book-offline: $(STAMP) $(MATHJAX)
	@$(MAKE) --no-print-directory _book OFFLINE_MATH=1

mathjax: $(MATHJAX)

$(MATHJAX): package.json package-lock.json
	@command -v npm >/dev/null || { echo "FAILED: npm is needed for MathJax (apt-get install npm)"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

_book:
	@rm -f $(BOOK_OK)
	@$(BIN)/python -c "import matplotlib.pyplot" 2>/dev/null
	@echo "== executing the notebooks whose code changed, one per CPU core (jupyter-cache)"
	@$(NB_ENV) $(BIN)/python scripts/execute_notebooks.py --timeout $(CELL_TIMEOUT) $(NOTEBOOKS)
	@echo "== jupyter-book build (every notebook executed; warnings are errors)"
	@BLR_BOOK_OFFLINE_MATH=$(OFFLINE_MATH) $(NB_ENV) $(BIN)/jupyter-book build . -W -n --keep-going \
	  || { echo; echo "FAILED: the book build (see the warnings above;"; \
	       echo "        tracebacks of failing notebooks are in _build/html/reports/)"; exit 1; }
	@touch $(BOOK_OK)
	@echo
	@echo "The book is at: $(CURDIR)/_build/html/index.html"

# ---------------------------------------------------------------- tests
# pytest on tests/ and the book build run side by side (-j2); -k lets both finish, so one
# run reports every failure; output is grouped per part. The build executes every
# notebook (a raising cell fails it), so `make test` does not run them a second time
# under nbval: `make test-nbval` does that on its own. The browser test runs last, on
# the built site.
test: $(STAMP)
	@start=$$(date +%s); \
	status=0; \
	$(MAKE) --no-print-directory -k -j2 --output-sync=target test-unit test-build || status=$$?; \
	if [ -f $(BOOK_OK) ]; then \
	  $(MAKE) --no-print-directory test-site || status=$$?; \
	else \
	  echo; echo "FAILED: the browser test did not run: the book did not build"; status=1; \
	fi; \
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

# The test build serves MathJax from node_modules/ (npm); without npm it falls back to the
# public build, and the browser test is then skipped (it must not depend on the network).
test-build: $(STAMP)
	@if command -v npm >/dev/null || [ -f $(MATHJAX) ]; then \
	  $(THREAD_ENV) $(MAKE) --no-print-directory book-offline; \
	else \
	  echo "npm not found: building with MathJax from the CDN (apt-get install npm for the offline build)"; \
	  $(THREAD_ENV) $(MAKE) --no-print-directory book; \
	fi

# The browser test of the built site: serves _build/html on 127.0.0.1 and opens every page
# in headless Chromium at 1,400 and 400 px (tests/test_site.py). Screenshots and a summary
# go to _build/site-test/.
test-site: $(STAMP)
	@echo "== browser test of _build/html (headless Chromium)"
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null \
	    || [ ! -f _build/html/_static/es5/tex-mml-chtml.js ]; then \
	  echo "################################################################"; \
	  echo "# SKIPPED: the browser test of the site (it needs chromium, chromedriver,"; \
	  echo "#   and a build with the local MathJax: make book-offline, which needs npm)"; \
	  echo "#   install: apt-get install chromium chromium-driver npm"; \
	  echo "################################################################"; \
	  if [ "$(REQUIRE_BROWSER)" = 1 ]; then echo "FAILED: browser test required (REQUIRE_BROWSER=1)"; exit 1; fi; \
	  exit 0; \
	fi; \
	BLR_SITE_TEST=1 $(THREAD_ENV) $(BIN)/python -m pytest -q -p no:cacheprovider -rxf tests/test_site.py \
	  || { echo "FAILED: the browser test (tests/test_site.py; screenshots in _build/site-test/)"; exit 1; }; \
	$(BIN)/python -c "import json; s = json.load(open('_build/site-test/summary.json')); \
	  [print(f'  {k}: {v}') for k, v in s.items() if k != 'page_heights_1400']"

# ---------------------------------------------------------------- niceties
strip: $(STAMP)
	$(BIN)/python scripts/strip_notebooks.py $(NOTEBOOKS)

lab: $(STAMP)
	$(BIN)/python -m jupyterlab || $(BIN)/python -m notebook

clean:
	rm -rf _build .pytest_cache

clean-all: clean
	rm -rf $(VENV) .hypothesis *.egg-info

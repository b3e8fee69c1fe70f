# Quickstart: `make demo` (set up + main job on the built-in synthetic MOSI) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hrlf-installed
DATA ?= data/synth
RUNS ?= runs
# two cores: one torch thread per process whenever processes run side by side
export OMP_NUM_THREADS ?= 1

.PHONY: demo test lint format bench-speed clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(DATA)/mosi/aligned_50.pkl: | $(STAMP)
	$(BIN)/hrlf synth --preset mosi --out $(DATA)/mosi --seed 0

demo: $(STAMP) $(DATA)/mosi/aligned_50.pkl
	OMP_NUM_THREADS=2 $(BIN)/hrlf train --config configs/backbone/mosi.yaml --data $(DATA)/mosi/aligned_50.pkl \
		--out $(RUNS)/demo/backbone --resume

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

bench-speed: $(STAMP)
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(RUNS)/demo

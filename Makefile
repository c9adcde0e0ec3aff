# Two entry points from a fresh clone: `make demo` and `make test`.
PY     ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch first, pinned to the CPU build on disk; the project then asks only for a range it satisfies.
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO   ?= demo-bundle
TARGET ?= host-cpu

.PHONY: install test demo train-small clean bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest

PROMPT ?= class Parser:\n    def __init__(self, 
demo: install
	$(BIN)/m3edge eval checkpoints/small --max-bytes 20000
	$(BIN)/m3edge export --target $(TARGET) --checkpoint checkpoints/small -o $(DEMO) --force
	$(BIN)/m3edge inspect $(DEMO)
	$(BIN)/m3edge verify $(DEMO) --tokens 512
	$(BIN)/m3edge run $(DEMO) --prompt "$$(printf '$(PROMPT)')" --max-bytes 160

# Re-trains the committed reference (about 15 minutes on 2 cores).
train-small: install
	$(BIN)/m3edge train --preset small --data calibration_data -o checkpoints/small --force

# The full benchmark (issue 8): rebuilds every bundle under runs/bench, measures every engine, the floor and
# the sweeps on 2 threads, writes bench/results-full.json, then README's performance tables and bench/plots/.
bench: install
	$(BIN)/m3edge bench --suite full --rebuild -o bench/results-full.json
	$(BIN)/python bench/report.py bench/results-full.json

clean:
	rm -rf $(VENV) $(DEMO) build dist *.egg-info

# arm64 (issue 9): builds a Debian bookworm arm64 root filesystem in .arm64/ (cached; root, Debian mirror and
# PyPI needed the first time), installs the wheel there with only the device dependencies and runs tiny rpi5
# bundles under qemu-aarch64-static against the host. Slow, so not part of `make test`; see README, arm64.
.PHONY: check-arm64
check-arm64: install
	targets/check-arm64

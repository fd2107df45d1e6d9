# napari-aunet: everything a fresh Linux machine (Python 3.10+, Debian/Ubuntu) needs.
#   make demo   set up .venv and open napari with the plugin and a sample scan
#   make test   set up .venv (+ headless Qt packages when run as root) and run the whole suite under Xvfb

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch 2.13.0 installs in seconds here; on a Linux machine with an NVIDIA driver the same
# pin from PyPI is the CUDA build. The package itself accepts a range (see pyproject.toml).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp
QT_DEBS := xvfb xauth libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 \
	libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 \
	libxcb-cursor0 libdbus-1-3

.PHONY: demo test install system-deps lint models study bench bench-data bench-finetune clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@missing=""; for package in $(QT_DEBS); do \
		dpkg -s $$package >/dev/null 2>&1 || missing="$$missing $$package"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages for headless Qt:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "warning: missing Debian packages for headless Qt:$$missing (install them as root)"; \
	fi

test: install system-deps
	$(BIN)/python -m pytest

demo: install
	$(BIN)/aunet demo

lint: install
	$(BIN)/ruff check napari_aunet tests benchmarks

# The brain and click recipes read heads and atlases from package files fetched once (never installed, never read
# at run time).
models: install
	$(BIN)/python -m pip download --quiet --no-deps nimare==0.22.1 deepmriprep==0.3.0 -d build/wheels
	$(BIN)/aunet build-model phantom
	$(BIN)/aunet build-model brain --data build/wheels
	$(BIN)/aunet build-model click --data build/wheels

study: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/study.py

# CPU performance, section by section, against MONAI (benchmarks/perf.py; QUICK=1 for the short version).
bench: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/perf.py $(if $(QUICK),--quick)

# Real data for benchmarks only (never read by the package): the nimare and deepmriprep wheels, read as zips.
bench-data: install
	$(BIN)/python -m pip download --quiet --no-deps nimare==0.22.1 deepmriprep==0.3.0 -d benchmarks/.cache

# Correct -> retrain on four small structures of an unseen head, against a 50-line script (docs/finetune.md).
bench-finetune: bench-data
	$(BIN)/python benchmarks/finetune_small.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache

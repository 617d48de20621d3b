# One venv for everything: torch 2.13.0 (CPU build) goes in before the project, so pip never pulls a CUDA build.
# webrtcvad-wheels replaces resemblyzer's webrtcvad, which imports pkg_resources (gone from new setuptools).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The reference packages the importer tests compare spkid with (tests/test_import_*.py). Installed without their
# dependencies: each pins torchaudio (whose only build on the registry needs another torch) and far more
# (ASR toolkits, clustering); their network and front-end code needs only torch, and the tests stub torchaudio.
REFERENCE := wespeaker-unofficial==0.0.2 speechbrain==1.1.2 speakerlab==0.0.6

.PHONY: install lint test demo recipe docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,plot,pretrained]'
	$(BIN)/python -m pip install -q --force-reinstall --no-deps webrtcvad-wheels
	$(BIN)/python -m pip install -q --no-deps $(REFERENCE)
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

# The layer contracts of DESIGN.md (.importlinter).
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache

# One pytest worker per core (pytest-xdist): about 9 min on 2 cores; the 20 slowest tests are listed at the end.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --durations=20

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

# The whole toolkit on librispeech_tc100 (recipes/librispeech.sh): BUDGET=seconds of training, CHECK_FLOOR=1 to assert.
DATA ?= ../shared/data/librispeech_tc100
recipe: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash recipes/librispeech.sh $(DATA) exp/librispeech

docs: $(STAMP)
	$(BIN)/python -m spkid.cli._docs

clean:
	rm -rf $(VENV) .pytest_cache

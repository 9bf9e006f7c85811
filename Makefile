# Two entry points for a fresh machine: `make demo` and `make test`. Each builds .venv itself.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU build of torch that lies on this disk; GPU users install their own torch first.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,qwen]'
	# The MDS reader the export tests check against: mosaicml-streaming declares transformers<5
	# and numpy<2.2, which longforge cannot have; its MDS code uses neither, so it goes in alone
	# (what that code imports is in the dev extra).
	$(BIN)/pip install -q --no-deps 'mosaicml-streaming>=0.13'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/longforge demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

bench: $(STAMP)
	$(BIN)/longforge bench attention
	$(BIN)/longforge bench profile
	$(BIN)/longforge bench decode

clean:
	rm -rf $(VENV) out

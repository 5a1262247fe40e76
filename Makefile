# The two commands a new user runs: `make demo` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-quick test lint proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel; nothing later may pull another torch build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edge-rerank demo --out runs/demo

demo-quick: $(STAMP)
	$(VENV)/bin/edge-rerank demo --quick --out runs/demo-quick

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Regenerate the protobuf gencode after editing proto/edge_rerank.proto.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=device_sdk/_proto proto/edge_rerank.proto

clean:
	rm -rf $(VENV) runs .pytest_cache

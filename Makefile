# The two commands a new user runs: `make demo` and `make test`. Each does its own set-up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo demo-quick test lint proto browser bench bench-session bench-device bench-train bench-simulator bench-cloud bench-compression redis-server clean

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

test: $(STAMP) redis-server browser
	$(PY) -m pytest -q

# The Redis embedding-store tests start a real redis-server: install it when missing and possible (root + apt).
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; } || \
	  echo "redis-server is not installed and cannot be installed here: the Redis store tests will skip"

# The replay page's browser test (tests/test_replay_browser.py) drives the distribution's headless Chromium through
# chromedriver: install them when missing and possible (root + apt); without them that test skips.
browser:
	@command -v chromedriver >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	  echo "chromium + chromium-driver are not installed and cannot be installed here: the browser test will skip"

# All benchmarks (JSON under runs/bench/); run them on a quiet machine.
bench: bench-device bench-session bench-train bench-simulator bench-cloud

bench-device: $(STAMP)
	$(PY) bench/device_bench.py --out runs/bench/device.json

bench-train: $(STAMP)
	$(PY) bench/train_bench.py --out runs/bench/train.json

bench-session: $(STAMP)
	$(PY) bench/session_bench.py --out runs/bench/session.json

bench-simulator: $(STAMP)
	$(PY) bench/simulator_bench.py --out runs/bench/simulator_bench.json

# Compression: every method x format on the demo's model (run `make demo` first); JSON, table and Pareto plot.
bench-compression: $(STAMP)
	$(PY) bench/compression_bench.py --out runs/bench/compression

# Cloud service load benchmark (gunicorn + loopback load generator); JSON to runs/bench/cloud.json.
bench-cloud: $(STAMP) redis-server
	$(PY) bench/cloud_bench.py --out runs/bench/cloud.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Regenerate the protobuf gencode after editing proto/edge_rerank.proto.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=device_sdk/_proto proto/edge_rerank.proto

clean:
	rm -rf $(VENV) runs .pytest_cache

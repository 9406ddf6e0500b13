# genserve: `make serve` serves the shipped model store; `make test` runs lint and tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint pytest benchmark protos clean speech-deps fuzz soak

# torch is pinned to the CPU build (torch==2.13.0) in pyproject.toml; an unpinned
# torch would pull a multi-GB CUDA build.
$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

$(VENV)/.installed-serve: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[dev]"
	# tritonclient (tests only) declares protobuf<7, which the grpcio 1.85 stubs cannot use:
	# install it without its pins; its generated code loads on protobuf 7.
	$(BIN)/pip install --no-deps "tritonclient==2.73.0"
	$(BIN)/pip install "python-rapidjson>=0.9.1" "urllib3>=2.0.7" "aiohttp>=3.8.1,<4" \
		"geventhttpclient>=2.3.3" "greenlet<3.4.0" "packaging>=14.1"
	touch $@ $(VENV)/.installed-serve

# WaveNet's training data is speech synthesized by espeak-ng (a Debian package; serving never needs it).
# Tests that synthesize speech skip, saying so, where it is missing.
speech-deps:
	command -v espeak-ng >/dev/null || apt-get install -y --no-install-recommends espeak-ng \
		|| (apt-get update && apt-get install -y --no-install-recommends espeak-ng)

serve: $(VENV)/.installed-serve
	$(BIN)/genserve serve --host $(HOST) --port $(PORT) --grpc-port $(or $(GRPC_PORT),$(shell expr $(PORT) + 1)) --models models

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/lint-deploy.sh

pytest: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

test: lint pytest

benchmark: $(VENV)/.installed-dev
	mkdir -p benchmarks/results
	for b in sampling scoring nll; do \
		$(BIN)/python benchmarks/pixelcnn_$$b.py --threads 1 --json benchmarks/results/$$b.json \
			| tee benchmarks/results/$$b.md || exit 1; \
	done
	$(BIN)/python benchmarks/wavenet_speed.py --threads 1 --json benchmarks/results/wavenet.json \
		| tee benchmarks/results/wavenet.md

# Issue 15: schemathesis --checks all over a real server (>= 5,000 cases, bounded in time, 0 server errors),
# and 10 minutes of mixed traffic with the engine worker killed twice. Both print a table and write it under
# benchmarks/results/; FUZZ_ARGS / SOAK_ARGS pass options (e.g. SOAK_ARGS="--minutes 1").
fuzz: $(VENV)/.installed-dev
	mkdir -p benchmarks/results
	$(BIN)/python benchmarks/fuzz.py --out benchmarks/results/fuzz.md $(FUZZ_ARGS)

soak: $(VENV)/.installed-dev
	mkdir -p benchmarks/results
	$(BIN)/python benchmarks/soak.py --out benchmarks/results/soak.md $(SOAK_ARGS)

protos: $(VENV)/.installed-dev
	bash scripts/gen-protos.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

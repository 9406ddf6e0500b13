# genserve: `make serve` serves the shipped model store; `make test` runs lint and tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: serve test lint pytest benchmark protos clean speech-deps fuzz soak image-deps image-test

# torch is pinned to the CPU build (torch==2.13.0) in pyproject.toml; an unpinned
# torch would pull a multi-GB CUDA build.
$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Serving needs no torch (`pip install .`); `make serve` adds the torchscript extra so that GENSERVE_RUNTIME=torchscript
# works too. dev pulls train, which has torch.
$(VENV)/.installed-serve: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -e ".[torchscript]"
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/activate
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

# Issue 18: build the image with podman and smoke-test it, then docker-compose.yml with podman-compose (base images
# are local stand-ins: no registry is reachable here). Needs root; image-deps installs podman, runc and debootstrap.
image-deps:
	command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
		|| (apt-get update && apt-get install -y --no-install-recommends podman runc debootstrap \
			netavark aardvark-dns slirp4netns uidmap iptables)

image-test: $(VENV)/.installed-dev
	timeout 2400 bash scripts/image-test.sh

# Issue 21: the playground (/playground/) in a real headless browser: Debian's chromium, installed here if missing,
# driven by Playwright for Python through that system browser (no browser build is downloaded). About 2.5 minutes.
.PHONY: ui-deps ui-test
ui-deps:
	command -v chromium >/dev/null || apt-get install -y --no-install-recommends chromium \
		|| (apt-get update && apt-get install -y --no-install-recommends chromium)

ui-test: ui-deps speech-deps $(VENV)/.installed-dev
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet "playwright>=1.45"
	GENSERVE_UI_TEST=1 $(BIN)/python -m pytest -p no:cacheprovider -rs tests/ui

# Issue 18: genserve on Ray Serve (deploy/ray) on a local one-node Ray cluster (2 CPUs, no dashboard): 1 then 2
# replicas, seeded answers compared across replicas, mixed traffic with one replica killed, throughput at 32 clients;
# Ray is stopped at the end. About 3 minutes. RAY_TEST_ARGS passes options (e.g. RAY_TEST_ARGS="--seconds 20").
.PHONY: ray-test
$(VENV)/.installed-ray: pyproject.toml | $(VENV)/.installed-dev
	$(BIN)/pip install -e ".[ray]"
	touch $@

ray-test: $(VENV)/.installed-ray
	OMP_NUM_THREADS=1 timeout 900 nice -n 10 $(BIN)/python scripts/ray_test.py $(RAY_TEST_ARGS)

protos: $(VENV)/.installed-dev
	bash scripts/gen-protos.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

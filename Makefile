# Tether's entry points. CI runs `make test` (through .ci/run); everything installs itself.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
export PATH := $(HOME)/.cargo/bin:/usr/local/go/bin:$(PATH)

CARGO ?= cargo
RUN_DIR := $(CURDIR)/.run
CLUSTER_DIR := $(RUN_DIR)/cluster
# The control plane's binaries (kube-apiserver, kube-controller-manager, kubectl, etcd, helm), built
# once from their Go modules and cached by version.
CONTROLPLANE_BIN = $(shell bash hack/controlplane-bin.sh)
# kustomize and sops, which the operator renders and decrypts with (helm is in CONTROLPLANE_BIN),
# built once from their Go modules and cached by version.
RENDER_BIN = $(shell bash hack/render-tools-bin.sh)
# Where the operator the tests, the demo and the benches start finds its tools.
TOOLS_ENV = TETHER_CONTROLPLANE_BIN="$(CONTROLPLANE_BIN)" TETHER_RENDER_BIN="$(RENDER_BIN)"
# The debug binaries the e2e tests, the demo and cluster-up use: always this one set of packages, so
# that cargo resolves the same features and builds them once for all.
BUILD_BINS = $(CARGO) build --locked -p tether-operator -p tether-hub -p tether-e2e --bins

.PHONY: help deps controlplane fmt lint unit e2e test run stop cluster-up cluster-down crds bench bench-vs-flux fuzz clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

deps: ## Install the Debian packages the tests and demo need (only the missing ones)
	@bash hack/deps.sh

controlplane: deps ## Build (or find cached) the control-plane binaries and the rendering tools
	@bash hack/controlplane-bin.sh
	@bash hack/render-tools-bin.sh

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## Formatting check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit: ## Unit and component tests (no control plane)
	$(CARGO) test --workspace --exclude tether-e2e --locked

e2e: deps ## End-to-end tests against the local control plane
	$(BUILD_BINS)
	$(TOOLS_ENV) $(CARGO) test -p tether-e2e --locked -- --nocapture
	@bash hack/check-no-leftovers.sh "$(RUN_DIR)"

test: deps lint unit e2e ## Everything CI checks: lint, unit tests, end-to-end tests

cluster-up: deps ## Start the control plane in the background; use as: eval "$$(make -s cluster-up)"
	@$(BUILD_BINS) -q
	@TETHER_CONTROLPLANE_BIN="$(CONTROLPLANE_BIN)" target/debug/tether-cluster --state-dir "$(CLUSTER_DIR)" up

cluster-down: ## Stop the control plane started by cluster-up
	@$(BUILD_BINS) -q
	@target/debug/tether-cluster --state-dir "$(CLUSTER_DIR)" down

run: deps ## The local demo: control plane, git server, hub, operator and a GitRepository syncing
	@echo "==> building the control-plane binaries (cached after the first build; the first takes ~20 min)"
	@bash hack/controlplane-bin.sh >/dev/null
	@echo "==> building kustomize and sops (cached after the first build; the first takes ~5 min)"
	@bash hack/render-tools-bin.sh >/dev/null
	@echo "==> building Tether"
	$(BUILD_BINS)
	@$(TOOLS_ENV) target/debug/tether-demo --state-dir "$(RUN_DIR)/demo"

stop: ## Stop everything `make run` (and `make cluster-up`) started
	@if [[ -f "$(RUN_DIR)/demo/demo.pid" ]]; then \
	  pid=$$(cat "$(RUN_DIR)/demo/demo.pid"); kill -TERM "$$pid" 2>/dev/null || true; \
	  for _ in $$(seq 100); do kill -0 "$$pid" 2>/dev/null || break; sleep 0.1; done; \
	  echo "stopped the demo"; fi
	@$(MAKE) -s cluster-down

crds: ## Regenerate crds/ from the Rust types
	$(CARGO) run -q --locked -p tether-operator -- crd > crds/gitrepository.yaml

BENCH_SIZES ?= 100 1000
BENCH_PUSHES ?= 50
BENCH_AGENTS ?= 10000
BENCH_AGENTS_PER_PROCESS ?= 5000
# slow-loris connections, concurrent 1 MiB bad-signature posts, real pushes
BENCH_HOSTILE ?= 1000 100 200
BENCH_CI ?= 2000 2000 1000
# kustomize repositories of 200 ConfigMaps for the cold start, pushes per rendering mode
BENCH_RENDER ?= 100 10
# clusters, repositories each: the fleet view's records are their product
BENCH_FLEET ?= 200 500
# agents over three hub replicas: fan-out, sustained webhooks, RSS, a rolling restart under load
BENCH_REPLICAS ?= 10000
bench: deps ## Benchmarks that print figures (release builds): sync cold start and idle cost, push latency, rendering, hub fan-out, CI access, fleet view, hub replicas
	$(CARGO) build --release --locked -p tether-operator -p tether-hub -p tether-e2e --bins --example bench-push --example bench-ci \
	  --example bench-render --example bench-fleet --example bench-replicas
	$(CARGO) build --release --locked -p tether-hub --example loadgen --example hostile
	$(TOOLS_ENV) TETHER_BIN_DIR=$(CURDIR)/target/release \
	  target/release/bench-sync $(BENCH_SIZES)
	$(TOOLS_ENV) TETHER_BIN_DIR=$(CURDIR)/target/release \
	  target/release/examples/bench-push $(BENCH_PUSHES)
	$(TOOLS_ENV) TETHER_BIN_DIR=$(CURDIR)/target/release \
	  target/release/examples/bench-ci $(BENCH_CI)
	$(TOOLS_ENV) TETHER_BIN_DIR=$(CURDIR)/target/release target/release/examples/bench-render $(BENCH_RENDER)
	TETHER_BIN_DIR=$(CURDIR)/target/release \
	  target/release/examples/bench-fleet --clusters $(word 1,$(BENCH_FLEET)) --repos $(word 2,$(BENCH_FLEET))
	TETHER_BIN_DIR=$(CURDIR)/target/release target/release/examples/bench-replicas --agents $(BENCH_REPLICAS)
	ulimit -n "$$(ulimit -Hn)" && target/release/examples/loadgen $(BENCH_AGENTS) $(BENCH_AGENTS_PER_PROCESS)
	ulimit -n "$$(ulimit -Hn)" && target/release/examples/hostile $(BENCH_HOSTILE)

# pushes, then repositories of 4 ConfigMaps for the cold start and idle phases (1000 in a full run)
BENCH_VS_FLUX ?= 50 100
bench-vs-flux: deps ## Tether and Flux side by side on one control plane (release builds); table in bench-results/
	@bash hack/flux-bin.sh >/dev/null
	$(CARGO) build --release --locked -p tether-operator -p tether-hub -p tether-e2e --bins --example bench-vs-flux
	$(TOOLS_ENV) TETHER_BIN_DIR=$(CURDIR)/target/release TETHER_FLUX_BIN="$$(bash hack/flux-bin.sh)" \
	  target/release/examples/bench-vs-flux $(BENCH_VS_FLUX)

FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: ## Fuzz every parser of outside input, FUZZ_SECONDS each (docs/fuzzing.md); not part of test
	@bash hack/fuzz-deps.sh
	FUZZ_SECONDS=$(FUZZ_SECONDS) bash hack/fuzz.sh $(FUZZ_TARGETS)

clean: cluster-down
	rm -rf $(RUN_DIR)

# Berth: the two commands a new machine needs are `make run` and `make test`.
SHELL := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/berth-csi/berth/pkg/version.Version=$(VERSION)
# Tools built from the Go module proxy live outside the clone, keyed by version.
TOOLS_DIR ?= $(HOME)/.cache/berth/tools
CSI_SANITY_VERSION := v5.6.0
CSI_SANITY := $(TOOLS_DIR)/csi-sanity-$(CSI_SANITY_VERSION)
# promtool comes from the Prometheus the e2e tests run (PROMETHEUS_VERSION, hack/versions.sh).
PROMTOOL_VERSION := $(shell sed -n 's/^PROMETHEUS_VERSION=//p' hack/versions.sh)
PROMTOOL := $(TOOLS_DIR)/promtool-$(PROMTOOL_VERSION)
RUN_DIR ?= $(CURDIR)/_output/run

.PHONY: all build run test unit fuzz sanity sanity-nonroot bench vet fmt-check clean crash \
	images cluster-up cluster-down demo e2e e2e-bench deploy verify-deploy helm quota-vm bench-quota-vm \
	metrics-lint bench-metrics bench-walks kubectl-berth

all: build

build:
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o bin/csi-driver ./cmd/csi-driver

# The kubectl plugin (docs/operations.md, "kubectl berth"): copy bin/kubectl-berth onto
# PATH and run `kubectl berth pools`. GOOS/GOARCH build it for another machine.
kubectl-berth:
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o bin/kubectl-berth ./cmd/kubectl-berth

# Start the driver on its embedded default pool (/var/lib/berth/default), serving a
# socket under _output/run. Needs root: it bind-mounts volumes. Stop with Ctrl-C.
run: build
	mkdir -p $(RUN_DIR)/kubelet
	./bin/csi-driver --endpoint unix://$(RUN_DIR)/csi.sock --kubelet-dir $(RUN_DIR)/kubelet -v 2

# Everything, with the race detector, as root: unit tests, real-mount tests, a short
# fuzz run, csi-sanity in-process, csi-sanity over the fake host as an unprivileged
# user, then the csi-sanity binary against the built driver.
test: vet fmt-check unit fuzz sanity-nonroot sanity

unit:
	go test -race -count=1 -timeout 20m ./...

# Fuzzing: every parser of untrusted input, each target for FUZZTIME, one
# `go test -fuzz` per target (it takes one target of one package at a time; see
# hack/fuzz.sh). `make test` gives each TEST_FUZZTIME. On this machine's 2 shared
# cores, building included, the 19 targets take 2.5 min at 5s (2:24 and 2:30
# measured) and 4 min 15 s at the default 10s. The seed corpora and testdata/fuzz/
# run as plain tests in `make unit`; a failing input is written to the package's
# testdata/fuzz/<target>/, where it stays as a regression test.
FUZZTIME ?= 10s
TEST_FUZZTIME ?= 5s
test: FUZZTIME = $(TEST_FUZZTIME)
FUZZ_TARGETS := \
	storage:FuzzParseVolumeID storage:FuzzVolumeID storage:FuzzParseSnapshotID storage:FuzzValidateName \
	storage:FuzzParseQuantity storage:FuzzInodeLimit storage:FuzzLoadConfig storage:FuzzReadRecord \
	storage:FuzzReadSnapshot storage:FuzzStaged storage:FuzzRecoveryPaths \
	mounter:FuzzParseFlags driver:FuzzParseFlags volcap:FuzzParse \
	server:FuzzParseEndpoint server:FuzzSanitize \
	controller:FuzzListVolumes controller:FuzzListSnapshots controller:FuzzParameters \
	transfer:FuzzDecode

fuzz:
	hack/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

sanity: build $(CSI_SANITY)
	hack/sanity.sh bin/csi-driver $(CSI_SANITY)

# csi-sanity in-process over the fake host (internal/fakehost), run as nobody
# (uid 65534) when started as root: the node service's logic needs no privilege, and
# the test fails if BERTH_SANITY_NONROOT=1 finds it privileged. The test binary and
# its TMPDIR live in a directory of their own, removed afterwards.
sanity-nonroot:
	@dir=$$(mktemp -d /tmp/berth-sanity-nonroot.XXXXXX) && trap 'rm -rf "$$dir"' EXIT && \
	chmod 755 "$$dir" && mkdir "$$dir/tmp" && \
	go test -c -race -o "$$dir/sanity.test" ./test/sanity && \
	if [ "$$(id -u)" = 0 ]; then \
		chown 65534:65534 "$$dir/tmp"; drop="setpriv --reuid=65534 --regid=65534 --clear-groups"; \
	fi && \
	cd "$$dir" && TMPDIR="$$dir/tmp" BERTH_SANITY_NONROOT=1 $$drop ./sanity.test \
		-test.run '^TestSanityFakeHost$$' -test.count=1 -test.v -test.timeout 10m

# The crash matrix: test/crash with SIGKILL at random points of every mutating call
# (TestCrashMatrix: MATRIX_KILLS kills over every dir-pool operation; TestCrashImageStaging:
# IMAGE_KILLS inside image stage/publish/expand/unpublish/unstage; TestCrashConsistency:
# CRASH_ROUNDS kills under concurrent creates and deletes; TestCrashGroupSnapshots:
# GROUP_KILLS inside group snapshots whose pod is paused). Each test logs its counts
# ("kills: N (create a, delete b, ...)"). `make unit` runs the same tests with small
# defaults (40 + 120 + 8 + 20 kills). Measured here (2 shared cores, -race, building included):
# 56 s and 58 s.
MATRIX_KILLS ?= 500
IMAGE_KILLS ?= 120
CRASH_ROUNDS ?= 40
GROUP_KILLS ?= 100
crash:
	set -o pipefail; BERTH_MATRIX_KILLS=$(MATRIX_KILLS) BERTH_IMAGE_CRASH_ROUNDS=$(IMAGE_KILLS) BERTH_CRASH_ROUNDS=$(CRASH_ROUNDS) \
		BERTH_GROUP_KILLS=$(GROUP_KILLS) \
		go test -race -count=1 -timeout 40m -v -run '^TestCrash' ./test/crash | \
		grep -E '^(=== RUN|--- |ok|FAIL|PASS)|kills: |seed'

$(CSI_SANITY):
	mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR)/csi-sanity-build go install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$(CSI_SANITY_VERSION)
	mv $(TOOLS_DIR)/csi-sanity-build/csi-sanity $@ && rmdir $(TOOLS_DIR)/csi-sanity-build

# promtool check metrics on a real scrape of the driver's registry, and check rules on
# the chart's PrometheusRule and its dashboard's queries (promtool is built once, from
# the Go module proxy, into TOOLS_DIR; the unit tests run the same metrics linter
# in-process through client_golang's testutil, and check the rules' and queries'
# metric names and labels against the registry).
metrics-lint: $(PROMTOOL)
	BERTH_PROMTOOL=$(PROMTOOL) go test -count=1 -v -run '^TestPromtoolCheckMetrics$$' ./pkg/metrics
	BERTH_PROMTOOL=$(PROMTOOL) go test -count=1 -v -run '^TestPromtoolCheckRules$$' ./test/chart

$(PROMTOOL):
	mkdir -p $(TOOLS_DIR)
	GOBIN=$(TOOLS_DIR)/promtool-build go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	mv $(TOOLS_DIR)/promtool-build/promtool $@ && rmdir $(TOOLS_DIR)/promtool-build

# Drives a running driver over its socket; figures go to docs/benchmarks.md by hand.
bench: build
	go run ./test/bench --driver bin/csi-driver

# GET /metrics alone: series, scrape time and RSS with 10,000 volumes (about a minute).
bench-metrics: build
	go run ./test/bench --driver bin/csi-driver --metrics-only

# This machine's kernel has no quota support, so quota enforcement tests skip in
# `make test`; this target runs them in a QEMU guest booting Debian's stock kernel.
quota-vm:
	hack/vmtest.sh ./pkg/storage/quota -test.v
	hack/vmtest.sh ./pkg/node -test.run Quota -test.v

# The data path's quota ÷ host figures, which this machine's kernel cannot give
# (`make bench` prints n/a): test/bench's BenchmarkDataPathQuota in the same
# guest (TCG: an emulated CPU, a RAM-backed loop file), figures labelled as such.
bench-quota-vm: build
	BERTH_VMTEST_RACE=0 BERTH_VMTEST_TIMEOUT=2400 hack/vmtest.sh ./test/bench -test.run '^$$' \
		-test.bench DataPathQuota -test.benchtime 1x -test.v -data-driver $(CURDIR)/bin/csi-driver

# The engine's walks on trees built to be slow or large (docs/benchmarks.md, issue 13):
# a 100,000-deep chain and 1,000,000 hard links on a loop XFS, a few minutes, as root.
bench-walks:
	BERTH_BENCH_WALKS=1 go test -count=1 -run '^TestWalks$$' -v -timeout 60m ./test/bench/

vet:
	go vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

clean:
	rm -rf bin _output

# --- Kubernetes: image, chart, a local single-node cluster, end-to-end tests ---
# Kubernetes, the sidecars and helm build into ~/.cache/berth, keyed by version
# (hack/versions.sh); a cold build takes ~40 minutes on 2 cores, a warm one nothing.

helm:
	hack/k8s-tools/build.sh helm

# The local cluster's images (no Docker engine, no registry), as docker-archives.
images: build
	hack/k8s-tools/build.sh all
	hack/images.sh all

# deploy/ is rendered from charts/berth; verify-deploy fails on drift.
deploy:
	hack/deploy.sh

verify-deploy:
	hack/deploy.sh --verify

cluster-up:
	hack/cluster-up.sh

cluster-down:
	hack/cluster-down.sh

# Berth's main job on a real kubelet: a file outlives its pod. Leaves the cluster up.
demo:
	hack/demo.sh

# End-to-end tests against the local cluster (brought up if needed, left up;
# make cluster-down removes it).
e2e: verify-deploy
	hack/e2e.sh

# Berth, local-path-provisioner, static PVs (no provisioner) and emptyDir on the cluster of
# make e2e (which must be up):
# Berth reinstalled at the chart's capacity pace (hack/bench-values.yaml), then claim+pod
# -> Running one at a time (BERTH_BENCH_SERIAL, 20) and BERTH_BENCH_CLAIMS (200) at once
# and their deletion, in BERTH_BENCH_ROUNDS (3) rounds; prints "figure:" lines. The test
# installs local-path-provisioner itself when missing (test/e2e/local-path) and removes it.
e2e-bench:
	hack/e2e-bench.sh

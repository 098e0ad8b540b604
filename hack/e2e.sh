#!/usr/bin/env bash
# make e2e: brings up the local cluster if it is not up (NODES nodes, 3 by default), installs Berth from
# charts/berth (hack/cluster-values.yaml + hack/e2e-values.yaml), runs Berth's own
# end-to-end tests (test/e2e; BERTH_E2E_BERTH=0 skips them), then the Kubernetes
# external storage suite against test/e2e/testdriver.yaml (BERTH_E2E_EXTERNAL=0 skips
# it). The cluster is left up: make cluster-down removes it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# .ci/run brings the cluster up itself, before it starts the quota guest beside the
# tests, and says so with BERTH_E2E_CLUSTER_UP=1: a second, warm cluster-up.sh would
# rebuild and import the Berth image again (about 35 s).
if [ "${BERTH_E2E_CLUSTER_UP:-0}" != 1 ]; then
	"$here/cluster-up.sh"
fi
source "$here/cluster-lib.sh"
helm=$BERTH_CACHE/tools/helm-$HELM_VERSION
export KUBECONFIG=$KUBECONFIG_FILE BERTH_KUBECTL=$K8S_BIN/kubectl BERTH_E2E=1 BERTH_CLUSTER_DIR=$CLUSTER_DIR
# The shared-pool test upgrades the release with a GlusterFS pool and restores it.
export BERTH_HELM=$helm
t0=$(date +%s) step_name=""
# Logs and the suite's JUnit report, kept after make cluster-down.
logs=$root/_output/e2e
rm -rf "$logs"; mkdir -p "$logs"
berth=${BERTH_E2E_BERTH:-1} external=${BERTH_E2E_EXTERNAL:-1}
# Built once, run twice (the tests find the tree relative to test/e2e); compiled
# while helm installs and tests the release.
build_pid=
if [ "$berth" = 1 ]; then
	(cd "$root" && go test -c -o "$logs/e2e.test" ./test/e2e) >"$logs/e2e-build.log" 2>&1 &
	build_pid=$!
fi

step "helm install berth with the e2e pools"
berth_install e2e-values.yaml

step "helm test"
"$helm" test berth -n kube-system --timeout 2m >/dev/null

step "promtool check metrics and rules (make metrics-lint, the e2e Prometheus's promtool)"
make -C "$root" metrics-lint PROMTOOL="$BERTH_CACHE/prometheus-$PROM_STACK_KEY/promtool" >"$logs/metrics-lint.log" 2>&1 ||
	{ tail -30 "$logs/metrics-lint.log"; exit 1; }

if [ "$berth" = 1 ]; then
	# TestUpgrade upgrades from the previous release: its chart and image, built from
	# its own commit and cached in $BERTH_CACHE/previous-<commit> (warm: under a second).
	# Under make e2e the test may not skip for want of them.
	if git -C "$root" cat-file -e "$(sed -n 's/^PREVIOUS_RELEASE=//p' "$here/previous-release.sh")^{commit}" 2>/dev/null; then
		step "previous release for the upgrade test (hack/previous-release.sh)"
		"$here/previous-release.sh" >/dev/null
		export BERTH_E2E_UPGRADE=1
	else
		echo "WARNING: this clone lacks the previous release's commit (shallow?): TestUpgrade is skipped" >&2
		export BERTH_E2E_UPGRADE=0
	fi
	wait "$build_pid" || { cat "$logs/e2e-build.log" >&2; exit 1; }
fi

# berth_tests GROUP: test/e2e's tests of one group (helpers_test.go, "group"), their
# progress on the terminal marked with the group's name, the whole log in _output/e2e.
berth_tests() {
	(cd "$root/test/e2e" && BERTH_E2E_GROUP=$1 "$logs/e2e.test" -test.v -test.count=1 \
		-test.timeout=30m -test.parallel=16 2>&1) | tee "$logs/berth-$1.log" |
		{ grep --line-buffered -E '^(=== RUN|--- |PASS|FAIL|panic)' || true; } | sed -u "s/^/[$1] /"
	return "${PIPESTATUS[0]}"
}

# failure_summary GROUP: the failed tests of a group and the last lines each logged, printed
# last so that a CI system that keeps only the end of the output still names the failure.
failure_summary() {
	local log="$logs/berth-$1.log"
	echo "=== Berth's $1 group failed; the failures (whole log: $log):" >&2
	grep -E '^\s*--- FAIL' "$log" | sed "s/^/[$1] /" >&2 || true
	# What each failed test logged last: go test -v streams a test's lines before its
	# "--- FAIL" line (the alone group runs one test at a time, so they are its own).
	awk '{ring[NR % 30] = $0} /^--- FAIL/ {for (i = NR - 29; i <= NR; i++) if (i > 0) print ring[i % 30]}' \
		"$log" | tail -90 | sed "s/^/[$1] /" >&2
}

if [ "$berth" = 1 ]; then
	# First the tests that change what others see (the release's values, a node's
	# plugin, kubelet or disk; orphans, capacity), one at a time, with nothing beside.
	step "Berth end-to-end tests that run alone (test/e2e, group alone)"
	berth_tests alone || { failure_summary alone; exit 1; }
fi

# Then, all at once: test/e2e's tests that keep to their own namespace, and the
# Kubernetes external storage suite, whose specs do as well.
if [ "$external" = 1 ]; then
	"$root/hack/k8s-tools/build.sh" ginkgo
	ginkgo=$("$root/hack/k8s-tools/build.sh" ginkgo-path)
	procs=${BERTH_E2E_PROCS:-4}
fi
suite="the Kubernetes external storage suite (External.Storage; no Disruptive/Serial/Slow/Feature but snapshots; ${procs:-4} processes)"
case $berth$external in
11) step "Berth's parallel group (test/e2e) beside $suite" ;;
10) step "Berth's parallel group (test/e2e)" ;;
01) step "${suite^}" ;;
esac
berth_pid= external_pid=
if [ "$berth" = 1 ]; then
	berth_tests parallel &
	berth_pid=$!
fi
if [ "$external" = 1 ]; then
	# The specs run in parallel (BERTH_E2E_PROCS ginkgo processes): each works in its
	# own namespace with its own StorageClass; Serial and Disruptive ones are skipped.
	# Feature-tagged specs are skipped, except the snapshot ones: VolumeSnapshotDataSource
	# is GA, and the cluster has the snapshot CRDs and controller (cluster-up.sh).
	labels='!/^Feature:/ || Feature:VolumeSnapshotDataSource'
	# Skipped as well: the "Pre-provisioned Snapshot" pattern. Berth's csi-snapshotter
	# runs on every node (--node-deployment, distributed snapshotting) and so only sees
	# the VolumeSnapshotContents labelled snapshot.storage.kubernetes.io/managed-by=<its
	# node>; the snapshot-controller labels those it creates, but the suite's
	# pre-provisioned content carries no label, so no sidecar ever reads it and the
	# VolumeSnapshot never becomes ready (a user importing a snapshot adds the label).
	skip='Disruptive|Serial|Slow|Pre-provisioned Snapshot'
	# Each e2e.test process leaves a directory test-kuberc* in its TMPDIR (upstream's
	# kubectl kuberc spec makes it while building the spec tree and removes it with
	# os.Remove, which fails on a directory with a file in it): the suite gets a
	# TMPDIR of its own, removed when it ends.
	(
		rc=0
		export TMPDIR=$logs/external-tmp
		mkdir -p "$TMPDIR"
		"$ginkgo" --procs="$procs" --no-color --timeout=60m \
			--focus='External.Storage' \
			--skip="$skip" --label-filter="$labels" \
			--output-dir="$logs" --junit-report=external-junit.xml \
			"$K8S_BIN/e2e.test" -- \
			-kubeconfig "$KUBECONFIG_FILE" -storage.testdriver="$root/test/e2e/testdriver.yaml" \
			-provider=skeleton -node-os-distro=debian -allowed-not-ready-nodes=0 \
			>"$logs/external.log" 2>&1 || rc=$?
		rm -rf "$TMPDIR"
		tail -30 "$logs/external.log" | sed 's/^/[external] /'
		exit $rc
	) &
	external_pid=$!
fi
failed=0
if [ -n "$berth_pid" ] && ! wait "$berth_pid"; then
	failure_summary parallel
	failed=1
fi
if [ -n "$external_pid" ] && ! wait "$external_pid"; then
	echo "the external storage suite failed: $logs/external.log" >&2
	failed=1
fi
[ "$failed" = 0 ] || exit 1
finish "e2e passed"

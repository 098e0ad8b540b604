#!/usr/bin/env bash
# make e2e-bench: on the cluster of make e2e (which must be up), installs Berth with the
# chart's own capacity pace (hack/bench-values.yaml over the e2e values), then runs the
# measurements: TestPVCToRunningLatency (Berth, local-path-provisioner, static PVs and emptyDir;
# BERTH_BENCH_SERIAL, BERTH_BENCH_CLAIMS, BERTH_BENCH_ROUNDS, BERTH_BENCH_CLAIM_SIZE),
# TestTransferThroughput and TestMoveDowntime. Each prints "figure:" lines
# (docs/benchmarks.md). The release is left with the bench values: make e2e installs
# its own again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
source "$here/cluster-lib.sh"
helm=$BERTH_CACHE/tools/helm-$HELM_VERSION
export KUBECONFIG=$KUBECONFIG_FILE BERTH_KUBECTL=$K8S_BIN/kubectl BERTH_E2E=1 BERTH_E2E_BENCH=1 \
	BERTH_CLUSTER_DIR=$CLUSTER_DIR BERTH_HELM=$helm
kc get --raw /readyz >/dev/null || { echo "e2e-bench: the cluster is not up (make e2e, or hack/cluster-up.sh and install Berth)" >&2; exit 1; }
berth_install e2e-values.yaml bench-values.yaml
cd "$root"
exec go test -count=1 -v -run "${BERTH_BENCH_RUN:-TestPVCToRunningLatency|TestTransferThroughput|TestMoveDowntime}" -timeout 120m ./test/e2e

#!/usr/bin/env bash
# make e2e: brings up the local cluster if it is not up, installs Berth from
# charts/berth (hack/cluster-values.yaml + hack/e2e-values.yaml), runs Berth's own
# end-to-end tests (test/e2e), then the Kubernetes external storage suite against
# test/e2e/testdriver.yaml (BERTH_E2E_EXTERNAL=0 skips it). The cluster is left up:
# make cluster-down removes it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
"$here/cluster-up.sh"
source "$here/cluster-lib.sh"
helm=$BERTH_CACHE/tools/helm-$HELM_VERSION
export KUBECONFIG=$KUBECONFIG_FILE BERTH_KUBECTL=$K8S_BIN/kubectl BERTH_E2E=1
t0=$(date +%s) step_name=""

step "helm install berth with the e2e pools"
[ -e /var/lib/berth-adopt ] || touch "$CLUSTER_DIR/created-adopt-root"
mkdir -p /var/lib/berth-adopt
"$helm" upgrade --install berth "$root/charts/berth" -n kube-system \
	-f "$here/cluster-values.yaml" -f "$here/e2e-values.yaml" --wait --timeout 3m >/dev/null
kc -n kube-system rollout status ds/berth-node --timeout=120s >/dev/null

step "helm test"
"$helm" test berth -n kube-system --timeout 2m >/dev/null

step "Berth end-to-end tests (test/e2e)"
(cd "$root" && go test -count=1 -timeout 30m -v ./test/e2e 2>&1 | tee "$CLUSTER_DIR/logs/e2e-berth.log" |
	grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)' )
[ "${PIPESTATUS[0]}" = 0 ] || exit 1

if [ "${BERTH_E2E_EXTERNAL:-1}" = 1 ]; then
	step "Kubernetes external storage suite (External.Storage; no Disruptive/Serial/Slow/Feature)"
	"$K8S_BIN/e2e.test" -kubeconfig "$KUBECONFIG_FILE" -storage.testdriver="$root/test/e2e/testdriver.yaml" \
		-ginkgo.focus='External.Storage' \
		-ginkgo.skip='Disruptive|Serial|Slow|Feature:|\[Feature' \
		-ginkgo.no-color -ginkgo.timeout=60m -ginkgo.procs=1 \
		-report-dir="$CLUSTER_DIR/logs/e2e-external" -provider=skeleton \
		-node-os-distro=debian -allowed-not-ready-nodes=0 2>&1 | tee "$CLUSTER_DIR/logs/e2e-external.log" | tail -30
	[ "${PIPESTATUS[0]}" = 0 ] || exit 1
fi
finish "e2e passed"

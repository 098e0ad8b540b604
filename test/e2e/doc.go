// Package e2e holds Berth's end-to-end tests: they run against a real cluster with
// Berth installed from charts/berth (make e2e brings up the local cluster of
// hack/cluster-up.sh, installs the chart with hack/e2e-values.yaml and sets
// BERTH_E2E=1). Without BERTH_E2E=1 every test skips, so `go test ./...` needs no
// cluster. The tests drive kubectl (BERTH_KUBECTL, KUBECONFIG) and, for the host
// side, run as root on the node itself.
package e2e

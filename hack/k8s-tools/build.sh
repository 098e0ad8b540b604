#!/usr/bin/env bash
# Builds the binaries the local cluster needs into a cache outside the clone, keyed by
# version, so a second run (and CI on the same machine) costs nothing:
#   $BERTH_CACHE/k8s-<version>/     kube-apiserver kube-controller-manager kube-scheduler
#                                   kubelet kubectl e2e.test agnhost
#   $BERTH_CACHE/sidecars-<key>/    csi-provisioner csi-resizer csi-snapshotter snapshot-controller
#   $BERTH_CACHE/snapshot-metadata-<version>/   csi-snapshot-metadata (the external-snapshot-
#                                   metadata sidecar), snapshot-metadata-lister (Berth's
#                                   client of it, on the sidecar's pkg/iterator), crds/ (its
#                                   SnapshotMetadataService CRD)
#   $BERTH_CACHE/pause-<key>/       pause
#   $BERTH_CACHE/tools/helm-<version>
#   $BERTH_CACHE/tools/ginkgo-<version>   the CLI that runs e2e.test in parallel, at the
#                                   version e2e.test is built with
#   $BERTH_CACHE/tools/local-path-provisioner-<version>   rancher's, for make e2e-bench
#   $BERTH_CACHE/prometheus-<key>/  prometheus promtool operator prometheus-config-reloader
#                                   crds/ (the operator's CRDs), for the e2e monitoring stack
# Usage: build.sh [kubernetes|sidecars|snapshot-metadata|pause|helm|ginkgo|local-path|prometheus|all]
#        (default all)
#        build.sh ginkgo-path      prints where the ginkgo CLI is (or will be)
# A target is built only when its stamp file is missing; each is built into a temporary
# directory and renamed into place, so an interrupted build leaves nothing half-made.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../versions.sh"
export CGO_ENABLED=0 GOFLAGS=-trimpath
ldflags="-s -w"

k8s_dir=$BERTH_CACHE/k8s-$K8S_VERSION
sidecars_dir=$BERTH_CACHE/sidecars-$SIDECARS_KEY
pause_dir=$BERTH_CACHE/pause-$PAUSE_KEY
helm_bin=$BERTH_CACHE/tools/helm-$HELM_VERSION
ginkgo_version() { (cd "$here/kubernetes" && go list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2); }
if [ "${1:-}" = ginkgo-path ]; then echo "$BERTH_CACHE/tools/ginkgo-$(ginkgo_version)"; exit 0; fi

step() { echo "[$(date +%T)] $*"; }

# One build at a time (a second caller waits, then finds the stamps). local-path,
# prometheus and snapshot-metadata alone have a lock of their own each: a few minutes' build need not wait
# behind a cold Kubernetes build (30-40 min) holding the shared lock. An `all` building
# one of them at the same time only repeats the work: each build goes to a temporary
# directory of its own, renamed into place.
mkdir -p "$BERTH_CACHE"
case "${1:-all}" in
local-path | prometheus | snapshot-metadata) exec 9>"$BERTH_CACHE/.build-$1.lock" ;;
*) exec 9>"$BERTH_CACHE/.build.lock" ;;
esac
flock 9

build_kubernetes() {
	[ -f "$k8s_dir/.done" ] && return 0
	step "building Kubernetes $K8S_VERSION into $k8s_dir (cold: ~30-40 min on 2 cores)"
	local tmp="$k8s_dir.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
	local v="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
	v="$v -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
	(cd "$here/kubernetes" &&
		go build -ldflags "$ldflags $v" -o "$tmp/" \
			k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
			k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
			k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes/test/images/agnhost &&
		go test -c -vet=off -ldflags "$ldflags $v" -o "$tmp/e2e.test" k8s.io/kubernetes/test/e2e)
	touch "$tmp/.done"; rm -rf "$k8s_dir"; mv "$tmp" "$k8s_dir"
	step "Kubernetes binaries ready"
}

build_sidecars() {
	[ -f "$sidecars_dir/.done" ] && return 0
	step "building CSI sidecars into $sidecars_dir"
	local tmp="$sidecars_dir.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
	(cd "$here/sidecars" && go build -ldflags "$ldflags" -o "$tmp/" \
		github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner \
		github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer \
		github.com/kubernetes-csi/external-snapshotter/v8/cmd/csi-snapshotter \
		github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller)
	touch "$tmp/.done"; rm -rf "$sidecars_dir"; mv "$tmp" "$sidecars_dir"
	step "sidecars ready"
}

build_pause() {
	[ -f "$pause_dir/.done" ] && return 0
	local tmp="$pause_dir.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp"
	(cd "$here/pause" && go build -ldflags "$ldflags" -o "$tmp/pause" .)
	touch "$tmp/.done"; rm -rf "$pause_dir"; mv "$tmp" "$pause_dir"
}

# go_install_tool BIN PACKAGE@VERSION [GO FLAGS...]: go install into a temporary GOBIN,
# then rename the binary to BIN (name-version), unless BIN is there already.
go_install_tool() {
	local bin=$1 pkg=$2; shift 2
	[ -x "$bin" ] && return 0
	step "building ${pkg##*/}"
	mkdir -p "$BERTH_CACHE/tools"
	local tmp name=${pkg##*/}; name=${name%@*}
	tmp=$(mktemp -d "$BERTH_CACHE/tools/$name-build.XXXXXX")
	GOBIN=$tmp go install "$@" "$pkg"
	mv "$tmp/$name" "$bin"; rmdir "$tmp"
}

build_helm() { go_install_tool "$helm_bin" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; }

build_ginkgo() {
	local v; v=$(ginkgo_version)
	go_install_tool "$BERTH_CACHE/tools/ginkgo-$v" "github.com/onsi/ginkgo/v2/ginkgo@$v"
}

# local-path-provisioner has no replace directives, so go install @version builds it from
# the module proxy; its own scripts/build sets main.VERSION the same way.
build_local_path() {
	go_install_tool "$BERTH_CACHE/tools/local-path-provisioner-$LOCAL_PATH_VERSION" \
		"github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION" \
		-ldflags "$ldflags -X main.VERSION=$LOCAL_PATH_VERSION"
}

# The monitoring stack the e2e tests run (test/e2e/prometheus), from the module proxy:
# Prometheus and promtool, the operator and its config reloader, and the operator's CRDs.
# Prometheus is built with only its Kubernetes service discovery (remove_all_sd,
# enable_kubernetes_sd: what the operator's generated configuration uses; the other
# discovery plugins are most of its dependencies), and without its web UI: the module
# holds no built UI assets (upstream builds them with npm into the builtinassets tag),
# so the UI's pages fail while the HTTP API (/api/v1/...), which the tests use, is all
# there. The operator's go.mod replaces its pkg/apis/monitoring and pkg/client
# submodules with directories its module zip does not hold, so go install @version
# refuses it: it is built in a writable copy of its source with the replacements
# dropped (the submodules then come from the proxy at the same version and commit).
# Cold: 29 min here (2 cores shared with another build, load ~12; 14 min of CPU; module
# downloads included): 16 for Prometheus and promtool, 13 for the operator and the
# reloader. Out: 231 MB (prometheus 76, promtool 54, operator 63, reloader 44, crds/ 4).
prom_dir=$BERTH_CACHE/prometheus-$PROM_STACK_KEY
build_prometheus() {
	[ -f "$prom_dir/.done" ] && return 0
	step "building Prometheus $PROMETHEUS_TAG and prometheus-operator $PROM_OPERATOR_VERSION into $prom_dir"
	local tmp="$prom_dir.tmp.$$"; rm -rf "$tmp"; mkdir -p "$tmp/crds"
	local cv=github.com/prometheus/common/version op=github.com/prometheus-operator/prometheus-operator
	GOBIN=$tmp go install -tags remove_all_sd,enable_kubernetes_sd \
		-ldflags "$ldflags -X $cv.Version=${PROMETHEUS_TAG#v} -X $cv.Branch=HEAD -X $cv.BuildUser=berth" \
		"github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_VERSION" \
		"github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
	local src
	src=$(cd "$tmp" && go mod download -json "$op@$PROM_OPERATOR_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -n "$src" ] || { echo "build.sh: $op@$PROM_OPERATOR_VERSION not in the module cache" >&2; return 1; }
	cp -r "$src" "$tmp/src"; chmod -R u+w "$tmp/src"
	(cd "$tmp/src" &&
		go mod edit -dropreplace="$op/pkg/apis/monitoring" -dropreplace="$op/pkg/client" &&
		GOFLAGS="$GOFLAGS -mod=mod" go build -o "$tmp/" \
			-ldflags "$ldflags -X $cv.Version=${PROM_OPERATOR_VERSION#v} -X $cv.Branch=HEAD -X $cv.BuildUser=berth" \
			./cmd/operator ./cmd/prometheus-config-reloader)
	rm -rf "$tmp/src"
	# The CRDs e2e applies (server-side: the larger ones pass the client-side
	# last-applied annotation's size limit); all of them, one file each.
	cp "$src"/example/prometheus-operator-crd/monitoring.coreos.com_*.yaml "$tmp/crds/"
	chmod u+w "$tmp"/crds/*.yaml
	touch "$tmp/.done"; rm -rf "$prom_dir"; mv "$tmp" "$prom_dir"
	step "Prometheus and prometheus-operator ready"
}

# The external-snapshot-metadata sidecar and Berth's client of it (lister/), from a
# module of their own (snapshot-metadata/): the sidecar pins the k8s.io modules to
# v0.35.0, which would move the other sidecars' dependencies in one build list. The
# sidecar asks for its client module (the CRD's clientset) at v0.2.0, which the proxy
# refuses; the module's go.mod requires the client's v1.0.0, tagged at the sidecar's
# own v1.0.0 commit, which it serves. Cold: about 3 min here (2 shared cores).
snapmeta_dir=$BERTH_CACHE/snapshot-metadata-$SNAPSHOT_METADATA_VERSION
build_snapshot_metadata() {
	[ -f "$snapmeta_dir/.done" ] && return 0
	step "building external-snapshot-metadata $SNAPSHOT_METADATA_VERSION into $snapmeta_dir"
	local tmp="$snapmeta_dir.tmp.$$" mod=github.com/kubernetes-csi/external-snapshot-metadata src
	rm -rf "$tmp"; mkdir -p "$tmp/crds"
	(cd "$here/snapshot-metadata" && go build -ldflags "$ldflags -X main.version=$SNAPSHOT_METADATA_VERSION" \
		-o "$tmp/" "$mod/cmd/csi-snapshot-metadata" &&
		go build -ldflags "$ldflags" -o "$tmp/snapshot-metadata-lister" ./lister)
	src=$(cd "$here/snapshot-metadata" && go mod download -json "$mod/client" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -n "$src" ] || { echo "build.sh: $mod/client not in the module cache" >&2; return 1; }
	cp "$src"/config/crd/*.yaml "$tmp/crds/"
	chmod u+w "$tmp"/crds/*.yaml
	touch "$tmp/.done"; rm -rf "$snapmeta_dir"; mv "$tmp" "$snapmeta_dir"
	step "external-snapshot-metadata ready"
}

case "${1:-all}" in
kubernetes) build_kubernetes ;;
sidecars) build_sidecars ;;
pause) build_pause ;;
helm) build_helm ;;
ginkgo) build_ginkgo ;;
local-path) build_local_path ;;
prometheus) build_prometheus ;;
snapshot-metadata) build_snapshot_metadata ;;
all) build_pause; build_helm; build_ginkgo; build_local_path; build_prometheus; build_snapshot_metadata; build_sidecars; build_kubernetes ;;
*) echo "usage: $0 [kubernetes|sidecars|snapshot-metadata|pause|helm|ginkgo|local-path|prometheus|all]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Builds the binaries the local cluster needs into a cache outside the clone, keyed by
# version, so a second run (and CI on the same machine) costs nothing:
#   $BERTH_CACHE/k8s-<version>/     kube-apiserver kube-controller-manager kube-scheduler
#                                   kubelet kubectl e2e.test agnhost
#   $BERTH_CACHE/sidecars-<key>/    csi-provisioner csi-resizer csi-snapshotter snapshot-controller
#   $BERTH_CACHE/pause-<key>/       pause
#   $BERTH_CACHE/tools/helm-<version>
#   $BERTH_CACHE/tools/ginkgo-<version>   the CLI that runs e2e.test in parallel, at the
#                                   version e2e.test is built with
#   $BERTH_CACHE/tools/local-path-provisioner-<version>   rancher's, for make e2e-bench
# Usage: build.sh [kubernetes|sidecars|pause|helm|ginkgo|local-path|all]   (default all)
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

# One build at a time (a second caller waits, then finds the stamps). local-path alone
# has a lock of its own: a few minutes' build need not wait behind a cold Kubernetes
# build (30-40 min) holding the shared lock. An `all` building it at the same time only
# repeats the work: each build goes to its own temporary GOBIN, renamed into place.
mkdir -p "$BERTH_CACHE"
if [ "${1:-all}" = local-path ]; then exec 9>"$BERTH_CACHE/.build-local-path.lock"
else exec 9>"$BERTH_CACHE/.build.lock"; fi
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

case "${1:-all}" in
kubernetes) build_kubernetes ;;
sidecars) build_sidecars ;;
pause) build_pause ;;
helm) build_helm ;;
ginkgo) build_ginkgo ;;
local-path) build_local_path ;;
all) build_pause; build_helm; build_ginkgo; build_local_path; build_sidecars; build_kubernetes ;;
*) echo "usage: $0 [kubernetes|sidecars|pause|helm|ginkgo|local-path|all]" >&2; exit 2 ;;
esac

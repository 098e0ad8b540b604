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
# Usage: build.sh [kubernetes|sidecars|pause|helm|ginkgo|all]   (default all)
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

# One build at a time (a second caller waits, then finds the stamps).
mkdir -p "$BERTH_CACHE"
exec 9>"$BERTH_CACHE/.build.lock"
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

# go_install_tool BIN PACKAGE@VERSION: go install into a temporary GOBIN, then rename
# the binary to BIN (name-version), unless BIN is there already.
go_install_tool() {
	local bin=$1 pkg=$2
	[ -x "$bin" ] && return 0
	step "building ${pkg##*/}"
	mkdir -p "$BERTH_CACHE/tools"
	local tmp name=${pkg##*/}; name=${name%@*}
	tmp=$(mktemp -d "$BERTH_CACHE/tools/$name-build.XXXXXX")
	GOBIN=$tmp go install "$pkg"
	mv "$tmp/$name" "$bin"; rmdir "$tmp"
}

build_helm() { go_install_tool "$helm_bin" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"; }

build_ginkgo() {
	local v; v=$(ginkgo_version)
	go_install_tool "$BERTH_CACHE/tools/ginkgo-$v" "github.com/onsi/ginkgo/v2/ginkgo@$v"
}

case "${1:-all}" in
kubernetes) build_kubernetes ;;
sidecars) build_sidecars ;;
pause) build_pause ;;
helm) build_helm ;;
ginkgo) build_ginkgo ;;
all) build_pause; build_helm; build_ginkgo; build_sidecars; build_kubernetes ;;
*) echo "usage: $0 [kubernetes|sidecars|pause|helm|ginkgo|all]" >&2; exit 2 ;;
esac

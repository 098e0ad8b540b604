#!/usr/bin/env bash
# Assembles the local cluster's images without a Docker engine or any registry: each is
# a root filesystem laid out here, made an OCI image by umoci, written as a
# docker-archive by skopeo (which keeps the full name), ready for
# `ctr -n k8s.io images import`. Archives go to $BERTH_CACHE/images; only the Berth
# image is rebuilt on every run (it is cheap and follows the work tree).
#
#   registry.k8s.io/pause:3.10.2                       hack/k8s-tools/pause (static Go)
#   registry.k8s.io/e2e-test-images/busybox:1.37.0-2   Debian's busybox-static
#   registry.k8s.io/e2e-test-images/nginx:1.27.0-2     the same busybox (the suite only runs shells in it)
#   registry.k8s.io/e2e-test-images/agnhost:2.66.1     busybox + agnhost built from k8s.io/kubernetes
#   registry.k8s.io/sig-storage/csi-*                  the sidecars built by hack/k8s-tools/build.sh
#   registry.k8s.io/sig-storage/csi-snapshot-metadata:v1.0.0   built by build.sh snapshot-metadata
#   berth.local/snapshot-metadata-lister:v1.0.0        Berth's client of that sidecar (the e2e test's)
#   docker.io/rancher/local-path-provisioner:v0.0.30   its binary built by build.sh local-path (make e2e-bench)
#   quay.io/prometheus/prometheus:v3.16.0              the e2e tests' monitoring stack (test/e2e/prometheus),
#   quay.io/prometheus-operator/prometheus-operator:v0.85.0          its binaries built by
#   quay.io/prometheus-operator/prometheus-config-reloader:v0.85.0   build.sh prometheus
#   $BERTH_IMAGE                                       bin/csi-driver + hack/image-packages.txt (as the Dockerfile)
#
# Usage: hack/images.sh [berth|local-path|prometheus|snapshot-metadata|all]  (default all). Prints the
# archives' paths. local-path builds local-path-provisioner's image and the busybox its
# helper pods run; prometheus the three images of the monitoring stack.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
source "$here/versions.sh"
BERTH_IMAGE=${BERTH_IMAGE:-ghcr.io/berth-csi/berth:local}
out=$BERTH_CACHE/images
mkdir -p "$out"
work=$(mktemp -d /tmp/berth-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

for tool in umoci skopeo dpkg-deb apt-get; do
	command -v "$tool" >/dev/null || { echo "images.sh: $tool missing (hack/install-deps.sh --cluster installs it)" >&2; exit 1; }
done

# mkimage NAME ARCHIVE ROOTFS [--config.KEY VALUE]... ENTRYPOINT... : ROOTFS -> docker-archive
# ARCHIVE tagged NAME. The --config.* pairs go to umoci config as they are (user,
# workingdir, cmd...); files keep their owners (the script runs as root).
mkimage() {
	local name=$1 archive=$2 rootfs=$3; shift 3
	local oci="$work/oci-$RANDOM" bundle="$work/bundle-$RANDOM"
	umoci init --layout "$oci"
	umoci new --image "$oci:img"
	umoci unpack --image "$oci:img" "$bundle" >/dev/null
	cp -a "$rootfs/." "$bundle/rootfs/"
	umoci repack --image "$oci:img" "$bundle"
	local args=() a  # a is local: callers keep their own $a (an archive path) across mkimage
	while [[ ${1:-} == --config.* ]]; do args+=("$1" "$2"); shift 2; done
	for a in "$@"; do args+=(--config.entrypoint "$a"); done
	umoci config --image "$oci:img" --architecture amd64 --os linux \
		--config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${args[@]}"
	rm -f "$archive.tmp"
	skopeo copy --quiet "oci:$oci:img" "docker-archive:$archive.tmp:$name"
	mv "$archive.tmp" "$archive"
	rm -rf "$oci" "$bundle"
	echo "$archive"
}

# A minimal root: the directories and files a container expects.
baseroot() {
	local r=$1
	mkdir -p "$r"/{bin,etc,tmp,proc,sys,dev,root,var/run}
	chmod 1777 "$r/tmp"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$r/etc/passwd"
	printf 'root:x:0:\nnobody:x:65534:\n' > "$r/etc/group"
}

busyboxroot() {
	local r=$1
	baseroot "$r"
	cp /bin/busybox "$r/bin/busybox"
	for applet in $(/bin/busybox --list); do
		[ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"
	done
	mkdir -p "$r/usr"
	ln -sfn ../bin "$r/usr/bin"; ln -sfn bin "$r/sbin"; ln -sfn ../bin "$r/usr/sbin"
}

build_busybox_images() {
	[ -x /bin/busybox ] || { echo "images.sh: /bin/busybox missing (busybox-static)" >&2; exit 1; }
	[ -f "$out/busybox-1.37.0-2.tar" ] && return 0
	busyboxroot "$work/busybox"
	mkimage registry.k8s.io/e2e-test-images/busybox:1.37.0-2 "$out/busybox-1.37.0-2.tar" "$work/busybox" /bin/sh
	mkimage registry.k8s.io/e2e-test-images/nginx:1.27.0-2 "$out/nginx-1.27.0-2.tar" "$work/busybox" /bin/sh
}

# local-path-provisioner as upstream's package/Dockerfile lays it out (the binary at
# /usr/bin/local-path-provisioner, run by name), on the minimal root instead of alpine:
# it is a static Go binary that needs no file of the image (it talks to the API with
# the service account's CA, and its helper pods run in the busybox image).
build_local_path_image() {
	local bin=$BERTH_CACHE/tools/local-path-provisioner-$LOCAL_PATH_VERSION
	local a=$out/local-path-provisioner-$LOCAL_PATH_VERSION.tar
	build_busybox_images
	[ -f "$a" ] && return 0
	[ -x "$bin" ] || { echo "images.sh: $bin missing (hack/k8s-tools/build.sh local-path)" >&2; exit 1; }
	baseroot "$work/local-path"
	mkdir -p "$work/local-path/usr/bin"
	cp "$bin" "$work/local-path/usr/bin/local-path-provisioner"
	mkimage "docker.io/rancher/local-path-provisioner:$LOCAL_PATH_VERSION" "$a" "$work/local-path" \
		/usr/bin/local-path-provisioner
}

# The e2e monitoring stack (test/e2e/prometheus), laid out as upstream's Dockerfiles
# lay them out (prometheus: /bin/prometheus and /bin/promtool, /etc/prometheus with a
# default prometheus.yml, the data directory /prometheus owned by nobody and the
# working directory, USER nobody; the operator and the reloader: /bin/<name>, USER
# nobody), on the minimal root: all three are static Go binaries. The operator runs
# Prometheus with the data directory, its configuration and rules on volumes of the
# pod; the image's own /prometheus serves a Prometheus run without them.
build_prometheus_images() {
	local bin=$BERTH_CACHE/prometheus-$PROM_STACK_KEY a r
	[ -f "$bin/.done" ] || { echo "images.sh: $bin missing (hack/k8s-tools/build.sh prometheus)" >&2; exit 1; }
	a=$out/prometheus-$PROMETHEUS_TAG.tar
	if [ ! -f "$a" ]; then
		r=$work/prometheus
		baseroot "$r"
		mkdir -p "$r/etc/prometheus" "$r/prometheus"
		cp "$bin/prometheus" "$bin/promtool" "$r/bin/"
		cat > "$r/etc/prometheus/prometheus.yml" <<-'YAML'
		# The image's default configuration: Prometheus scraping itself (as upstream's).
		global:
		  scrape_interval: 15s
		scrape_configs:
		- job_name: prometheus
		  static_configs:
		  - targets: ["localhost:9090"]
		YAML
		chown -R 65534:65534 "$r/etc/prometheus" "$r/prometheus"
		mkimage "quay.io/prometheus/prometheus:$PROMETHEUS_TAG" "$a" "$r" \
			--config.user 65534 --config.workingdir /prometheus --config.exposedports 9090/tcp \
			--config.volume /prometheus \
			--config.cmd --config.file=/etc/prometheus/prometheus.yml --config.cmd --storage.tsdb.path=/prometheus \
			/bin/prometheus
	fi
	local pair name exe
	for pair in prometheus-operator:operator prometheus-config-reloader:prometheus-config-reloader; do
		name=${pair%%:*} exe=${pair#*:}
		a=$out/$name-$PROM_OPERATOR_VERSION.tar
		[ -f "$a" ] && continue
		r=$work/$name
		baseroot "$r"
		cp "$bin/$exe" "$r/bin/$exe"
		mkimage "quay.io/prometheus-operator/$name:$PROM_OPERATOR_VERSION" "$a" "$r" --config.user 65534 "/bin/$exe"
	done
}

build_static_images() {
	local k8s=$BERTH_CACHE/k8s-$K8S_VERSION sc=$BERTH_CACHE/sidecars-$SIDECARS_KEY pause=$BERTH_CACHE/pause-$PAUSE_KEY
	local a=$out/pause-$PAUSE_KEY.tar
	if [ ! -f "$a" ]; then
		mkdir -p "$work/pause"; cp "$pause/pause" "$work/pause/pause"
		mkimage registry.k8s.io/pause:3.10.2 "$a" "$work/pause" /pause
	fi
	build_busybox_images
	a=$out/agnhost-2.66.1-$K8S_VERSION.tar
	if [ ! -f "$a" ]; then
		busyboxroot "$work/agnhost"; cp "$k8s/agnhost" "$work/agnhost/agnhost"
		mkimage registry.k8s.io/e2e-test-images/agnhost:2.66.1 "$a" "$work/agnhost" /agnhost
	fi
	local pair bin ver
	for pair in csi-provisioner:$PROVISIONER_VERSION csi-resizer:$RESIZER_VERSION \
		csi-snapshotter:$SNAPSHOTTER_VERSION snapshot-controller:$SNAPSHOTTER_VERSION; do
		bin=${pair%%:*} ver=${pair#*:}
		a=$out/$bin-$ver.tar
		[ -f "$a" ] && continue
		baseroot "$work/$bin"; cp "$sc/$bin" "$work/$bin/$bin"
		mkimage "registry.k8s.io/sig-storage/$bin:$ver" "$a" "$work/$bin" "/$bin"
	done
}

# The external-snapshot-metadata sidecar, as upstream's Dockerfile lays it out (the
# binary at /csi-snapshot-metadata, the entrypoint) on the minimal root instead of
# distroless/static: a static Go binary that reads only its TLS files and the
# service account's, mounted into the pod. Beside it, Berth's client of the sidecar
# (/snapshot-metadata-lister), which TestSnapshotMetadata runs as a backup
# application would.
build_snapshot_metadata_images() {
	local bin=$BERTH_CACHE/snapshot-metadata-$SNAPSHOT_METADATA_VERSION
	local a=$out/csi-snapshot-metadata-$SNAPSHOT_METADATA_VERSION.tar
	local l=$out/snapshot-metadata-lister-$SNAPSHOT_METADATA_VERSION.tar
	[ -f "$a" ] && [ -f "$l" ] && return 0
	[ -f "$bin/.done" ] || { echo "images.sh: $bin missing (hack/k8s-tools/build.sh snapshot-metadata)" >&2; exit 1; }
	baseroot "$work/snapshot-metadata"
	cp "$bin/csi-snapshot-metadata" "$work/snapshot-metadata/csi-snapshot-metadata"
	mkimage "registry.k8s.io/sig-storage/csi-snapshot-metadata:$SNAPSHOT_METADATA_VERSION" "$a" "$work/snapshot-metadata" \
		/csi-snapshot-metadata
	baseroot "$work/snapshot-metadata-lister"
	cp "$bin/snapshot-metadata-lister" "$work/snapshot-metadata-lister/snapshot-metadata-lister"
	mkimage "berth.local/snapshot-metadata-lister:$SNAPSHOT_METADATA_VERSION" "$l" "$work/snapshot-metadata-lister" \
		/snapshot-metadata-lister
}

# The Berth image: the same packages the Dockerfile installs, with their dependencies,
# unpacked by dpkg -x into a root (no maintainer scripts run; none are needed to run
# mkfs, resize2fs, xfs_growfs, blkid or losetup).
build_berth_image() {
	[ -x "$root/bin/csi-driver" ] || { echo "images.sh: bin/csi-driver missing (make build)" >&2; exit 1; }
	local r=$work/berth debs=$BERTH_CACHE/debs
	baseroot "$r"
	mkdir -p "$debs"
	mapfile -t wanted < <(grep -v '^#' "$here/image-packages.txt" | sed '/^$/d')
	mapfile -t all < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances "${wanted[@]}" | grep -E '^[a-z0-9]' | sort -u)
	(cd "$debs" && for p in "${all[@]}"; do
		ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download -q "$p" >/dev/null 2>&1 || { echo "apt-get download $p failed" >&2; exit 1; }
	done)
	for p in "${all[@]}"; do dpkg-deb -x "$(ls "$debs/${p}"_*.deb | head -1)" "$r"; done
	rm -rf "$r/usr/share/doc" "$r/usr/share/man" "$r/usr/share/locale" "$r/usr/share/info"
	cp "$root/bin/csi-driver" "$r/csi-driver"
	mkimage "$BERTH_IMAGE" "$out/berth.tar" "$r" /csi-driver
}

case "${1:-all}" in
berth) build_berth_image ;;
local-path) build_local_path_image ;;
prometheus) build_prometheus_images ;;
snapshot-metadata) build_snapshot_metadata_images ;;
all) build_static_images; build_local_path_image; build_prometheus_images; build_snapshot_metadata_images; build_berth_image ;;
*) echo "usage: $0 [berth|local-path|prometheus|snapshot-metadata|all]" >&2; exit 2 ;;
esac

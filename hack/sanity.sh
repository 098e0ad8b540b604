#!/usr/bin/env bash
# Runs the csi-sanity binary against the built csi-driver over a real unix socket,
# on a dir pool in a temporary directory, beside a second dir pool on an XFS with
# reflinks made in a loop file: with it the driver advertises group snapshots, and
# csi-sanity's GroupController specs run. Stops the driver by PID and unmounts
# anything left under its directory (the XFS included, whose loop device goes with
# it), also when the run fails.
set -euo pipefail
driver=$(realpath "$1")
sanity=$(realpath "$2")
work=$(mktemp -d /tmp/berth-sanity.XXXXXX)
pid=""
cleanup() {
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"; wait "$pid" || true
	fi
	# Anything still mounted under the kubelet dir (a failed spec) is unmounted.
	{ grep -o " $work/[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
	rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/kubelet/pods" "$work/xfs"
truncate -s 512M "$work/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$work/xfs.img"
mount -o loop "$work/xfs.img" "$work/xfs"
cat > "$work/pools.yaml" <<YAML
pools:
- name: default
  path: $work/pool
  kind: dir
- name: reflink
  path: $work/xfs/pool
  kind: dir
YAML
"$driver" --endpoint "unix://$work/csi.sock" --node-id sanity-node --config "$work/pools.yaml" \
	--kubelet-dir "$work/kubelet" -v 2 2>"$work/driver.log" &
pid=$!
for _ in $(seq 100); do [ -S "$work/csi.sock" ] && break; sleep 0.1; done
[ -S "$work/csi.sock" ] || { cat "$work/driver.log"; echo "driver did not create its socket" >&2; exit 1; }

# ModifyVolume's specs set a per-pod I/O limit (the dir pools lie on block devices).
echo 'readBytesPerSecond: "10Mi"' > "$work/mutable.yaml"
# Skipped specs are those csi-sanity skips itself for capabilities Berth does not
# advertise (see test/sanity/sanity_test.go for the reasons).
if ! "$sanity" --csi.endpoint "unix://$work/csi.sock" \
	--csi.mountdir "$work/kubelet/pods/target" --csi.stagingdir "$work/kubelet/pods/staging" \
	--csi.testvolumesize $((64 << 20)) --csi.testvolumemutableparameters "$work/mutable.yaml" --ginkgo.no-color; then
	echo "--- driver log (last 50 lines)"; tail -50 "$work/driver.log"
	exit 1
fi

#!/usr/bin/env bash
# PID 1 of a further node of the local cluster: hack/cluster-up.sh starts it inside
# network, mount, PID and UTS namespaces of its own (cluster-node.sh NAME INDEX), so
# that the node sees what a separate machine would:
#   - its own sysfs (its network devices) with this machine's cgroup hierarchies;
#   - its own /var/lib/kubelet, /var/lib/berth-adopt and /var/log/{pods,containers},
#     bind-mounted from $CLUSTER_DIR/nodes/NAME/fs over this machine's, its own disk at
#     /var/lib/berth (rshared): an XFS file system in $CLUSTER_DIR/nodes/NAME/disk.img,
#     on a loop device that is detached when the node's mount namespace goes;
#   - its own /var/lib/berth-shared (rshared), where it mounts the cluster's shared
#     pool with a GlusterFS client of its own (hack/cluster-gluster.sh);
#   - its own /run (a tmpfs);
#   - its own containerd and kubelet, the kubelet restarted when it exits (as systemd
#     would); SIGTERM stops both.
# Here PID 1 is this script, in the node's mount namespace: the pods that enter "the
# host" (hostPID, nsenter --mount=/proc/1/ns/mnt) land in the node.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/cluster-lib.sh"
name=$1 index=$2
dir=$(node_dir "$name")
log() { echo "[$(date +%T)] $name: $*"; }

hostname "$name"
# An /etc/hosts of its own that names the cluster's addresses: glusterd looks up the
# name of each peer and client address, and without an answer in files it waits for
# the DNS of this machine's resolv.conf, unreachable from here, 10 s a time (40 s of
# the shared pool's setup).
mkdir -p "$dir"
{
	cat /etc/hosts
	echo "$(node_addr 1) berth-cluster-host"
	for i in $(seq 2 16); do echo "$(node_addr "$i") $(node_name "$i")"; done
} >"$dir/hosts"
mount --bind "$dir/hosts" /etc/hosts
# The mounts this namespace copied from the machine are slaves (unshare --propagation
# slave): what is mounted or unmounted here never reaches the machine.
mkdir -p "$dir/cgroup-move"
mount --rbind /sys/fs/cgroup "$dir/cgroup-move"
mount -t sysfs sysfs /sys
mount --move "$dir/cgroup-move" /sys/fs/cgroup
for d in "${NODE_OWN_DIRS[@]}"; do
	mkdir -p "$dir/fs$d" "$d"
	while mountpoint -q "$d"; do umount -l "$d"; done
	mount --bind "$dir/fs$d" "$d"
done
disk=$dir/disk.img
if [ ! -f "$disk" ]; then
	truncate -s "$(node_disk_mb "$index")M" "$disk.tmp"
	mkfs.xfs -q "$disk.tmp"
	mv "$disk.tmp" "$disk"
fi
while mountpoint -q /var/lib/berth; do umount -l /var/lib/berth; done
mount -o loop "$disk" /var/lib/berth
mount --make-rshared "$KUBELET_DIR"
mount --make-rshared /var/lib/berth
mount --make-rshared "$SHARED_POOLS_DIR"
# A /run of its own, gone with the node: the pods' network namespaces (bind-mounted
# under /run/netns by containerd), the shims' sockets, a glusterd's socket.
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/netns /run/lock
ip link set lo up
sysctl -q -w net.ipv4.ip_forward=1

sock=$(node_sock "$name")
write_cni_conf "$dir/cni" "$(pod_cidr "$index")"
write_containerd_conf "$dir/containerd.toml" "$dir/containerd" /run/containerd-state "$sock" "$dir/cni"
write_kubelet_conf "$dir/kubelet.yaml" "$(node_addr "$index")" "$CGROUP_ROOT-$name" "$sock"

for c in /sys/fs/cgroup/*/; do
	[ -L "${c%/}" ] && continue
	mkdir -p "$c$CGROUP_ROOT-$name"
done
containerd --config "$dir/containerd.toml" >"$CLUSTER_DIR/logs/$name-containerd.log" 2>&1 &
ctd=$!
stopping=0 kubelet=""
stop() {
	stopping=1
	log "stopping"
	[ -n "$kubelet" ] && kill -TERM "$kubelet" 2>/dev/null
	[ -n "$kubelet" ] && wait "$kubelet" 2>/dev/null
	kill -TERM "$ctd" 2>/dev/null
	wait "$ctd" 2>/dev/null
	exit 0
}
trap stop TERM INT
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
log "containerd up"
read -r -a args <<<"$(kubelet_args "$name" "$(node_addr "$index")" "$dir/kubelet.yaml")"
while [ "$stopping" = 0 ]; do
	"${args[@]}" >>"$CLUSTER_DIR/logs/$name-kubelet.log" 2>&1 &
	kubelet=$!
	echo "$kubelet" > "$dir/kubelet.pid" # as seen in the node's PID namespace
	log "kubelet started (pid $kubelet here)"
	wait "$kubelet" || true
	[ "$stopping" = 1 ] && break
	log "kubelet exited; restarting in 2s"
	sleep 2
done

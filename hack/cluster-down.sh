#!/usr/bin/env bash
# Tears the local cluster down and leaves the machine as it was before cluster-up:
# pods deleted, the further nodes stopped (their kubelet and containerd, then every
# process of their PID namespace) and their network namespaces deleted, the kubelet
# stopped, sandboxes and containers removed, control plane,
# containerd and etcd stopped by PID, mounts under the kubelet root unmounted, the
# bridge, network namespaces, cgroups and the kubelet's iptables chains removed, the
# sysctls restored, the cluster's state directory deleted. Built binaries and images
# stay cached in $BERTH_CACHE. Idempotent: safe to run when nothing is up.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/cluster-lib.sh"
[ "$(id -u)" = 0 ] || { echo "cluster-down: run as root" >&2; exit 1; }

# thaw_frozen: thaws every frozen cgroup of the cluster. runc kills a container by
# freezing its cgroup, signalling every process and thawing it; a runc stopped in
# between (its node torn down under it) leaves the cgroup frozen, and its processes,
# SIGKILL pending, never exit: neither does the node's init, which waits for every
# process of its PID namespace. Seen once: a sidecar left frozen after the pods'
# deletion raced the node's stop, and the next cluster-up could not make the node.
thaw_frozen() {
	local f
	for f in /sys/fs/cgroup/freezer/"$CGROUP_ROOT"*/; do
		[ -d "$f" ] || continue
		find "$f" -name freezer.state -exec grep -l FROZEN {} + 2>/dev/null | while read -r f; do echo THAWED >"$f"; done
	done
	for f in /sys/fs/cgroup/"$CGROUP_ROOT"*/; do
		[ -d "$f" ] || continue
		find "$f" -name cgroup.freeze -exec grep -lx 1 {} + 2>/dev/null | while read -r f; do echo 0 >"$f"; done
	done
}

# stop NAME: SIGTERM by PID, SIGKILL after 20 s (the cluster's frozen cgroups thawed
# first), then up to 10 s for it to be gone.
stop() {
	local f pid; f=$(pidfile "$1")
	[ -f "$f" ] || return 0
	pid=$(cat "$f")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
		if kill -0 "$pid" 2>/dev/null; then
			thaw_frozen
			kill -KILL "$pid" 2>/dev/null
			for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
			kill -0 "$pid" 2>/dev/null && echo "cluster-down: $1 (pid $pid) is still there" >&2
		fi
	fi
	rm -f "$f"
}

if running kube-apiserver && running kubelet; then
	step "Deleting pods (60 s at most)"
	kc delete pods --all --all-namespaces --grace-period=5 --timeout=60s --wait=true >/dev/null 2>&1 || true
fi

step "Stopping the further nodes and the kubelet"
# A node's init stops its kubelet and containerd on SIGTERM; once it exits, the kernel
# ends every other process of the node's PID namespace (shims, containers), and its
# mount namespace, with the pods' mounts, goes with the last of them.
thaw_frozen
for f in "$CLUSTER_DIR"/run/node-*.pid; do
	[ -e "$f" ] || continue
	n=$(basename "$f" .pid); stop "$n" &
done
wait
for ns in /run/netns/"$NODE_NAME_PREFIX"*; do
	[ -e "$ns" ] && ip netns del "$(basename "$ns")"
done
stop kubelet

if running containerd; then
	step "Removing sandboxes and containers"
	c=(ctr --address "$CONTAINERD_SOCK" -n k8s.io)
	for id in $("${c[@]}" tasks ls -q 2>/dev/null); do
		"${c[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1
	done
	sleep 1
	for id in $("${c[@]}" tasks ls -q 2>/dev/null); do "${c[@]}" tasks rm -f "$id" >/dev/null 2>&1; done
	for id in $("${c[@]}" containers ls -q 2>/dev/null); do "${c[@]}" containers rm "$id" >/dev/null 2>&1; done
fi

step "Stopping the control plane, containerd and etcd"
for comp in kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do stop "$comp"; done
# containerd's shims outlive it: stop those serving this cluster's containerd, by PID.
for d in /proc/[0-9]*; do
	if tr '\0' ' ' < "$d/cmdline" 2>/dev/null | grep -q -- "-address $CONTAINERD_SOCK"; then
		kill -KILL "${d#/proc/}" 2>/dev/null
	fi
done

step "Unmounting"
umount_under() {
	local m
	for _ in 1 2 3; do
		m=$(awk -v p="$1" '$5 == p || index($5, p "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
		[ -z "$m" ] && return 0
		while read -r x; do umount "$x" 2>/dev/null || umount -l "$x" 2>/dev/null; done <<<"$m"
	done
}
umount_under "$KUBELET_DIR"
umount_under "$SHARED_POOLS_DIR"
umount_under "$CONTAINERD_RUN"
umount_under "$CLUSTER_DIR"
for ns in /run/netns/cni-*; do
	[ -e "$ns" ] || continue
	umount "$ns" 2>/dev/null; rm -f "$ns"
done
# Only when empty (the CNI plugins and ip netns create it; ip netns mounts it).
if [ -d /run/netns ] && [ -z "$(ls -A /run/netns)" ]; then
	mountpoint -q /run/netns && umount /run/netns
	rmdir /run/netns 2>/dev/null
fi

step "Removing the bridge, cgroups and the kubelet's iptables chains"
ip link del "$BRIDGE" 2>/dev/null
ip link del "$NODE_BRIDGE" 2>/dev/null # with it, the routes to the nodes' pods
for c in /sys/fs/cgroup/*/"$CGROUP_ROOT" /sys/fs/cgroup/*/"$CGROUP_ROOT"-*; do
	[ -d "$c" ] || continue
	find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
done
for ipt in iptables ip6tables; do
	command -v "$ipt" >/dev/null || continue
	for table in filter nat mangle; do
		# Rules jumping to a KUBE- chain first, then the chains themselves.
		"$ipt-save" -t "$table" 2>/dev/null | grep -E '^-A .* -j KUBE-' | while read -r rule; do
			eval "$ipt -t $table -D ${rule#-A }" 2>/dev/null
		done
		for chain in $("$ipt-save" -t "$table" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\).*/\1/p'); do
			"$ipt" -t "$table" -F "$chain" 2>/dev/null; "$ipt" -t "$table" -X "$chain" 2>/dev/null
		done
	done
done
# cluster-up's own rules: the nodes' network closed to other interfaces, and routed.
iptables -D INPUT -d "$NODE_NET.0/24" -j BERTH-NODES-IN 2>/dev/null
iptables -F BERTH-NODES-IN 2>/dev/null && iptables -X BERTH-NODES-IN
iptables -D FORWARD -i "$NODE_BRIDGE" -j ACCEPT 2>/dev/null
iptables -D FORWARD -o "$NODE_BRIDGE" -j ACCEPT 2>/dev/null

step "Restoring sysctls and removing the cluster's state"
if [ -f "$CLUSTER_DIR/sysctls.saved" ]; then
	sed 's/ = /=/' "$CLUSTER_DIR/sysctls.saved" | while read -r kv; do sysctl -q -w "$kv" 2>/dev/null; done
fi
# Loop devices of image pools in Berth's default location, and the further nodes'
# disks (both detach themselves once unmounted everywhere: this catches the rest).
losetup -nO NAME,BACK-FILE 2>/dev/null | awk -v n="$CLUSTER_DIR/nodes/" '$2 ~ "^/var/lib/berth/" || index($2, n) == 1 {print $1}' |
	while read -r dev; do losetup -d "$dev"; done
created_kubelet=0 created_berth=0
[ -f "$CLUSTER_DIR/created-kubelet-dir" ] && created_kubelet=1
[ -f "$CLUSTER_DIR/created-var-lib-berth" ] && created_berth=1
[ -f "$CLUSTER_DIR/created-adopt-root" ] && rm -rf /var/lib/berth-adopt
[ -f "$CLUSTER_DIR/created-pod-logs" ] && rm -rf /var/log/pods /var/log/containers
[ -f "$CLUSTER_DIR/created-local-path-root" ] && rm -rf /var/lib/berth-lp
if [ -f "$CLUSTER_DIR/created-shared-pools-dir" ] && ! grep -q " $SHARED_POOLS_DIR[ /]" /proc/self/mountinfo; then
	rm -rf "$SHARED_POOLS_DIR"
fi
rm -rf "$CLUSTER_DIR" "$CONTAINERD_RUN"
[ "$created_berth" = 1 ] && ! grep -q " /var/lib/berth" /proc/self/mountinfo && rm -rf /var/lib/berth
# The kubelet root is removed (if cluster-up made it) once nothing is mounted under it.
if ! awk -v p="$KUBELET_DIR" 'index($5, p) == 1 {f=1} END {exit !f}' /proc/self/mountinfo; then
	[ "$created_kubelet" = 1 ] && rm -rf "$KUBELET_DIR"
else
	echo "cluster-down: something is still mounted under $KUBELET_DIR:" >&2
	awk -v p="$KUBELET_DIR" 'index($5, p) == 1 {print "  " $5}' /proc/self/mountinfo >&2
	exit 1
fi
finish "Cluster removed"

#!/usr/bin/env bash
# The local cluster's shared pool, as an operator would set one up on separate
# machines: a glusterd on node 2 and node 3 (in their namespaces, on their addresses,
# the bricks on their own disks), a GlusterFS volume replicated across the two (one
# brick on node 2 when NODES=2), mounted by every node, this machine included, with a
# GlusterFS client of its own at $GLUSTER_MOUNT. Idempotent. Run by hack/cluster-up.sh
# once the nodes are up; nothing to do with NODES=1. The daemons and the nodes' clients
# go with their nodes; hack/cluster-down.sh unmounts this machine's.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/cluster-lib.sh"
[ "$NODES" -ge 2 ] || exit 0
command -v glusterd >/dev/null || { echo "cluster-gluster: glusterd missing (hack/install-deps.sh installs glusterfs-server)" >&2; exit 1; }

servers=(2)
[ "$NODES" -ge 3 ] && servers=(2 3)
first=$(node_name "${servers[0]}")
cli() { node_enter "$first" gluster --mode=script "$@"; }

for i in "${servers[@]}"; do
	name=$(node_name "$i")
	# Its state in the node's directory, its sockets in the node's own /run.
	state=$(node_dir "$name")/glusterd
	mkdir -p "$state"
	node_enter "$name" mkdir -p /var/lib/berth/gluster-bricks
	if ! node_enter "$name" sh -c 'test -f /run/glusterd.pid && kill -0 "$(cat /run/glusterd.pid)"' 2>/dev/null; then
		node_enter "$name" glusterd --xlator-option "management.working-directory=$state" \
			--xlator-option management.run-directory=/run/gluster \
			--xlator-option "management.transport.socket.bind-address=$(node_addr "$i")" \
			-l "$CLUSTER_DIR/logs/$name-glusterd.log" -p /run/glusterd.pid
	fi
done
# Both daemons start at once; then each is waited for.
for i in "${servers[@]}"; do
	name=$(node_name "$i")
	for _ in $(seq 100); do node_enter "$name" gluster --mode=script volume list >/dev/null 2>&1 && break; sleep 0.2; done
done

bricks=()
for i in "${servers[@]}"; do
	[ "$i" = "${servers[0]}" ] || cli peer probe "$(node_addr "$i")" >/dev/null
	bricks+=("$(node_addr "$i"):/var/lib/berth/gluster-bricks/$GLUSTER_VOLUME")
done
if [ ${#servers[@]} -gt 1 ]; then
	for _ in $(seq 100); do cli peer status | grep -q "Peer in Cluster (Connected)" && break; sleep 0.2; done
fi
if ! cli volume info "$GLUSTER_VOLUME" >/dev/null 2>&1; then
	replica=()
	[ ${#servers[@]} -gt 1 ] && replica=(replica ${#servers[@]})
	# force: replica 2 (GlusterFS warns of split brain; an arbiter would need a third node).
	cli volume create "$GLUSTER_VOLUME" "${replica[@]}" "${bricks[@]}" force >/dev/null
fi
cli volume info "$GLUSTER_VOLUME" | grep -q "^Status: Started" || cli volume start "$GLUSTER_VOLUME" >/dev/null

# Every node mounts it itself, from its own address's point of view; the nodes at
# once (each mount waits for its client to fetch the volume's layout).
source_of() { echo "$(node_addr "${servers[0]}"):/$GLUSTER_VOLUME"; }
mounts=()
for i in $(seq 1 "$NODES"); do
	name=$(node_name "$i")
	run=()
	[ "$i" = 1 ] || run=(node_enter "$name")
	if ! "${run[@]}" mountpoint -q "$GLUSTER_MOUNT"; then
		"${run[@]}" mkdir -p "$GLUSTER_MOUNT"
		"${run[@]}" mount -t glusterfs "$(source_of)" "$GLUSTER_MOUNT" &
		mounts+=($!)
	fi
done
for pid in "${mounts[@]}"; do wait "$pid"; done
echo "      GlusterFS volume $GLUSTER_VOLUME (${bricks[*]}) mounted at $GLUSTER_MOUNT on ${NODES} nodes"

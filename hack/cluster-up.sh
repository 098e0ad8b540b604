#!/usr/bin/env bash
# Brings up a Kubernetes cluster of NODES nodes (default 3) on this machine from the Go
# module proxy and Debian packages alone: etcd, the control plane and a kubelet with its
# containerd on this machine (node "localhost"), and NODES-1 further nodes
# ("berth-node-2", ...), each a kubelet with a containerd of its own in namespaces of
# its own (hack/cluster-node.sh), on a bridge where this machine is 10.89.0.1 (the API
# server's address) and node i is 10.89.0.i. Images are imported locally into every
# node (a missing image fails at once: nothing is ever pulled). Idempotent: a component
# or node already running is left alone, and a second run with a larger NODES adds
# nodes. hack/cluster-down.sh undoes everything.
#   KUBECONFIG=/var/lib/berth-cluster/admin.kubeconfig
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
source "$here/cluster-lib.sh"
[ "$(id -u)" = 0 ] || { echo "cluster-up: run as root" >&2; exit 1; }

step "Checking free disk space"
need_gb=3
[ -f "$K8S_BIN/.done" ] && [ -f "$BERTH_CACHE/sidecars-$SIDECARS_KEY/.done" ] &&
	[ -f "$BERTH_CACHE/prometheus-$PROM_STACK_KEY/.done" ] || need_gb=15
mkdir -p "$BERTH_CACHE"
free_gb=$(( $(df --output=avail -k "$BERTH_CACHE" | tail -1) / 1024 / 1024 ))
if [ "$free_gb" -lt "$need_gb" ]; then
	echo "cluster-up: $free_gb GB free under $BERTH_CACHE, need about $need_gb GB (the Kubernetes build and images); stopping" >&2
	exit 3
fi
echo "      $free_gb GB free, $need_gb GB needed"

step "Installing Debian packages (only those missing)"
pkgs=(etcd-server containerd runc containernetworking-plugins busybox-static umoci skopeo iptables conntrack openssl
	xfsprogs glusterfs-server glusterfs-client)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

step "Building Kubernetes $K8S_VERSION, the sidecars, pause, helm and the e2e monitoring stack (cached in $BERTH_CACHE)"
"$here/k8s-tools/build.sh" all

step "Building csi-driver and the images"
make -C "$root" --no-print-directory build >/dev/null
"$here/images.sh" all >/dev/null

mkdir -p "$CLUSTER_DIR"/{run,logs,pki,cni}
step "The nodes' network: bridge $NODE_BRIDGE, this machine at $API_ADDR"
if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
	ip link add "$NODE_BRIDGE" type bridge
	ip addr add "$API_ADDR/24" dev "$NODE_BRIDGE"
fi
ip link set "$NODE_BRIDGE" up
# The API server and the kubelets listen on the bridge's addresses: only the nodes'
# bridge, this machine's pods' bridge and this machine itself may reach them, never
# another interface.
if ! iptables -n -L BERTH-NODES-IN >/dev/null 2>&1; then
	iptables -N BERTH-NODES-IN
	iptables -A BERTH-NODES-IN -i lo -j RETURN
	iptables -A BERTH-NODES-IN -i "$NODE_BRIDGE" -j RETURN
	iptables -A BERTH-NODES-IN -i "$BRIDGE" -j RETURN # this machine's pods
	iptables -A BERTH-NODES-IN -j DROP
fi
iptables -C INPUT -d "$NODE_NET.0/24" -j BERTH-NODES-IN 2>/dev/null || iptables -I INPUT -d "$NODE_NET.0/24" -j BERTH-NODES-IN
# Node traffic is routed by this machine (pods of one node reach those of another).
iptables -C FORWARD -i "$NODE_BRIDGE" -j ACCEPT 2>/dev/null || iptables -I FORWARD -i "$NODE_BRIDGE" -j ACCEPT
iptables -C FORWARD -o "$NODE_BRIDGE" -j ACCEPT 2>/dev/null || iptables -I FORWARD -o "$NODE_BRIDGE" -j ACCEPT

step "Certificates"
pki=$CLUSTER_DIR/pki
if [ ! -f "$pki/admin.crt" ]; then
	(cd "$pki"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj /CN=berth-cluster-ca 2>/dev/null
	openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
	cat > apiserver.ext <<EXT
subjectAltName=IP:127.0.0.1,IP:$API_ADDR,IP:${SERVICE_CIDR%0/24}1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EXT
	openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
	openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile apiserver.ext -out apiserver.crt 2>/dev/null
	echo "extendedKeyUsage=clientAuth" > client.ext
	openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=berth-admin" 2>/dev/null
	openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile client.ext -out admin.crt 2>/dev/null)
fi
cat > "$KUBECONFIG_FILE" <<KC
apiVersion: v1
kind: Config
clusters:
- name: berth
  cluster: {server: "https://$API_ADDR:6443", certificate-authority: $pki/ca.crt}
users:
- name: admin
  user: {client-certificate: $pki/admin.crt, client-key: $pki/admin.key}
contexts:
- name: berth
  context: {cluster: berth, user: admin}
current-context: berth
KC

# import_images SOCK STAMP: every image of $BERTH_CACHE/images into a node's containerd,
# but those STAMP lists as imported already (by name, size and modification time):
# all that images.sh all makes, the e2e monitoring stack's three (Prometheus,
# prometheus-operator, its config reloader) among them.
import_images() {
	local a key
	touch "$2"
	for a in "$BERTH_CACHE"/images/*.tar; do
		key=$(stat -c '%n %s %Y' "$a")
		grep -qxF "$key" "$2" && continue
		ctr --address "$1" -n k8s.io images import --no-unpack=false "$a" >/dev/null
		echo "$key" >> "$2"
	done
}
# start NAME CMD...: runs CMD in the background with its log and PID file, unless running.
start() {
	local name=$1; shift
	if running "$name"; then echo "      $name already running (pid $(cat "$(pidfile "$name")"))"; return; fi
	nohup "$@" >"$CLUSTER_DIR/logs/$name.log" 2>&1 </dev/null &
	echo $! > "$(pidfile "$name")"
}
# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds.
wait_for() {
	local what=$1 deadline=$(($(date +%s) + $2)) secs=$2; shift 2
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -lt "$deadline" ] || break
		sleep 0.2
	done
	"$@" >/dev/null 2>&1 && return 0
	echo "cluster-up: $what not ready after ${secs}s; see $CLUSTER_DIR/logs" >&2
	exit 1
}

# start_node I: the further node I in namespaces of its own, on the bridge, with its
# images (a node already running is left alone, its images completed).
start_node() {
	local i=$1 name addr init parent
	name=$(node_name "$i") addr=$(node_addr "$i")
	if ! running "node-$name"; then
		mkdir -p "$(node_dir "$name")"
		[ -e "/run/netns/$name" ] || ip netns add "$name"
		if ! ip -n "$name" link show eth0 >/dev/null 2>&1; then
			ip link add "bn$i" type veth peer name eth0 netns "$name"
			ip link set "bn$i" master "$NODE_BRIDGE" up
			ip -n "$name" addr add "$addr/24" dev eth0
			ip -n "$name" link set eth0 up
			ip -n "$name" route add default via "$API_ADDR"
		fi
		ip route replace "$(pod_cidr "$i")" via "$addr"
		nohup nsenter --net="/run/netns/$name" unshare --pid --fork --mount --uts --propagation slave --mount-proc \
			"$here/cluster-node.sh" "$name" "$i" >"$CLUSTER_DIR/logs/$name.log" 2>&1 </dev/null &
		parent=$!
		for _ in $(seq 50); do
			init=$(pgrep -P "$parent" | head -1 || true)
			[ -n "$init" ] && break
			sleep 0.1
		done
		[ -n "$init" ] || return 1
		echo "$init" > "$(pidfile "node-$name")"
	fi
	for _ in $(seq 100); do [ -S "$(node_sock "$name")" ] && break; sleep 0.2; done
	import_images "$(node_sock "$name")" "$(node_dir "$name")/imported"
}

step "Saving sysctls and starting etcd"
[ -f "$CLUSTER_DIR/sysctls.saved" ] || sysctl -e "${SAVED_SYSCTLS[@]}" > "$CLUSTER_DIR/sysctls.saved"
start etcd etcd --name berth --data-dir "$CLUSTER_DIR/etcd" \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster berth=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
wait_for etcd 30 busybox wget -q -O /dev/null http://127.0.0.1:2379/health

step "Preparing the kubelet root and cgroups"
# Directories cluster-down may delete only if this script created them.
[ -e "$KUBELET_DIR" ] || touch "$CLUSTER_DIR/created-kubelet-dir"
[ -e /var/lib/berth ] || touch "$CLUSTER_DIR/created-var-lib-berth"
[ -e /var/lib/berth-adopt ] || touch "$CLUSTER_DIR/created-adopt-root"
[ -e /var/log/pods ] || touch "$CLUSTER_DIR/created-pod-logs" # the kubelets make it
[ -e /var/lib/berth-lp ] || touch "$CLUSTER_DIR/created-local-path-root" # make e2e-bench's local-path-provisioner
mkdir -p "$KUBELET_DIR" /var/lib/berth /var/lib/berth-adopt
if ! findmnt -n --mountpoint "$KUBELET_DIR" >/dev/null; then
	mount --bind "$KUBELET_DIR" "$KUBELET_DIR"
fi
mount --make-rshared "$KUBELET_DIR"
[ -e "$SHARED_POOLS_DIR" ] || touch "$CLUSTER_DIR/created-shared-pools-dir"
mkdir -p "$SHARED_POOLS_DIR"
if ! findmnt -n --mountpoint "$SHARED_POOLS_DIR" >/dev/null; then
	mount --bind "$SHARED_POOLS_DIR" "$SHARED_POOLS_DIR"
fi
mount --make-rshared "$SHARED_POOLS_DIR"
for c in /sys/fs/cgroup/*/; do
	[ -L "${c%/}" ] && continue
	mkdir -p "$c$CGROUP_ROOT"
done

step "Starting containerd (no registry: a missing image fails at once)"
mkdir -p "$CONTAINERD_RUN" "$CLUSTER_DIR/containerd"
write_cni_conf "$CLUSTER_DIR/cni" "$(pod_cidr 1)"
write_containerd_conf "$CLUSTER_DIR/containerd/config.toml" "$CLUSTER_DIR/containerd/root" \
	"$CONTAINERD_RUN/state" "$CONTAINERD_SOCK" "$CLUSTER_DIR/cni"
# containerd runs in a PID namespace of its own, under a bash that reaps the orphaned
# shims, with its own /proc: there PID 1 is that bash, which the pods that run as
# "the host" (hostPID, nsenter --mount=/proc/1/ns/mnt, as the e2e suite's HostExec
# does) can enter. On this machine the real PID 1 belongs to the sandbox and its
# namespaces cannot be opened, even by root. The mount namespace is a copy made with
# propagation unchanged: the kubelet root and the shared-pools parent (rshared,
# prepared above) stay one peer group with the host's, so volume mounts and pools
# mounted later are seen on both sides; containerd's own
# mounts (rootfs overlays, network namespaces) stay in its namespace and go with it.
# The PID file holds containerd's PID as seen from here.
if ! running containerd; then
	nohup unshare --pid --fork --mount --propagation unchanged --mount-proc \
		bash -c 'containerd --config "$1" & wait $!' containerd "$CLUSTER_DIR/containerd/config.toml" \
		>"$CLUSTER_DIR/logs/containerd.log" 2>&1 </dev/null &
	ns_parent=$!
	for _ in $(seq 50); do
		ns_init=$(pgrep -P "$ns_parent" | head -1 || true)
		[ -n "$ns_init" ] && ctd=$(pgrep -x -P "$ns_init" containerd) && break
		sleep 0.1
	done
	[ -n "${ctd:-}" ] || { echo "cluster-up: containerd did not start; see $CLUSTER_DIR/logs/containerd.log" >&2; exit 1; }
	echo "$ctd" > "$(pidfile containerd)"
else
	echo "      containerd already running (pid $(cat "$(pidfile containerd)"))"
fi
wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version

step "Importing images"
import_images "$CONTAINERD_SOCK" "$CLUSTER_DIR/containerd/imported"
ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -v '^sha256:' | sed 's/^/      /'

step "Starting the control plane"
start kube-apiserver "$K8S_BIN/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
	--bind-address "$API_ADDR" --advertise-address "$API_ADDR" --secure-port 6443 \
	--endpoint-reconciler-type none --service-cluster-ip-range "$SERVICE_CIDR" \
	--client-ca-file "$pki/ca.crt" --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
	--service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
	--service-account-issuer https://kubernetes.default.svc --api-audiences https://kubernetes.default.svc \
	--authorization-mode Node,RBAC --allow-privileged=true \
	--kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
	--kubelet-preferred-address-types InternalIP
wait_for kube-apiserver 90 kc get --raw /readyz
start kube-controller-manager "$K8S_BIN/kube-controller-manager" --kubeconfig "$KUBECONFIG_FILE" \
	--authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
	--bind-address 127.0.0.1 --leader-elect=false --service-account-private-key-file "$pki/sa.key" \
	--root-ca-file "$pki/ca.crt" --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
	--service-cluster-ip-range "$SERVICE_CIDR" --use-service-account-credentials=true \
	--allocate-node-cidrs=false \
	--kube-api-qps=100 --kube-api-burst=200 --node-monitor-grace-period=30s
# kube-controller-manager's API pace (20 calls a second, burst 30, by default) is what
# held 200 claims created at once: its PV controller writes 4 times to bind each claim
# to its PV (docs/benchmarks.md, "Scale on the local cluster"). A node whose kubelet
# stops renewing its lease (every 10 s) is NotReady after 30 s, not the default 50 s:
# the tests of a stopped node or kubelet wait for it.
start kube-scheduler "$K8S_BIN/kube-scheduler" --kubeconfig "$KUBECONFIG_FILE" \
	--authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
	--bind-address 127.0.0.1 --leader-elect=false

step "Starting the kubelet (node \"localhost\")"
write_kubelet_conf "$CLUSTER_DIR/kubelet.yaml" "$API_ADDR" "$CGROUP_ROOT" "$CONTAINERD_SOCK"
read -r -a kubelet_cmd <<<"$(kubelet_args localhost "$API_ADDR" "$CLUSTER_DIR/kubelet.yaml")"
start kubelet "${kubelet_cmd[@]}"
wait_for "node localhost" 120 kc get node localhost
kc wait --for=condition=Ready node/localhost --timeout=120s >/dev/null
kc get --raw /readyz >/dev/null

if [ "$NODES" -gt 1 ]; then
	step "Starting $((NODES - 1)) further node(s) (hack/cluster-node.sh), importing their images"
	jobs_=()
	for i in $(seq 2 "$NODES"); do start_node "$i" & jobs_+=($!); done
	wait "${jobs_[@]}"
	for i in $(seq 2 "$NODES"); do
		running "node-$(node_name "$i")" || { echo "cluster-up: node $(node_name "$i") did not start; see $CLUSTER_DIR/logs" >&2; exit 1; }
	done
	for i in $(seq 2 "$NODES"); do wait_for "node $(node_name "$i")" 120 kc get node "$(node_name "$i")"; done
	kc wait --for=condition=Ready node --all --timeout=180s >/dev/null
	step "The shared pool: GlusterFS across the nodes (hack/cluster-gluster.sh)"
	"$here/cluster-gluster.sh"
fi

step "Snapshot CRDs and the snapshot-controller (external-snapshotter $SNAPSHOTTER_VERSION)"
# From the Go module cache (the sidecars' build put them there): nothing is pulled.
moddir() { (cd "$here/k8s-tools/sidecars" && go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p'); }
snap_client=$(moddir "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_VERSION")
snap_main=$(moddir "github.com/kubernetes-csi/external-snapshotter/v8@$SNAPSHOTTER_VERSION")
# The group snapshot CRDs too (groupsnapshot.storage.k8s.io, v1 served): the
# snapshot-controller turns VolumeGroupSnapshots on by itself (CSIVolumeGroupSnapshot
# is GA, on by default, no flag) only when it can list them at start, so they must be
# established before it runs. Berth's sidecars take groups only with the chart's
# sidecars.snapshotter.groupSnapshots, which the tests that need it turn on.
# A cluster brought up before the group CRDs were applied has a snapshot-controller
# that gave groups up at its start: it is restarted once they are there.
had_groups=1
kc get crd volumegroupsnapshots.groupsnapshot.storage.k8s.io >/dev/null 2>&1 || had_groups=0
for f in "$snap_client"/config/crd/snapshot.storage.k8s.io_*.yaml \
	"$snap_client"/config/crd/groupsnapshot.storage.k8s.io_*.yaml; do
	kc apply --server-side -f "$f" >/dev/null
done
kc wait --for=condition=Established --timeout=60s crd/volumesnapshots.snapshot.storage.k8s.io \
	crd/volumesnapshotcontents.snapshot.storage.k8s.io crd/volumesnapshotclasses.snapshot.storage.k8s.io \
	crd/volumegroupsnapshots.groupsnapshot.storage.k8s.io crd/volumegroupsnapshotcontents.groupsnapshot.storage.k8s.io \
	crd/volumegroupsnapshotclasses.groupsnapshot.storage.k8s.io >/dev/null
kc apply -f "$snap_main/deploy/kubernetes/snapshot-controller/rbac-snapshot-controller.yaml" >/dev/null
if [ "$had_groups" = 0 ] && kc -n kube-system get deploy/snapshot-controller >/dev/null 2>&1; then
	kc -n kube-system rollout restart deploy/snapshot-controller >/dev/null
fi
sed "s/@VERSION@/$SNAPSHOTTER_VERSION/g" "$here/snapshot-controller.yaml" | kc apply -f - >/dev/null
kc -n kube-system rollout status deploy/snapshot-controller --timeout=120s >/dev/null
# The SnapshotMetadataService CRD (cbt.storage.k8s.io), which the chart's
# snapshotMetadata object needs, from the external-snapshot-metadata build.
kc apply --server-side -f "$BERTH_CACHE/snapshot-metadata-$SNAPSHOT_METADATA_VERSION/crds/" >/dev/null
kc wait --for=condition=Established --timeout=60s crd/snapshotmetadataservices.cbt.storage.k8s.io >/dev/null

for comp in "${COMPONENTS[@]}"; do
	running "$comp" || { echo "cluster-up: $comp is not running; see $CLUSTER_DIR/logs/$comp.log" >&2; tail -3 "$CLUSTER_DIR/logs/$comp.log" >&2; exit 1; }
done
finish "Cluster ready: export KUBECONFIG=$KUBECONFIG_FILE   (kubectl: $K8S_BIN/kubectl)"

# Shared by hack/cluster-up.sh and hack/cluster-down.sh: where the local cluster lives.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"
CLUSTER_DIR=${CLUSTER_DIR:-/var/lib/berth-cluster}      # certs, etcd, containerd root, logs, pids
KUBELET_DIR=/var/lib/kubelet                             # the e2e suite hard-codes it
# Parent of the shared pools the e2e tests mount (GlusterFS): a shared mount, as systemd
# makes / on a real node, so that mounts made under it after containerd started reach
# the driver pods (HostToContainer). This machine's / is private.
SHARED_POOLS_DIR=/var/lib/berth-shared
CONTAINERD_RUN=/run/berth-containerd
CONTAINERD_SOCK=$CONTAINERD_RUN/containerd.sock
CGROUP_ROOT=berth-cluster
BRIDGE=berth0
SERVICE_CIDR=10.96.0.0/24
# Nodes: the first ("localhost") is this machine, the kubelet in its namespaces as
# before; node i >= 2 ("berth-node-i") is a kubelet with a containerd of its own in
# network, mount, PID and UTS namespaces of its own (hack/cluster-node.sh), on the
# bridge NODE_BRIDGE at 10.89.0.i. This machine is 10.89.0.1 on that bridge, where
# the API server and the first kubelet listen (nothing outside the bridge reaches
# them: see cluster-up's BERTH-NODES-IN chain). Node i's pods are in 10.88.i.0/24.
NODES=${NODES:-3}
NODE_BRIDGE=berthn0
NODE_NET=10.89.0
API_ADDR=$NODE_NET.1
NODE_NAME_PREFIX=berth-node-
node_name() { if [ "$1" = 1 ]; then echo localhost; else echo "$NODE_NAME_PREFIX$1"; fi; }
node_addr() { echo "$NODE_NET.$1"; }
pod_cidr() { echo "10.88.$1.0/24"; }
# node_dir NAME: a further node's state: fs/ holds what its mount namespace sees at
# /var/lib/kubelet and /var/lib/berth-adopt, disk.img its /var/lib/berth, containerd/
# its containerd's root.
node_dir() { echo "$CLUSTER_DIR/nodes/$1"; }
# node_sock NAME: a further node's containerd socket, where this machine reaches it too.
node_sock() { echo "$CLUSTER_DIR/nodes/$1/containerd.sock"; }
KUBECONFIG_FILE=$CLUSTER_DIR/admin.kubeconfig
K8S_BIN=$BERTH_CACHE/k8s-$K8S_VERSION
# Sysctls the kubelet (and the CNI bridge) change; cluster-down restores them.
SAVED_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward)
COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet)
# The directories a further node gets of its own, bind-mounted over this machine's
# (the shared pools' parent too: each node mounts the cluster's shared pool itself; and
# the pods' logs: a kubelet removes the log directories of pods it does not know);
# its /var/lib/berth is a disk of its own (node_disk_mb, an XFS file system in a file).
NODE_OWN_DIRS=(/var/lib/kubelet /var/lib/berth-adopt "$SHARED_POOLS_DIR" /var/log/pods /var/log/containers)
# The cluster's shared pool (hack/cluster-gluster.sh): a GlusterFS volume whose bricks
# live on nodes 2 and 3 (replica 2; one brick on node 2 with NODES=2), mounted by
# every node at GLUSTER_MOUNT. None with NODES=1.
GLUSTER_VOLUME=berth-shared
GLUSTER_MOUNT=$SHARED_POOLS_DIR/cluster
# node_enter NAME CMD...: CMD in a further node's namespaces.
node_enter() {
	local name=$1; shift
	nsenter --target "$(cat "$(pidfile "node-$name")")" --mount --net --uts --pid -- "$@"
}
# node_disk_mb I: the size of node I's disk (a sparse file): 3 GiB for node 2, 32 GiB
# for node 3 (TestSnapshotMetadata's 10 GiB block volume lives there, beside the
# external-snapshot-metadata sidecar), 1 GiB from node 4 on, so that the nodes' free
# space differs (the scheduler's capacity checks have something to choose between);
# this machine's is its own disk. NODE2_DISK_MB overrides node 2's (make e2e-bench's
# TestMoveDowntime moves 10 GiB to it).
node_disk_mb() {
	if [ "$1" = 2 ] && [ -n "${NODE2_DISK_MB:-}" ]; then echo "$NODE2_DISK_MB"; return; fi
	case $1 in 2) echo 3072 ;; 3) echo 32768 ;; *) echo 1024 ;; esac
}

t0=$(date +%s)
step_start=$t0
step() {
	local now; now=$(date +%s)
	[ -n "${step_name:-}" ] && printf '      done in %ss\n' $((now - step_start))
	step_name=$1 step_start=$now
	printf '[%4ss] %s\n' $((now - t0)) "$1"
}
finish() {
	local now; now=$(date +%s)
	[ -n "${step_name:-}" ] && printf '      done in %ss\n' $((now - step_start))
	step_name=""
	printf '[%4ss] %s\n' $((now - t0)) "$1"
}
kc() { "$K8S_BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
# berth_install [VALUES...]: installs or upgrades the release "berth" in kube-system
# from charts/berth with hack/cluster-values.yaml and then each VALUES file (names in
# hack/), and waits for the node plugin on every node (make demo, e2e, e2e-bench).
berth_install() {
	local hack args=() f
	hack=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
	for f in cluster-values.yaml "$@"; do args+=(-f "$hack/$f"); done
	"$BERTH_CACHE/tools/helm-$HELM_VERSION" upgrade --install berth "$hack/../charts/berth" -n kube-system \
		"${args[@]}" --wait --timeout 3m >/dev/null
	kc -n kube-system rollout status ds/berth-node --timeout=120s >/dev/null
}
pidfile() { echo "$CLUSTER_DIR/run/$1.pid"; }
running() { local f; f=$(pidfile "$1"); [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

# Configuration shared by every node (this machine's and the further ones).
# write_cni_conf DIR CIDR: the bridge network of a node's pods.
write_cni_conf() {
	mkdir -p "$1"
	cat > "$1/10-berth.conflist" <<CNI
{"cniVersion": "1.0.0", "name": "berth", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$2"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$1/ipam"}},
  {"type": "loopback"}]}
CNI
}
# write_containerd_conf FILE ROOT STATE SOCK CNIDIR: no registry (a missing image fails
# at once: every registry a manifest names is mirrored to a closed port).
write_containerd_conf() {
	local mirrors="" r
	for r in docker.io registry.k8s.io gcr.io quay.io ghcr.io registry-1.docker.io; do
		mirrors+="    [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"$r\"]
      endpoint = [\"http://127.0.0.1:1\"]
"
	done
	cat > "$1" <<TOML
version = 2
root = "$2"
state = "$3"
[grpc]
  address = "$4"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10.2"
  # This machine lacks CAP_SYS_RESOURCE: never try to lower an OOM score adjustment.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$5"
  [plugins."io.containerd.grpc.v1.cri".registry]
$mirrors
TOML
}
# write_kubelet_conf FILE ADDRESS CGROUP_ROOT SOCK
write_kubelet_conf() {
	cat > "$1" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $2
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $CLUSTER_DIR/pki/ca.crt}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
cgroupRoot: /$3
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$4
# The images are local only: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
maxPods: 250
podPidsLimit: -1
resolvConf: /etc/resolv.conf
YAML
}
# kubelet_args NAME ADDRESS CONFIG: the kubelet's command line on every node.
kubelet_args() {
	echo "$K8S_BIN/kubelet" --config "$3" --kubeconfig "$KUBECONFIG_FILE" \
		--root-dir "$KUBELET_DIR" --hostname-override "$1" --node-ip "$2" -v 2
}

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
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/24
KUBECONFIG_FILE=$CLUSTER_DIR/admin.kubeconfig
K8S_BIN=$BERTH_CACHE/k8s-$K8S_VERSION
# Sysctls the kubelet (and the CNI bridge) change; cluster-down restores them.
SAVED_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
	kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward)
COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet)

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
pidfile() { echo "$CLUSTER_DIR/run/$1.pid"; }
running() { local f; f=$(pidfile "$1"); [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }

#!/usr/bin/env bash
# Berth's main job on a real kubelet, from a fresh machine: builds what is missing,
# starts the local cluster, installs Berth with Helm (embedded default pool), writes a
# file from one pod, deletes the pod, reads the file from a new pod on the same claim.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# One node is enough to show it (NODES=3 make demo for the cluster of make e2e).
NODES=${NODES:-1} "$here/cluster-up.sh"
source "$here/cluster-lib.sh"
export KUBECONFIG=$KUBECONFIG_FILE
t0=$(date +%s) step_name=""

step "helm install berth (charts/berth, embedded default pool /var/lib/berth/default)"
berth_install

ns=berth-demo
step "A claim and a pod that writes a file"
kc create namespace $ns --dry-run=client -o yaml | kc apply -f - >/dev/null
kc -n $ns delete pod writer reader --ignore-not-found --wait >/dev/null
pod() { # pod NAME COMMAND
	cat <<YAML
apiVersion: v1
kind: Pod
metadata: {name: $1}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: registry.k8s.io/e2e-test-images/busybox:1.37.0-2
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "$2"]
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: data}
YAML
}
kc -n $ns apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  storageClassName: berth
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
YAML
stamp="written by pod writer at $(date -u +%FT%TZ)"
pod writer "echo '$stamp' > /data/hello.txt && sync" | kc -n $ns apply -f - >/dev/null
kc -n $ns wait --for=jsonpath='{.status.phase}'=Succeeded pod/writer --timeout=120s >/dev/null
echo "      claim: $(kc -n $ns get pvc data -o jsonpath='{.status.phase} {.spec.volumeName}')"

step "Deleting the writer pod"
kc -n $ns delete pod writer --wait >/dev/null

step "A new pod on the same claim reads the file"
pod reader "cat /data/hello.txt" | kc -n $ns apply -f - >/dev/null
kc -n $ns wait --for=jsonpath='{.status.phase}'=Succeeded pod/reader --timeout=120s >/dev/null
got=$(kc -n $ns logs reader)
echo "      /data/hello.txt: $got"
if [ "$got" != "$stamp" ]; then
	echo "demo: the new pod read '$got', expected '$stamp'" >&2
	exit 1
fi
finish "The file outlived its pod."
cat <<EOF2

Look around:
  export KUBECONFIG=$KUBECONFIG_FILE PATH=$K8S_BIN:\$PATH
  kubectl -n $ns get pvc,pods            kubectl get pv,csinode,csistoragecapacities -A
  kubectl -n kube-system logs ds/berth-node -c berth
  ls /var/lib/berth/default/volumes      (the volume's data on the host)
Tear down (leaves the machine as it was; builds stay cached): make cluster-down
EOF2

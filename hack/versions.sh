# Versions of everything the local cluster and the chart use, in one place.
# Sourced by hack/*.sh; the Makefile reads the same file.
K8S_VERSION=v1.37.2
HELM_VERSION=v3.22.0
PROVISIONER_VERSION=v6.4.0
RESIZER_VERSION=v2.3.0
SNAPSHOTTER_VERSION=v8.7.0
SIDECARS_KEY=p${PROVISIONER_VERSION}-r${RESIZER_VERSION}-s${SNAPSHOTTER_VERSION}
PAUSE_KEY=3.10.2-1
# The external-snapshot-metadata sidecar (changed-block tracking) and Berth's client of
# it, a build and cache entry of their own (hack/k8s-tools/snapshot-metadata).
SNAPSHOT_METADATA_VERSION=v1.0.0
# rancher/local-path-provisioner, the comparison in docs/benchmarks.md (make e2e-bench).
LOCAL_PATH_VERSION=v0.0.30
# The monitoring stack of the e2e tests (test/e2e/prometheus), built from the module
# proxy by hack/k8s-tools/build.sh prometheus. PROMETHEUS_VERSION is the Go module
# github.com/prometheus/prometheus (v0.316.0 is Prometheus v3.16.0); promtool
# (make metrics-lint) is built from the same version. PROM_OPERATOR_VERSION is
# github.com/prometheus-operator/prometheus-operator: v0.85.0 is the newest the proxy
# serves (v0.95.x of its pkg/apis/monitoring submodule are there, but the proxy
# answers 403 "not available" for every main-module version after v0.85.0).
PROMETHEUS_VERSION=v0.316.0
PROM_OPERATOR_VERSION=v0.85.0
# Prometheus's own version (the image tag, the Prometheus resource's spec.version):
# module v0.MMmm.p is Prometheus vM.mm.p (v0.316.0 -> v3.16.0).
_pm=${PROMETHEUS_VERSION#v0.}
PROMETHEUS_TAG=v$((${_pm%%.*} / 100)).$((${_pm%%.*} % 100)).${_pm#*.}
unset _pm
PROM_STACK_KEY=p${PROMETHEUS_VERSION}-o${PROM_OPERATOR_VERSION}
# Cache of built binaries and images, outside the clone.
BERTH_CACHE=${BERTH_CACHE:-$HOME/.cache/berth}

# Versions of everything the local cluster and the chart use, in one place.
# Sourced by hack/*.sh; the Makefile reads the same file.
K8S_VERSION=v1.37.2
HELM_VERSION=v3.22.0
PROVISIONER_VERSION=v6.4.0
RESIZER_VERSION=v2.3.0
SNAPSHOTTER_VERSION=v8.7.0
SIDECARS_KEY=p${PROVISIONER_VERSION}-r${RESIZER_VERSION}-s${SNAPSHOTTER_VERSION}
PAUSE_KEY=3.10.2-1
# rancher/local-path-provisioner, the comparison in docs/benchmarks.md (make e2e-bench).
LOCAL_PATH_VERSION=v0.0.30
# Cache of built binaries and images, outside the clone.
BERTH_CACHE=${BERTH_CACHE:-$HOME/.cache/berth}

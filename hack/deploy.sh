#!/usr/bin/env bash
# deploy/ holds plain manifests rendered from charts/berth with its default values:
#   hack/deploy.sh           re-render deploy/berth.yaml
#   hack/deploy.sh --verify  fail if deploy/ has drifted from the chart (CI)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
source "$here/versions.sh"
helm=$BERTH_CACHE/tools/helm-$HELM_VERSION
[ -x "$helm" ] || "$here/k8s-tools/build.sh" helm
render() {
	echo "# Rendered from charts/berth by hack/deploy.sh (helm template, default values but"
	echo "# transfer.enabled=false: helm template cannot keep the transfer channel's CA). Do not edit."
	"$helm" template berth "$root/charts/berth" --namespace kube-system --skip-tests --kube-version "${K8S_VERSION#v}" \
		--set transfer.enabled=false
}
"$helm" lint --strict "$root/charts/berth" --kube-version "${K8S_VERSION#v}" >/dev/null
if [ "${1:-}" = --verify ]; then
	if ! diff -u "$root/deploy/berth.yaml" <(render); then
		echo "deploy/berth.yaml differs from the chart: run hack/deploy.sh (make deploy)" >&2
		exit 1
	fi
	echo "deploy/ matches charts/berth"
else
	mkdir -p "$root/deploy"
	render > "$root/deploy/berth.yaml"
	echo "wrote deploy/berth.yaml"
fi

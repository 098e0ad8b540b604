module github.com/berth-csi/berth/hack/k8s-tools/pause

go 1.26.0

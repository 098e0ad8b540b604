// Package deps pins the module's direct dependencies while the tree is being built.
package deps

import (
	_ "github.com/container-storage-interface/spec/lib/go/csi"
	_ "github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	_ "github.com/moby/sys/mountinfo"
	_ "golang.org/x/sys/unix"
	_ "google.golang.org/grpc"
	_ "k8s.io/klog/v2"
	_ "k8s.io/mount-utils"
	_ "sigs.k8s.io/yaml"
)

//go:build tools

// Package tools names the command this module builds, the external-snapshot-metadata
// sidecar (changed-block tracking), so that go mod tidy keeps its dependencies. It is
// a module of its own, not one more line in ../sidecars: the sidecar pins every
// k8s.io module to v0.35.0, and sharing one build list would move the other
// sidecars' dependencies (and the key of their cached build).
package tools

import (
	_ "github.com/kubernetes-csi/external-snapshot-metadata/cmd/csi-snapshot-metadata"
)

// Package podcgroup finds a Kubernetes pod's cgroup by its UID, in the cgroup
// hierarchy of one controller: cgroup v2 (one hierarchy for all, when the root
// holds cgroup.controllers) or the v1 hierarchy of the controller mounted at
// <root>/<controller>. Pods are found under either cgroup driver of kubelet:
// pod<uid> (cgroupfs) or <parent>-pod<uid with _ for ->.slice (systemd).
//
// The freezer (package podfreeze) and the I/O throttle (package iothrottle) both
// act on a pod's cgroup; this is what they share.
package podcgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// DefaultRoot is where hosts mount their cgroup filesystems.
const DefaultRoot = "/sys/fs/cgroup"

// maxDepth bounds the search for a pod's cgroup below the hierarchy's root: kubelet
// puts pods at most three levels down (kubepods, the QoS class, the pod), below its
// --cgroup-root, which may itself be a few levels deep.
const maxDepth = 8

// ErrNoPod is wrapped by Find's error when no cgroup of the pod exists.
var ErrNoPod = errors.New("no cgroup for this pod")

// uidPattern is what a pod UID may be: a UUID, or the 32 hex digits of a static
// pod's config hash. Nothing else reaches a path.
var uidPattern = regexp.MustCompile(`^[0-9a-f]([0-9a-f-]{0,62}[0-9a-f])?$`)

// ValidUID reports whether uid can be a pod's UID.
func ValidUID(uid string) bool { return uidPattern.MatchString(uid) }

// Hierarchy returns the directory of the hierarchy that holds controller under the
// cgroup mount root, and whether it is cgroup v2: root itself when it holds
// cgroup.controllers, else root/<controller> (a v1 hierarchy; a symbolic link, as
// hosts make for cpu,cpuacct, is followed).
func Hierarchy(root, controller string) (string, bool, error) {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return filepath.Clean(root), true, nil
	}
	dir, err := filepath.EvalSymlinks(filepath.Join(root, controller))
	if err == nil {
		if _, err = os.Stat(filepath.Join(dir, "cgroup.procs")); err == nil {
			return dir, false, nil
		}
	}
	return "", false, fmt.Errorf("no cgroup %s controller under %s: neither a cgroup v2 hierarchy (cgroup.controllers) nor a v1 %s hierarchy (%s/)",
		controller, root, controller, controller)
}

// Find returns the cgroup directory of the pod with this UID below top, the
// directory of a hierarchy; an error wrapping ErrNoPod when there is none (the pod
// is gone, or kubelet's cgroups lie elsewhere).
func Find(top, uid string) (string, error) {
	if !ValidUID(uid) {
		return "", fmt.Errorf("pod UID %q is not a UID", uid)
	}
	cgroupfs, systemd := "pod"+uid, "-pod"+strings.ReplaceAll(uid, "-", "_")+".slice"
	var found []string
	var walk func(dir string, depth int) error
	walk = func(dir string, depth int) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if depth > 0 && errors.Is(err, os.ErrNotExist) {
				return nil // a cgroup removed while the search ran
			}
			return err
		}
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			name := e.Name()
			if name == cgroupfs || strings.HasSuffix(name, systemd) {
				found = append(found, filepath.Join(dir, name))
				continue // its containers are below it
			}
			if depth+1 < maxDepth {
				if err := walk(filepath.Join(dir, name), depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if err := walk(top, 0); err != nil {
		return "", fmt.Errorf("search the cgroups of pod %s: %w", uid, err)
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("searched %s: %w", top, ErrNoPod)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("pod %s has %d cgroups under %s (%s): cannot tell which holds its processes", uid, len(found), top, strings.Join(found, ", "))
}

// Below checks that dir is a cgroup strictly below top, so a path read back from a
// record can never make a caller write elsewhere.
func Below(top, dir string) error {
	rel, err := filepath.Rel(top, filepath.Clean(dir))
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") || !filepath.IsAbs(dir) {
		return fmt.Errorf("%s is not a cgroup below %s", dir, top)
	}
	return nil
}

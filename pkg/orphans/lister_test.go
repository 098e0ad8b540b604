package orphans_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/orphans"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// serveLister runs ServeLister for l on a fresh unix socket until the test ends and
// returns the socket's path.
func serveLister(t *testing.T, l orphans.Lister) string {
	t.Helper()
	path := filepath.Join(testutil.ShortTempDir(t), "pv-lister.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- orphans.ServeLister(ctx, lis, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeLister: %v", err)
		}
	})
	return path
}

// TestSocketLister: the driver's side reads through the socket what the pv-lister
// lists through the API: the driver's handles, or the listing's error.
func TestSocketLister(t *testing.T) {
	kube := fake.NewClientset(
		pv("pv-a", driver, "b1-local-a", corev1.VolumeBound),
		pv("pv-b", driver, "b1-local-b", corev1.VolumeReleased),
		pv("pv-x", "other.csi.io", "b1-local-x", corev1.VolumeBound),
	)
	sock := serveLister(t, orphans.KubeLister{PVs: kube.CoreV1().PersistentVolumes(), Driver: driver, PageSize: 1})
	h, err := orphans.NewSocketLister(sock).VolumeHandles(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 2 || !h.Has("b1-local-a") || !h.Has("b1-local-b") {
		t.Errorf("handles %v, want b1-local-a and b1-local-b", h)
	}

	kube.PrependReactor("list", "persistentvolumes", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "persistentvolumes"}, "", errors.New("RBAC"))
	})
	if _, err := orphans.NewSocketLister(sock).VolumeHandles(context.Background()); err == nil ||
		!strings.Contains(err.Error(), "502") || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("listing refused by RBAC: %v, want a 502 naming it", err)
	}
}

// TestSocketListerAbsent: no pv-lister at the socket is an error, not an empty set.
func TestSocketListerAbsent(t *testing.T) {
	sock := filepath.Join(testutil.ShortTempDir(t), "none.sock")
	if h, err := orphans.NewSocketLister(sock).VolumeHandles(context.Background()); err == nil {
		t.Errorf("no pv-lister: %v handles, no error", h)
	}
}

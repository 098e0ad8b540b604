package volcap_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/volcap"
	"github.com/container-storage-interface/spec/lib/go/csi"
)

func pool(t *testing.T, kind string) *storage.Pool {
	t.Helper()
	e, err := storage.New(storage.Config{Pools: []storage.PoolConfig{{Name: "p", Path: filepath.Join(t.TempDir(), "p"), Kind: kind}}})
	if err != nil {
		t.Fatal(err)
	}
	return e.DefaultPool()
}

func mount(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

// TestCheckAccessModesByKind: node-local kinds serve SINGLE_NODE_* only; shared
// pools, whose root every node mounts, serve every mode.
func TestCheckAccessModesByKind(t *testing.T) {
	multi := []csi.VolumeCapability_AccessMode_Mode{
		csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER,
	}
	single := []csi.VolumeCapability_AccessMode_Mode{
		csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
	}
	for _, kind := range []string{storage.KindDir, storage.KindQuota, storage.KindImage, storage.KindShared} {
		p := pool(t, kind)
		for _, m := range single {
			if _, err := volcap.Check([]*csi.VolumeCapability{mount(m)}, p); err != nil {
				t.Errorf("%s pool, %s: %v", kind, m, err)
			}
		}
		for _, m := range multi {
			_, err := volcap.Check([]*csi.VolumeCapability{mount(m)}, p)
			if kind == storage.KindShared && err != nil {
				t.Errorf("shared pool, %s: %v", m, err)
			}
			if kind != storage.KindShared && !errors.Is(err, storage.ErrUnsupported) {
				t.Errorf("%s pool, %s: %v, want ErrUnsupported", kind, m, err)
			}
		}
		if _, err := volcap.Check([]*csi.VolumeCapability{mount(csi.VolumeCapability_AccessMode_UNKNOWN)}, p); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("%s pool, UNKNOWN mode: %v, want ErrInvalid", kind, err)
		}
	}
	block := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
	}
	if _, err := volcap.Check([]*csi.VolumeCapability{block}, pool(t, storage.KindShared)); !errors.Is(err, storage.ErrUnsupported) {
		t.Errorf("block on a shared pool: %v, want ErrUnsupported", err)
	}
}

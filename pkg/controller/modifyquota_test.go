package controller_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/quota"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// TestModifyVolumeInodeLimit changes the inode limit of quota volumes for real, on XFS
// and ext4 with project quotas (make quota-vm where the kernel lacks them): the limit
// given at create takes precedence over the StorageClass's, a modification is enforced
// at once, recorded durably in record.json, kept by an expansion, repeated without
// harm, and refused whole (nothing applied) when any key or value is bad.
func TestModifyVolumeInodeLimit(t *testing.T) {
	for _, fs := range []testutil.FS{testutil.XFSPrjQuota, testutil.Ext4PrjQuota} {
		t.Run(fs.Name, func(t *testing.T) {
			testutil.RequireQuotaKernel(t)
			mnt := testutil.MountFS(t, fs, 512<<20)
			f := newFixture(t, storage.PoolConfig{Name: "q", Path: filepath.Join(mnt, "q"), Kind: storage.KindQuota})
			if err := f.engine.Unserved(); err != nil {
				t.Fatalf("quota pool on %s is not served: %v", fs.Name, err)
			}
			ctx := context.Background()
			req := inPool("pvc-inodes", "q", 1<<20, nil)
			req.Parameters[storage.ParamInodeLimit] = "1000" // the StorageClass's
			req.MutableParameters = map[string]string{storage.ParamInodeLimit: "8"}
			resp, err := f.srv.CreateVolume(ctx, req)
			wantCode(t, err, codes.OK)
			id := resp.GetVolume().GetVolumeId()
			f.wantInodeLimit(t, id, 8)

			// The same request again is the same volume; other mutable parameters are
			// another request.
			_, err = f.srv.CreateVolume(ctx, req)
			wantCode(t, err, codes.OK)
			other := inPool("pvc-inodes", "q", 1<<20, nil)
			other.Parameters[storage.ParamInodeLimit] = "1000"
			other.MutableParameters = map[string]string{storage.ParamInodeLimit: "9"}
			_, err = f.srv.CreateVolume(ctx, other)
			wantCode(t, err, codes.AlreadyExists)

			created := fillInodes(t, f.dataPath(t, id))
			if created >= 8 {
				t.Fatalf("%d files created under an inode limit of 8", created)
			}

			// Refused whole: nothing applied.
			for _, bad := range []map[string]string{
				{storage.ParamInodeLimit: "0"},
				{storage.ParamInodeLimit: "32", "XXX_FakeKey": "XXX_FakeValue"},
			} {
				_, err = f.srv.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: bad})
				wantCode(t, err, codes.InvalidArgument)
				f.wantInodeLimit(t, id, 8)
			}

			for range 2 { // idempotent
				_, err = f.srv.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{
					VolumeId: id, MutableParameters: map[string]string{storage.ParamInodeLimit: "32"}})
				wantCode(t, err, codes.OK)
				f.wantInodeLimit(t, id, 32)
			}
			if more := fillInodes(t, f.dataPath(t, id)); created+more < 24 {
				t.Fatalf("%d files in all under an inode limit of 32, want at least 24", created+more)
			}
			// No keys: nothing changes.
			_, err = f.srv.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id})
			wantCode(t, err, codes.OK)
			f.wantInodeLimit(t, id, 32)

			// Durable: record.json on disk says so.
			p, r, err := f.engine.Volume(id)
			if err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(filepath.Join(p.VolumeDir(r.Hash()), "record.json"))
			if err != nil {
				t.Fatal(err)
			}
			var onDisk storage.Record
			if err := json.Unmarshal(data, &onDisk); err != nil {
				t.Fatal(err)
			}
			if got := onDisk.MutableParameters[storage.ParamInodeLimit]; got != "32" {
				t.Fatalf("record.json has inodeLimit %q, want 32", got)
			}
			if got := onDisk.Parameters[storage.ParamInodeLimit]; got != "1000" {
				t.Fatalf("record.json's StorageClass inodeLimit became %q, want 1000 kept", got)
			}

			// An expansion keeps the modified limit.
			if _, err := p.Expand(ctx, r.Hash(), 2<<20, 0); err != nil {
				t.Fatal(err)
			}
			f.wantInodeLimit(t, id, 32)
		})
	}
}

// wantInodeLimit checks the inode limit of the volume's project and its record.
func (f *fixture) wantInodeLimit(t *testing.T, id string, want uint64) {
	t.Helper()
	p, r, err := f.engine.Volume(id)
	if err != nil {
		t.Fatal(err)
	}
	u, err := quota.Get(p.VolumeDir(r.Hash()), r.ProjectID)
	if err != nil {
		t.Fatal(err)
	}
	if u.InodeHard != want {
		t.Fatalf("project %d: inode limit %d, want %d", r.ProjectID, u.InodeHard, want)
	}
	if got := r.MutableParameters[storage.ParamInodeLimit]; got != fmt.Sprint(want) {
		t.Fatalf("record's inodeLimit %q, want %d", got, want)
	}
}

// fillInodes creates empty files in dir, without CAP_SYS_RESOURCE (which lets ext4's
// quotas be passed), until the quota refuses one (EDQUOT, or ENOSPC on XFS), and
// returns how many it created; at most 100.
func fillInodes(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	err := testutil.WithoutSysResource(func() error {
		for ; n < 100; n++ {
			f, err := os.CreateTemp(dir, "inode-")
			if err != nil {
				return err
			}
			f.Close()
		}
		return nil
	})
	if err == nil {
		t.Fatalf("100 files created in %s without reaching the inode limit", dir)
	}
	if !errors.Is(err, unix.EDQUOT) && !errors.Is(err, unix.ENOSPC) {
		t.Fatal(err)
	}
	return n
}

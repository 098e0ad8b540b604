package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// TestStatsShowBackgroundCopy: while a restore is copied in the background, the
// pool's figures list it with the bytes done and the source's size; once it
// commits, it is gone from them and counted among the volumes, with its claim.
func TestStatsShowBackgroundCopy(t *testing.T) {
	p := sharedTmpfsPool(t)
	r, err := p.Create(context.Background(), CreateRequest{Name: "pvc-src", RequiredBytes: 1 << 20, AccessType: AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(p.DataPath(r.Hash()), "a"), "pod data")
	waitReady(t, p, "snap-src", r.Hash())

	saved := copyOptions
	t.Cleanup(func() { copyOptions = saved })
	copying, release := make(chan struct{}), make(chan struct{})
	first := true
	copyOptions.Progress = func(int64) {
		if first {
			first = false
			close(copying)
			<-release
		}
	}
	req := CreateRequest{Name: "pvc-restored", RequiredBytes: 1 << 20, AccessType: AccessMount,
		Source: &Source{Kind: SourceSnapshot, ID: SnapshotID("default", "snap-src")}, Claim: &Claim{Namespace: "ns", Name: "restored"}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := p.Create(ctx, req); !errors.Is(err, ErrInProgress) {
		close(release)
		t.Fatalf("restore: %v, want ErrInProgress", err)
	}
	<-copying
	s := p.Stats()
	close(release)
	if len(s.Copies) != 1 || s.Copies[0].VolumeID != VolumeID("default", "pvc-restored") || s.Copies[0].TotalBytes != 1<<20 {
		t.Errorf("copies while copying = %+v, want pvc-restored of 1 MiB", s.Copies)
	}
	if s.Volumes != 1 || s.Snapshots != 1 || s.AllocatedBytes != 3<<20 {
		t.Errorf("while copying: %d volumes, %d snapshots, %d allocated; want 1, 1, 3 MiB (source, snapshot and the restore's reservation)", s.Volumes, s.Snapshots, s.AllocatedBytes)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := p.Create(context.Background(), req); err == nil {
			break
		} else if !errors.Is(err, ErrInProgress) || time.Now().After(deadline) {
			t.Fatalf("restore: %v", err)
		}
	}
	s = p.Stats()
	if len(s.Copies) != 0 || s.Volumes != 2 || !s.Served() || !s.FSKnown {
		t.Errorf("once committed: %+v, want no copy, 2 volumes, served, filesystem figures", s)
	}
	var found bool
	for _, v := range p.VolumeStats(context.Background()) {
		if v.ID == VolumeID("default", "pvc-restored") {
			found = true
			if v.Claim == nil || *v.Claim != (Claim{"ns", "restored"}) || v.CapacityBytes != 1<<20 || !v.Healthy {
				t.Errorf("volume stats = %+v, want claim ns/restored, 1 MiB, healthy", v)
			}
		}
	}
	if !found {
		t.Error("the restored volume has no stats")
	}
}

// TestStatsReasonCheckFailed: a quota pool on an XFS mounted without prjquota is not
// served, for the reason CheckFailed, and its filesystem is not read for figures.
func TestStatsReasonCheckFailed(t *testing.T) {
	mnt := testutil.MountFS(t, testutil.XFSPlain, 512<<20)
	e := startInternal(t, PoolConfig{Name: "quota", Path: filepath.Join(mnt, "pool"), Kind: KindQuota})
	s := e.DefaultPool().Stats()
	if s.Served() || s.Reason != ReasonCheckFailed || s.FSKnown {
		t.Errorf("stats = %+v, want not served for %s, no filesystem figures", s, ReasonCheckFailed)
	}
	for _, v := range e.DefaultPool().VolumeStats(context.Background()) {
		t.Errorf("volume %s in a pool without volumes", v.ID)
	}
}

// TestStatsCountDamagedAndTrash: a volume directory whose record is unreadable is
// counted damaged, not a volume; a deleted volume is counted in the trash, with the
// capacity its record names, until purged. The pool is opened without the engine's
// Start, so no purger races the figures: the test purges itself.
func TestStatsCountDamagedAndTrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool")
	dir := filepath.Join(path, volumesDir, "0123456789abcdef0123456789abcdef")
	if err := os.MkdirAll(filepath.Join(dir, DataDir), 0o700); err != nil {
		t.Fatal(err)
	}
	writeTestFile(t, filepath.Join(dir, recordFile), "{")
	e, err := New(Config{Pools: []PoolConfig{{Name: "local", Path: path, Kind: KindDir}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := klog.NewContext(context.Background(), logr.Discard())
	p := e.DefaultPool()
	if err := p.open(ctx); err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.DamagedVolumes != 1 || s.Volumes != 0 || !s.Served() {
		t.Errorf("stats = %+v, want 1 damaged volume, none committed, served", s)
	}
	r, err := p.Create(ctx, CreateRequest{Name: "pvc-1", RequiredBytes: 3 << 20, AccessType: AccessMount})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(ctx, r.Hash()); err != nil {
		t.Fatal(err)
	}
	if s := p.Stats(); s.TrashEntries != 1 || s.TrashBytes != 3<<20 || s.Volumes != 0 || s.AllocatedBytes != 0 {
		t.Errorf("after delete: %+v, want 1 trash entry of %d bytes, no volume, nothing allocated", s, 3<<20)
	}
	p.PurgeTrash(ctx)
	if s := p.Stats(); s.TrashEntries != 0 || s.TrashBytes != 0 {
		t.Errorf("trash once purged: %d entries, %d bytes; want none", s.TrashEntries, s.TrashBytes)
	}
}

// TestStatsCountFrozenFilesystem: while a snapshot of a staged image volume is copied
// (held here mid-copy) its filesystem is frozen and counted, with the snapshot copy
// in progress; both counts fall back to 0 once the snapshot is committed. The image
// is formatted and loop-mounted by hand at its recorded staging path, as a stage
// leaves it; an ext4 pool has no reflinks, so the copy runs in the background.
func TestStatsCountFrozenFilesystem(t *testing.T) {
	mnt := testutil.MountFS(t, testutil.Ext4Plain, 1<<30)
	p := startInternal(t, PoolConfig{Name: "default", Path: filepath.Join(mnt, "pool"), Kind: KindImage}).DefaultPool()
	ctx := context.Background()
	r, err := p.Create(ctx, CreateRequest{Name: "img", RequiredBytes: 64 << 20, AccessType: AccessMount, FSType: "ext4"})
	if err != nil {
		t.Fatal(err)
	}
	staging := filepath.Join(mnt, "staging")
	if err := os.Mkdir(staging, 0o750); err != nil {
		t.Fatal(err)
	}
	testutil.Run(t, "mkfs.ext4", "-q", p.ImagePath(r.Hash()))
	testutil.Run(t, "mount", "-o", "loop", p.ImagePath(r.Hash()), staging)
	t.Cleanup(func() { testutil.UnmountTree(t, staging) })
	if err := p.MarkStaged(r.Hash(), staging); err != nil {
		t.Fatal(err)
	}

	saved := copyOptions
	t.Cleanup(func() { copyOptions = saved })
	copying, release := make(chan struct{}), make(chan struct{})
	var once, released sync.Once
	copyOptions.Progress = func(int64) {
		once.Do(func() {
			close(copying)
			<-release
		})
	}
	// Never leave the filesystem frozen, also when the test fails.
	t.Cleanup(func() { released.Do(func() { close(release) }) })
	s, err := p.CreateSnapshot(ctx, "snap", r.Hash())
	if err != nil {
		t.Fatal(err)
	}
	if s.Ready {
		t.Fatal("snapshot ready at once: the copy was not in the background")
	}
	select {
	case <-copying:
	case <-time.After(30 * time.Second):
		t.Fatal("the snapshot copy never started")
	}
	st := p.Stats()
	released.Do(func() { close(release) })
	if st.Frozen != 1 || st.SnapshotCopies != 1 {
		t.Errorf("while copying: %d frozen, %d snapshot copies; want 1 and 1", st.Frozen, st.SnapshotCopies)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if s, err := p.CreateSnapshot(ctx, "snap", r.Hash()); err != nil {
			t.Fatal(err)
		} else if s.Ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("snapshot never ready")
		}
	}
	if st := p.Stats(); st.Frozen != 0 || st.SnapshotCopies != 0 || st.Snapshots != 1 {
		t.Errorf("once committed: %d frozen, %d snapshot copies, %d snapshots; want 0, 0, 1", st.Frozen, st.SnapshotCopies, st.Snapshots)
	}
}

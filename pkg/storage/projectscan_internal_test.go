package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/quota"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// TestProjectScan runs the project scan on this machine: plain XFS carries project
// IDs without enforcing quotas, so the quota pool is not served, but the scan of a
// volume planted in its index finds and resets what a pod changed, however deep,
// never opens a FIFO or device node, and stops with its context. The quota guest
// runs the same through the CSI calls with limits enforced (pkg/node,
// TestQuotaProjectIDChangedIsReset).
func TestProjectScan(t *testing.T) {
	mnt := testutil.MountFS(t, testutil.XFSPlain, 320<<20)
	e := startInternal(t, PoolConfig{Name: "quota", Path: filepath.Join(mnt, "pool"), Kind: KindQuota})
	p := e.DefaultPool()
	ctx := context.Background()
	const id = ProjectIDBase + 77
	hash := "0123456789abcdef0123456789abcdef"
	r := &Record{ID: "b1-quota-" + hash, ProjectID: id}
	data := p.DataPath(hash)
	mkdirProject(t, data, id)
	p.mu.Lock()
	p.index[hash] = r
	p.mu.Unlock()

	// 40 levels, past the walker's window of open directories, the top one moved
	// to project 0 and everything beneath made after.
	deep := filepath.Join(data, "escape")
	mkdirProject(t, deep, 0)
	for i := range 40 {
		deep = filepath.Join(deep, "d")
		if err := os.Mkdir(deep, 0o755); err != nil {
			t.Fatalf("level %d: %v", i, err)
		}
	}
	writeTestFile(t, filepath.Join(deep, "blob"), "x")
	if err := unix.Mkfifo(filepath.Join(data, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", filepath.Join(data, "root")); err != nil {
		t.Fatal(err)
	}
	// A hard link into the volume from another project is refused by the kernel.
	if err := os.Link(filepath.Join(deep, "blob"), filepath.Join(data, "link")); !errors.Is(err, unix.EXDEV) {
		t.Fatalf("hard link across projects: %v, want EXDEV", err)
	}

	// A cancelled scan stops at its first pause.
	stopped, stop := context.WithCancel(ctx)
	stop()
	if got := p.ScanProjects(stopped, ProjectScan{Budget: 3, Pause: time.Hour}); got > 4 {
		t.Fatalf("a cancelled scan reset %d entries, want at most its first budget", got)
	}
	done := make(chan int64)
	go func() { done <- p.ScanProjects(ctx, ProjectScan{Budget: 5, Pause: time.Millisecond}) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("the scan did not end (blocked on the FIFO?)")
	}
	// 1 (escape) + 40 levels + the file, over both scans.
	if got := p.ProjectResets(); got != 42 {
		t.Fatalf("ProjectResets() = %d, want 42", got)
	}
	if got := p.Stats().ProjectResets; got != 42 {
		t.Errorf("Stats().ProjectResets = %d, want 42 (berth_pool_project_id_repairs_total)", got)
	}
	err := filepath.WalkDir(data, func(path string, d os.DirEntry, err error) error {
		if err != nil || !(d.IsDir() || d.Type().IsRegular()) {
			return err
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		got, inherit, err := quota.FileProject(fd)
		if err == nil && (got != id || d.IsDir() && !inherit) {
			t.Errorf("%s: project %d inherit %v after the scan, want %d", path, got, inherit, id)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	probs := p.projectProblem(hash)
	if len(probs) != 1 || probs[0].Reason != "ProjectIDChanged" || !strings.HasPrefix(probs[0].Message, "42 entries") {
		t.Fatalf("problems %+v, want ProjectIDChanged naming 42 entries", probs)
	}
	// A deleted volume's findings go with it.
	p.mu.Lock()
	delete(p.index, hash)
	p.mu.Unlock()
	p.ScanProjects(ctx, ProjectScan{})
	if probs := p.projectProblem(hash); probs != nil {
		t.Fatalf("problems of a deleted volume: %+v", probs)
	}
}

// startInternal starts an engine on one pool, served or not, logging nowhere; it
// stops at cleanup.
func startInternal(t *testing.T, pc PoolConfig) *Engine {
	t.Helper()
	e, err := New(Config{Pools: []PoolConfig{pc}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	t.Cleanup(func() { cancel(); e.Wait() })
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

// The pause comes after every budget of entries, counted across the volumes of a
// pass, so a pool of many small volumes is paced too.
func TestPacerSpansVolumes(t *testing.T) {
	pace := &pacer{s: ProjectScan{Budget: 2, Pause: time.Millisecond}}
	var pauses []int
	for i := range 7 { // e.g. 3 entries of one volume, then 4 of the next
		paused, err := pace.step(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if paused {
			pauses = append(pauses, i)
		}
	}
	if !slices.Equal(pauses, []int{2, 5}) {
		t.Fatalf("paused at steps %v, want [2 5]", pauses)
	}
}

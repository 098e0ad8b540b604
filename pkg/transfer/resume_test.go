package transfer

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
)

// resumeTree fills dir with files spread over directories, one of 6 MiB, hard
// links across them and a sparse file, and returns the bytes of data it holds.
func resumeTree(t testing.TB, dir string) int64 {
	t.Helper()
	var total int64
	buf := make([]byte, 1<<20)
	for d := range 4 {
		sub := filepath.Join(dir, "d"+strconv.Itoa(d), "inner")
		testutil.MkdirAll(t, sub)
		for f := range 6 {
			n := (d*6 + f + 1) * 37 << 10
			if _, err := rand.Read(buf[:n]); err != nil {
				t.Fatal(err)
			}
			p := filepath.Join(filepath.Dir(sub), "f"+strconv.Itoa(f))
			if f%2 == 1 {
				p = filepath.Join(sub, "f"+strconv.Itoa(f))
			}
			if err := os.WriteFile(p, buf[:n], 0o640); err != nil {
				t.Fatal(err)
			}
			total += int64(n)
		}
	}
	// A file of several data frames, which a cut leaves half done.
	testutil.WriteRandom(t, filepath.Join(dir, "d1", "big"), 6<<20)
	total += 6 << 20
	for i, name := range []string{"d1/link-a", "d3/inner/link-b", "top-link"} {
		if err := os.Link(filepath.Join(dir, "d0", "f0"), filepath.Join(dir, name)); err != nil {
			t.Fatal(i, err)
		}
	}
	f, err := os.Create(filepath.Join(dir, "d2", "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{1 << 20, 64 << 20} {
		if _, err := rand.Read(buf[:300<<10]); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(buf[:300<<10], off); err != nil {
			t.Fatal(err)
		}
		total += 300 << 10
	}
	if err := f.Truncate(100 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Symlink("../d0/f0", filepath.Join(dir, "d2", "sym")); err != nil {
		t.Fatal(err)
	}
	return total
}

// checkResumeTree compares the copy with its source: content, modes, links.
func checkResumeTree(t testing.TB, src, dest string) {
	t.Helper()
	testutil.SameTree(t, "copy", testutil.TreeSums(t, dest), testutil.TreeSums(t, src))
	ino := testutil.Lstat(t, filepath.Join(dest, "d0", "f0")).Ino
	for _, n := range []string{"d1/link-a", "d3/inner/link-b", "top-link"} {
		if st := testutil.Lstat(t, filepath.Join(dest, n)); st.Ino != ino || st.Nlink != 4 {
			t.Errorf("%s: inode %d with %d links, want a link to %d (4 links)", n, st.Ino, st.Nlink, ino)
		}
	}
	if st := testutil.Lstat(t, filepath.Join(dest, "d2", "sparse")); st.Blocks*512 > 4<<20 {
		t.Errorf("sparse file takes %d bytes: holes filled", st.Blocks*512)
	}
}

// resumeSetup serves a resumeTree as "vol" on a server of o, as root, and
// names a destination for it.
func resumeSetup(t *testing.T, o ServerOptions) (n *testNet, src string, total int64, dest string) {
	t.Helper()
	testutil.RequireRoot(t)
	n = startServer(t, o)
	src = t.TempDir()
	total = resumeTree(t, src)
	n.sources.add("vol", Source{Kind: KindTree, Path: src, Generation: "g"})
	return n, src, total, filepath.Join(t.TempDir(), "data")
}

// A connection cut mid-stream, three times: each attempt goes on from where the
// last one stopped, so no byte of data comes twice.
func TestPullResumesAfterCuts(t *testing.T) {
	n, src, total, dest := resumeSetup(t, ServerOptions{})
	proxy := newCutProxy(t, n.addr, 1500<<10, 3)
	o := n.pullOptions(t, "vol", dest)
	o.Addr = proxy.addr()
	o.Progress = &Progress{}
	res, err := Pull(testContext(t), o)
	if err != nil {
		t.Fatal(err)
	}
	checkResumeTree(t, src, dest)
	if proxy.cutDone.Load() != 3 || res.Attempts != 4 || o.Progress.Resumes.Load() != 3 {
		t.Errorf("%d cuts, %d attempts, %d resumes; want 3, 4, 3", proxy.cutDone.Load(), res.Attempts, o.Progress.Resumes.Load())
	}
	if res.Bytes != total {
		t.Errorf("%d bytes of data received for %d: resumed attempts sent data again", res.Bytes, total)
	}
	if o.Progress.Resumed.Load() == 0 {
		t.Errorf("no file was continued from an offset")
	}
}

// A client that stops (its process ended) and a server that restarts: the next
// Pull, to the new server, goes on from the staged copy.
func TestPullResumesAfterRestarts(t *testing.T) {
	n, src, total, dest := resumeSetup(t, ServerOptions{RateLimit: 8 << 20})

	// The first Pull ends a third of the way, as if its process died.
	o := n.pullOptions(t, "vol", dest)
	o.Progress = &Progress{}
	stopAt(t, o.Progress, total/3, func(ctx context.Context) error {
		_, err := Pull(ctx, o)
		return err
	})
	if _, err := os.Lstat(dest); !os.IsNotExist(err) {
		t.Fatalf("an interrupted Pull made its destination: %v", err)
	}
	// A new server process (another Server, another port).
	n.stop()
	srv, err := NewServer(ServerOptions{TLS: serverTLS(t, n.ca.node(t, "node-a")), Sources: n.sources})
	if err != nil {
		t.Fatal(err)
	}
	n.srv = srv
	n.serve(t, "127.0.0.1:0")
	o2 := n.pullOptions(t, "vol", dest)
	o2.Progress = &Progress{}
	res, err := Pull(testContext(t), o2)
	if err != nil {
		t.Fatal(err)
	}
	checkResumeTree(t, src, dest)
	if o2.Progress.Resumes.Load() != 1 || o2.Progress.Bytes.Load() >= total-total/4 || res.Bytes != total {
		t.Errorf("second Pull: %d resumes, %d bytes received (%d in all) of %d; want 1, the rest, all",
			o2.Progress.Resumes.Load(), o2.Progress.Bytes.Load(), res.Bytes, total)
	}
}

// A client that crashed: its state file is older than what its staged copy
// holds (the copy went on past the last checkpoint). The next Pull removes what
// the state does not vouch for and goes on from the state's position.
func TestPullResumesAfterCrash(t *testing.T) {
	n, src, total, dest := resumeSetup(t, ServerOptions{RateLimit: 8 << 20})

	o := n.pullOptions(t, "vol", dest)
	o.Progress = &Progress{}
	o.CheckpointInterval = time.Millisecond
	statePath := filepath.Join(filepath.Dir(dest), ".data.transfer", stagingState)
	earlyc := make(chan []byte, 1)
	stopAt(t, o.Progress, 2*total/3, func(ctx context.Context) error {
		go func() { // keep the state of about a third of the way
			for ctx.Err() == nil && o.Progress.Bytes.Load() < total/3 {
				time.Sleep(time.Millisecond)
			}
			b, _ := os.ReadFile(statePath)
			earlyc <- b
		}()
		_, err := Pull(ctx, o)
		return err
	})
	early := <-earlyc
	if len(early) == 0 {
		t.Fatal("no early state saved")
	}
	if err := os.WriteFile(statePath, early, 0o600); err != nil {
		t.Fatal(err)
	}
	o2 := n.pullOptions(t, "vol", dest)
	if _, err := Pull(testContext(t), o2); err != nil {
		t.Fatal(err)
	}
	checkResumeTree(t, src, dest)
}

// stopAt runs pull with a context that ends once p has counted at bytes, and
// checks that it stopped with that context's error.
func stopAt(t testing.TB, p *Progress, at int64, pull func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	go func() {
		for ctx.Err() == nil && p.Bytes.Load() < at {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}()
	err := pull(ctx)
	wantErr(t, err, context.Canceled)
}

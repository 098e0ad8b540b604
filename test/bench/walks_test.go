package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/clone"
	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// TestWalks measures the engine's tree walks (safefs.Usage, as
// NodeGetVolumeStats runs it, clone.Tree, as snapshots and clones copy a
// volume, and safefs.RemoveTree, as the purger runs it) on trees built to be
// slow or large, against a flat tree of as many entries,
// on a fresh 8 GiB loop XFS. Each walk runs in a child process (this test
// binary again) that reports its own peak RSS (VmHWM) and the time of the
// walk alone. It prints "figure:
// NAME VALUE UNIT" lines. It takes a few minutes and is skipped unless asked:
//
//	sudo BERTH_BENCH_WALKS=1 go test -run '^TestWalks$' -v -timeout 60m ./test/bench/
//
// BERTH_BENCH_WALKS_DEPTH and BERTH_BENCH_WALKS_LINKS change the chain's depth
// (100000) and the number of hard links (1000000).
func TestWalks(t *testing.T) {
	if os.Getenv("BERTH_BENCH_WALKS") == "" {
		t.Skip("a benchmark: set BERTH_BENCH_WALKS=1 to run it")
	}
	depth, links := testutil.EnvInt(t, "BERTH_BENCH_WALKS_DEPTH", 100_000, 2), testutil.EnvInt(t, "BERTH_BENCH_WALKS_LINKS", 1_000_000, 2)
	mnt := testutil.MountFS(t, testutil.XFSPlain, 8<<30)

	// deep: a chain of depth directories. flat: as many directories side by
	// side. links: links/2 files of two names each, in two directories (every
	// name's inode has two links, so a map of inodes would hold them all).
	// files: as many plain files, the reference for links.
	trees := []struct {
		name    string
		entries int
		build   func(dir string)
	}{
		{"deep", depth, func(dir string) { buildChain(t, dir, depth) }},
		{"flat", depth, func(dir string) { buildFlat(t, dir, depth) }},
		{"links", links, func(dir string) { buildFiles(t, dir, links/2, true) }},
		{"files", links, func(dir string) { buildFiles(t, dir, links, false) }},
	}
	type result struct{ usageNs, copyNs, removeNs, usageRSS, copyRSS, removeRSS float64 }
	res := map[string]result{}
	for _, tr := range trees {
		dir := filepath.Join(mnt, tr.name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		tr.build(dir)
		t.Logf("%s: %d entries built in %v", tr.name, tr.entries, time.Since(start).Round(time.Millisecond))
		syncfs(t, mnt)
		var r result
		var out string
		r.usageNs, r.usageRSS, out = walkChild(t, "usage", dir)
		t.Logf("%s: usage %s", tr.name, out)
		r.copyNs, r.copyRSS, out = walkChild(t, "copy", dir)
		t.Logf("%s: copy %s", tr.name, out)
		if err := safefs.RemoveTree(mnt, tr.name+".copy"); err != nil {
			t.Fatal(err)
		}
		r.removeNs, r.removeRSS, _ = walkChild(t, "remove", dir)
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("%s still there after its removal: %v", dir, err)
		}
		res[tr.name] = r
		n := float64(tr.entries)
		fmt.Printf("figure: walks_%s_usage_time %.3f s\n", tr.name, r.usageNs/1e9)
		fmt.Printf("figure: walks_%s_usage_per_entry %.0f ns\n", tr.name, r.usageNs/n)
		fmt.Printf("figure: walks_%s_usage_rss %.1f MiB\n", tr.name, r.usageRSS/1024)
		fmt.Printf("figure: walks_%s_copy_time %.3f s\n", tr.name, r.copyNs/1e9)
		fmt.Printf("figure: walks_%s_copy_per_entry %.0f ns\n", tr.name, r.copyNs/n)
		fmt.Printf("figure: walks_%s_copy_rss %.1f MiB\n", tr.name, r.copyRSS/1024)
		fmt.Printf("figure: walks_%s_remove_time %.3f s\n", tr.name, r.removeNs/1e9)
		fmt.Printf("figure: walks_%s_remove_per_entry %.0f ns\n", tr.name, r.removeNs/n)
		fmt.Printf("figure: walks_%s_remove_rss %.1f MiB\n", tr.name, r.removeRSS/1024)
	}
	deep, flat, lk, files := res["deep"], res["flat"], res["links"], res["files"]
	fmt.Printf("figure: walks_deep_over_flat_usage_per_entry %.2f ratio\n", deep.usageNs/flat.usageNs)
	fmt.Printf("figure: walks_deep_over_flat_copy_per_entry %.2f ratio\n", deep.copyNs/flat.copyNs)
	fmt.Printf("figure: walks_deep_over_flat_remove_per_entry %.2f ratio\n", deep.removeNs/flat.removeNs)
	fmt.Printf("figure: walks_links_over_files_usage_rss %.2f ratio\n", lk.usageRSS/files.usageRSS)
	fmt.Printf("figure: walks_links_over_files_usage_per_entry %.2f ratio\n", lk.usageNs/files.usageNs)
	fmt.Printf("figure: walks_links_over_files_copy_rss %.2f ratio\n", lk.copyRSS/files.copyRSS)
	fmt.Printf("figure: walks_links_over_files_copy_per_entry %.2f ratio\n", lk.copyNs/files.copyNs)
	fmt.Printf("figure: walks_links_over_files_remove_per_entry %.2f ratio\n", lk.removeNs/files.removeNs)
}

// TestWalkChild is TestWalks' child: it runs one walk named by BERTH_WALKS_CHILD
// ("usage:DIR", "copy:DIR", to DIR.copy, or "remove:DIR") and prints its time.
func TestWalkChild(t *testing.T) {
	op, dir, ok := strings.Cut(os.Getenv("BERTH_WALKS_CHILD"), ":")
	if !ok {
		t.Skip("run by TestWalks")
	}
	start := time.Now()
	out := ""
	switch op {
	case "usage":
		b, i, err := safefs.Usage(context.Background(), dir)
		if err != nil {
			t.Fatal(err)
		}
		out = fmt.Sprintf("%d bytes, %d inodes", b, i)
	case "copy":
		st, err := clone.Tree(context.Background(), dir, filepath.Dir(dir), filepath.Base(dir)+".copy", clone.Options{})
		if err != nil {
			t.Fatal(err)
		}
		out = fmt.Sprintf("%d files, %d dirs, %d links copied as files", st.Files, st.Dirs, linksCopied(st))
	case "remove":
		if err := safefs.RemoveTree(filepath.Dir(dir), filepath.Base(dir)); err != nil {
			t.Fatal(err)
		}
	}
	ns := time.Since(start).Nanoseconds()
	fmt.Printf("walk-ns: %d %d %s\n", ns, peakRSS(t), out)
}

// peakRSS is this process's peak RSS in KiB (VmHWM). Not the parent's
// getrusage of the child: ru_maxrss of a child that Go started with
// CLONE_VM|CLONE_VFORK includes the parent's RSS at the time of the exec.
func peakRSS(t *testing.T) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmHWM in /proc/self/status")
	return 0
}

// walkChild runs op on dir in a child process and returns the walk's time in
// ns, the child's peak RSS in KiB and what it printed after them.
func walkChild(t *testing.T, op, dir string) (ns, rssKiB float64, out string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestWalkChild$", "-test.v")
	cmd.Env = append(os.Environ(), "BERTH_WALKS_CHILD="+op+":"+dir)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stdout
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %s: %v\n%s", op, dir, err, stdout.String())
	}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "walk-ns: "); ok {
			f := strings.SplitN(rest, " ", 3)
			v, err := strconv.ParseFloat(f[0], 64)
			if err != nil || len(f) < 2 {
				t.Fatalf("bad child line %q: %v", sc.Text(), err)
			}
			rss, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatal(err)
			}
			return v, rss, strings.Join(f[2:], " ")
		}
	}
	t.Fatalf("%s %s: no time printed:\n%s", op, dir, stdout.String())
	return 0, 0, ""
}

// buildChain makes depth nested directories "d" under dir.
func buildChain(t *testing.T, dir string, depth int) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range depth {
		if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
	}
	unix.Close(fd)
}

// buildFlat makes n directories side by side in dir.
func buildFlat(t *testing.T, dir string, n int) {
	t.Helper()
	for i := range n {
		if err := unix.Mkdir(filepath.Join(dir, strconv.Itoa(i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// buildFiles makes n empty files in dir/a and, with linked, a second name of
// each in dir/b.
func buildFiles(t *testing.T, dir string, n int, linked bool) {
	t.Helper()
	for _, d := range []string{"a", "b"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		name := strconv.Itoa(i)
		sub := "a"
		if !linked && i%2 == 1 {
			sub = "b"
		}
		fd, err := unix.Open(filepath.Join(dir, sub, name), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		if linked {
			if err := unix.Link(filepath.Join(dir, "a", name), filepath.Join(dir, "b", name)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func syncfs(t *testing.T, dir string) {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		t.Fatal(err)
	}
}

// linksCopied is st.LinksCopied (a separate function so that the test builds
// on older trees, where it is 0, by editing one line).
func linksCopied(st clone.Stats) int64 { return st.LinksCopied }

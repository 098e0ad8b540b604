package clone

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

// Past the hard-link memory budget, multiply-linked files are copied without
// a record: their later names become independent copies, counted, and the
// records already made still link (and are dropped once all names are met).
func TestTreeLinkBudget(t *testing.T) {
	defer func(old int64) { maxLinkBytes = old }(maxLinkBytes)
	// Room for two records named f<k> and their directory, reached by file
	// handle (at most 128 bytes) or by its names "copy/a", whichever is more.
	maxLinkBytes = linkDirCost + max(128, 16*2+int64(len("copy")+len("a"))) + 2*(linkCost+2)

	root := t.TempDir()
	src := filepath.Join(root, "src")
	for _, d := range []string{"a", "b"} {
		mkdirAll(t, filepath.Join(src, d))
	}
	const files = 5
	for k := range files {
		a := filepath.Join(src, "a", fmt.Sprintf("f%d", k))
		writeFile(t, a, fmt.Sprintf("content %d", k))
		if err := os.Link(a, filepath.Join(src, "b", fmt.Sprintf("f%d", k))); err != nil {
			t.Fatal(err)
		}
	}
	tr := newTree(context.Background(), Options{})
	err := tr.run(src, root, "copy")
	tr.close()
	if err != nil {
		t.Fatal(err)
	}
	if tr.linkPeak > maxLinkBytes {
		t.Errorf("link records took %d bytes, budget %d", tr.linkPeak, maxLinkBytes)
	}
	linked := 0
	for k := range files {
		a := filepath.Join(root, "copy", "a", fmt.Sprintf("f%d", k))
		b := filepath.Join(root, "copy", "b", fmt.Sprintf("f%d", k))
		assertContent(t, a, fmt.Sprintf("content %d", k))
		assertContent(t, b, fmt.Sprintf("content %d", k))
		if lstat(t, a).Ino == lstat(t, b).Ino {
			linked++
		}
	}
	// The first two multiply-linked files met get records, the next three do
	// not (some may get one later, once the first two are linked, but their
	// other name was met already).
	if tr.Files != 2*files || linked != 2 || tr.LinksCopied < files-2 {
		t.Fatalf("Files %d, linked pairs %d, LinksCopied %d; want %d, 2, at least %d", tr.Files, linked, tr.LinksCopied, 2*files, files-2)
	}
}

// Recording and reaching the copies of multiply-linked files costs O(1) per
// file whatever the depth: in a 2,000-deep chain where every level holds a
// file with two names there and a file with its other name at the top, no
// path is copied or looked up (directories are reached by file handle).
// Copying the destination path for each level made it about depth²/2.
func TestTreeLinksLinear(t *testing.T) {
	testutil.RequireRoot(t) // open_by_handle_at needs CAP_DAC_READ_SEARCH
	const depth = 2000
	root := t.TempDir()
	src := filepath.Join(root, "src")
	mkdirAll(t, filepath.Join(src, "top"))
	top, err := unix.Open(filepath.Join(src, "top"), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(top)
	fd, err := unix.Open(src, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range depth {
		if err := unix.Mkdirat(fd, "d", 0o755); err != nil {
			t.Fatal(err)
		}
		next, err := unix.Openat(fd, "d", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatal(err)
		}
		fd = next
		for _, f := range []string{"f", "h"} {
			w, err := unix.Openat(fd, f, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			unix.Close(w)
		}
		if err := unix.Linkat(fd, "f", fd, "g", 0); err != nil {
			t.Fatal(err)
		}
		if err := unix.Linkat(fd, "h", top, strconv.Itoa(i), 0); err != nil {
			t.Fatal(err)
		}
	}
	unix.Close(fd)
	tr := newTree(context.Background(), Options{})
	err = tr.run(src, root, "copy")
	tr.close()
	if err != nil {
		t.Fatal(err)
	}
	if tr.LinksCopied != 0 || tr.Files != 4*depth {
		t.Fatalf("Files %d, LinksCopied %d; want %d, 0", tr.Files, tr.LinksCopied, 4*depth)
	}
	if tr.pathWork > depth {
		t.Fatalf("%d names copied or looked up for link sources in a %d-deep chain, want at most %d", tr.pathWork, depth, depth)
	}
	if len(tr.links) != 0 || tr.linkBytes != 0 {
		t.Fatalf("%d link records (%d bytes) left after the copy, want none", len(tr.links), tr.linkBytes)
	}
}

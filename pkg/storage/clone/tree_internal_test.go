package clone

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Past the hard-link memory budget, multiply-linked files are copied without
// a record: their later names become independent copies, counted, and the
// records already made still link (and are dropped once all names are met).
func TestTreeLinkBudget(t *testing.T) {
	defer func(old int64) { maxLinkBytes = old }(maxLinkBytes)
	// Room for the directory "copy/a" and two records named f<k>.
	maxLinkBytes = linkDirCost + 16*2 + int64(len("copy")+len("a")) + 2*(linkCost+2)

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
	tr := &tree{counter: counter{o: Options{}}, ctx: context.Background(), links: make(map[inodeKey]*link), from: -1}
	if err := tr.run(src, root, "copy"); err != nil {
		t.Fatal(err)
	}
	if tr.from >= 0 {
		unix.Close(tr.from)
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

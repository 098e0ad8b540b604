package clone

import (
	"context"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/berth-csi/berth/pkg/storage/safefs"
	"golang.org/x/sys/unix"
)

// BenchmarkTree1GiB copies 1 GiB of random data in 16 files of 64 MiB on
// XFS with reflink (shared extents) and on ext4 (a real copy). Each
// operation includes a syncfs of the destination, as a snapshot needs before
// it is published; removing the copy is not timed. The two ns/op give the
// ratio in one run:
//
//	go test -run '^$' -bench Tree1GiB ./pkg/storage/clone/
func BenchmarkTree1GiB(b *testing.B) {
	for _, tfs := range []testFS{xfsReflink, ext4FS} {
		name := tfs.name
		if !tfs.reflink {
			name += "-copy"
		}
		b.Run(name, func(b *testing.B) {
			mnt := mountFS(b, tfs, 4<<30)
			src := filepath.Join(mnt, "vol")
			mkdirAll(b, src)
			for i := range 16 {
				writeRandom(b, filepath.Join(src, "f"+strconv.Itoa(i)), 64<<20)
			}
			fd, err := unix.Open(mnt, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				b.Fatal(err)
			}
			defer unix.Close(fd)
			if err := unix.Syncfs(fd); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(1 << 30)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				st, err := Tree(context.Background(), src, mnt, "copy", Options{})
				if err != nil {
					b.Fatal(err)
				}
				if err := unix.Syncfs(fd); err != nil {
					b.Fatal(err)
				}
				if st.Reflinked != tfs.reflink {
					b.Fatalf("Reflinked = %v, want %v", st.Reflinked, tfs.reflink)
				}
				b.StopTimer()
				if err := safefs.RemoveTree(mnt, "copy"); err != nil {
					b.Fatal(err)
				}
				if err := unix.Syncfs(fd); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

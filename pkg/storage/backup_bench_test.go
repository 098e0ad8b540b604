package storage_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testengine"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage"
)

// BenchmarkIncrementalBackup times the backup of an image volume written whole with
// random data into a shared pool, then a second backup after 1% of the volume was
// written again, in the same run, and prints their ratio as
// "figure: backup-incremental-over-full R x" (docs/benchmarks.md). The volume's pool
// is XFS with reflinks (the second backup compares its copy with the first's by
// their extents); the shared pool is a directory of this machine's disk standing
// for the distributed filesystem. The 1% is written as 1 MiB pieces at random
// offsets (BERTH_BENCH_BACKUP_PIECE_KIB sets the piece: at 4, 1% of 4 KiB blocks at
// random touch nearly every 4 MiB chunk, and the second backup writes them all
// again). The page cache of the volume and the backups is dropped before each
// backup. As root:
//
//	sudo go test -run '^$' -bench IncrementalBackup -benchtime 1x ./pkg/storage/
//	sudo BERTH_BENCH_BACKUP_MIB=10240 go test -run '^$' -bench IncrementalBackup -benchtime 1x -timeout 60m ./pkg/storage/
//
// BERTH_BENCH_BACKUP_MIB sets the volume's size (1024 MiB).
func BenchmarkIncrementalBackup(b *testing.B) {
	testutil.RequireRoot(b)
	size := int64(testutil.EnvInt(b, "BERTH_BENCH_BACKUP_MIB", 1024, 16)) << 20
	piece := int64(testutil.EnvInt(b, "BERTH_BENCH_BACKUP_PIECE_KIB", 1024, 4)) << 10
	mnt := testutil.MountFS(b, testutil.XFSPlain, 2*size+1<<30)
	loopFile := filepath.Join(filepath.Dir(mnt), "xfs.img")
	_, sh := testutil.SharedDir(b)
	e := testengine.Start(b, storage.Config{Pools: []storage.PoolConfig{
		{Name: "img", Path: filepath.Join(mnt, "pool"), Kind: storage.KindImage, Overcommit: true},
		{Name: "sh", Path: sh, Kind: storage.KindShared, Overcommit: true},
	}})
	src, err := e.Pool("img")
	if err != nil {
		b.Fatal(err)
	}
	r, err := src.Create(context.Background(), storage.CreateRequest{Name: "vol", RequiredBytes: size, AccessType: storage.AccessBlock,
		Parameters: map[string]string{"pool": "img"}})
	if err != nil {
		b.Fatal(err)
	}
	image := src.ImagePath(r.Hash())
	img, err := os.OpenFile(image, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer img.Close()
	rng := rand.NewChaCha8([32]byte{2})
	buf := make([]byte, 4<<20)
	fillRandom(b, img, size, rng, buf)
	timed := func(name string) (*storage.Snapshot, time.Duration) {
		b.Helper()
		dropCache(b, image, loopFile)
		start := time.Now()
		s := backup(b, e, name, r)
		return s, time.Since(start)
	}
	b.ResetTimer()
	full, tFull := timed("full")
	b.StopTimer()
	pick := rand.New(rand.NewPCG(3, 4))
	for written := int64(0); written < size/100; written += piece {
		_, _ = rng.Read(buf[:piece])
		if _, err := img.WriteAt(buf[:piece], pick.Int64N(size/piece)*piece); err != nil {
			b.Fatal(err)
		}
	}
	if err := img.Sync(); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	inc, tInc := timed("incremental")
	b.StopTimer()
	if inc.Backup.Base != full.ID {
		b.Fatalf("the second backup is based on %q, not the first", inc.Backup.Base)
	}
	fmt.Printf("figure: backup-full-time %.3f s\n", tFull.Seconds())
	fmt.Printf("figure: backup-incremental-time %.3f s\n", tInc.Seconds())
	fmt.Printf("figure: backup-incremental-written %.4f x\n", float64(inc.Backup.WrittenBytes)/float64(full.Backup.WrittenBytes))
	fmt.Printf("figure: backup-incremental-over-full %.4f x\n", tInc.Seconds()/tFull.Seconds())
	b.Logf("%d MiB image, 1%% rewritten in %d KiB pieces; full: %v, %d bytes written; incremental: %v, %d written, %d linked (%d unread)",
		size>>20, piece>>10, tFull, full.Backup.WrittenBytes, tInc, inc.Backup.WrittenBytes, inc.Backup.LinkedBytes, inc.Backup.UnreadBytes)
}

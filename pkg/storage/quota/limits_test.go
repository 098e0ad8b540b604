package quota

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"golang.org/x/sys/unix"
)

const (
	kiB = 1 << 10
	miB = 1 << 20
	// slack is how far usage may stray from the bytes written: a few blocks
	// for the project's directories (ext4 gives each one a 4 KiB block).
	slack = 4 * 4 * kiB
)

// errFull is what a write or create past a project limit fails with: XFS
// reports a full project as a full filesystem.
var errFull = map[string]error{"xfs": unix.ENOSPC, "ext4": unix.EDQUOT}

func TestLimits(t *testing.T) {
	// roundedLimit is what a block limit of 8 MiB + 1 byte reads back as.
	roundedLimit := map[string]uint64{
		"xfs":  8*miB + 4*kiB, // XFS rounds up to its 4 KiB block
		"ext4": 8*miB + 512,   // ext4 keeps the 512-byte rounding
	}
	for _, spec := range quotaSpecs {
		t.Run(spec.name, func(t *testing.T) {
			mnt := mountFS(t, spec)
			if err := Check(mnt); err != nil {
				t.Fatalf("Check: %v", err)
			}
			vol := mkdir(t, mnt, "vol")
			if err := SetProject(vol, 42); err != nil {
				t.Fatal(err)
			}
			wantProject(t, vol, 42)
			if err := SetLimits(mnt, 42, Limits{BlockHardBytes: 8 * miB}); err != nil {
				t.Fatalf("SetLimits: %v", err)
			}

			// Writing 9 MiB stops at about 8 MiB, in a file of a subdirectory.
			sub := mkdir(t, vol, "sub")
			wantProject(t, sub, 42)
			big := filepath.Join(sub, "big")
			written, err := writeFile(big, 9*miB)
			if !errors.Is(err, errFull[spec.name]) {
				t.Fatalf("writing 9 MiB under an 8 MiB limit: wrote %d bytes, err = %v; want %v", written, err, errFull[spec.name])
			}
			t.Logf("writing 9 MiB under an 8 MiB limit stopped after %d bytes (8 MiB - %d): %v", written, 8*miB-written, err)
			if written > 8*miB || written < 8*miB-slack {
				t.Errorf("wrote %d bytes under an 8 MiB limit, want within %d below 8 MiB", written, slack)
			}
			u, err := Get(mnt, 42)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			t.Logf("usage at the limit: %+v", u)
			if u.UsedBytes < uint64(written) || u.UsedBytes > uint64(written)+slack {
				t.Errorf("Get: UsedBytes = %d, want between %d and %d more", u.UsedBytes, written, slack)
			}
			if want := (Limits{BlockHardBytes: 8 * miB}); u.Limits != want {
				t.Errorf("Get: Limits = %+v, want %+v", u.Limits, want)
			}
			if u.UsedInodes != 3 { // vol, sub, big
				t.Errorf("Get: UsedInodes = %d, want 3", u.UsedInodes)
			}
			crossCheck(t, mnt, 42, u, 8*miB)
			// statfs inside the project reports its limit as the size.
			var st unix.Statfs_t
			if err := unix.Statfs(sub, &st); err != nil {
				t.Fatal(err)
			}
			if size := st.Blocks * uint64(st.Bsize); size != 8*miB {
				t.Errorf("statfs of a directory of the project: size %d, want the 8 MiB limit", size)
			}

			// Raising the limit lets writing go on.
			if err := SetLimits(mnt, 42, Limits{BlockHardBytes: 16 * miB}); err != nil {
				t.Fatalf("SetLimits 16 MiB: %v", err)
			}
			if n, err := writeFile(big, 2*miB); err != nil {
				t.Errorf("writing 2 MiB more after raising the limit to 16 MiB: wrote %d, err = %v", n, err)
			}

			// The block limit is rounded up to whole 512-byte blocks, and by XFS
			// to whole filesystem blocks.
			if err := SetLimits(mnt, 42, Limits{BlockHardBytes: 8*miB + 1}); err != nil {
				t.Fatal(err)
			}
			if u, err := Get(mnt, 42); err != nil || u.BlockHardBytes != roundedLimit[spec.name] {
				t.Errorf("limit of 8 MiB + 1 reads back as %d (err %v), want %d", u.BlockHardBytes, err, roundedLimit[spec.name])
			}

			// Clear lifts the limits and keeps the usage.
			if err := Clear(mnt, 42); err != nil {
				t.Fatalf("Clear: %v", err)
			}
			cleared, err := Get(mnt, 42)
			if err != nil {
				t.Fatal(err)
			}
			if cleared.Limits != (Limits{}) || cleared.UsedInodes != 3 || cleared.UsedBytes < 10*miB {
				t.Errorf("Get after Clear = %+v, want no limits, 3 inodes and over 10 MiB used", cleared)
			}
			crossCheck(t, mnt, 42, cleared, 0)
			if n, err := writeFile(big, 8*miB); err != nil {
				t.Errorf("writing 8 MiB more after Clear: wrote %d, err = %v", n, err)
			}
		})
	}
}

func TestInodeLimit(t *testing.T) {
	for _, spec := range quotaSpecs {
		t.Run(spec.name, func(t *testing.T) {
			mnt := mountFS(t, spec)
			vol := mkdir(t, mnt, "vol")
			if err := SetProject(vol, 43); err != nil {
				t.Fatal(err)
			}
			if err := SetLimits(mnt, 43, Limits{InodeHard: 10}); err != nil {
				t.Fatal(err)
			}
			u, err := Get(mnt, 43)
			if err != nil {
				t.Fatal(err)
			}
			if u.UsedInodes != 1 || u.InodeHard != 10 {
				t.Fatalf("Get = %+v, want 1 inode used (the directory) of 10", u)
			}
			// The directory is inode 1 of 10: nine files fit, the tenth (the
			// eleventh inode) does not.
			var created int
			err = testutil.WithoutSysResource(func() error {
				for created = 0; created < 20; created++ {
					f, err := os.Create(filepath.Join(vol, fmt.Sprint("f", created)))
					if err != nil {
						return err
					}
					f.Close()
				}
				return nil
			})
			if !errors.Is(err, errFull[spec.name]) || created != 9 {
				t.Fatalf("created %d files under a limit of 10 inodes, then err = %v; want 9 then %v", created, err, errFull[spec.name])
			}
			var st unix.Statfs_t
			if err := unix.Statfs(vol, &st); err != nil || st.Files != 10 || st.Ffree != 0 {
				t.Errorf("statfs of the project directory: %d inodes, %d free, err %v; want the limit of 10, 0 free", st.Files, st.Ffree, err)
			}
			if u, err := Get(mnt, 43); err != nil || u.UsedInodes != 10 {
				t.Errorf("Get = %+v, %v; want 10 inodes used", u, err)
			}
			if err := Clear(mnt, 43); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(filepath.Join(vol, "more"), 0o755); err != nil {
				t.Errorf("mkdir after Clear: %v", err)
			}
		})
	}
}

func TestGetUnusedID(t *testing.T) {
	for _, spec := range quotaSpecs {
		t.Run(spec.name, func(t *testing.T) {
			mnt := mountFS(t, spec)
			if u, err := Get(mnt, 4242); err != nil || u != (Usage{}) {
				t.Errorf("Get of an unused ID = %+v, %v; want zeros, nil", u, err)
			}
			// An ID whose limits were cleared reads as zeros as well.
			if err := SetLimits(mnt, 4243, Limits{BlockHardBytes: miB, InodeHard: 5}); err != nil {
				t.Fatal(err)
			}
			if err := Clear(mnt, 4243); err != nil {
				t.Fatal(err)
			}
			if u, err := Get(mnt, 4243); err != nil || u != (Usage{}) {
				t.Errorf("Get of a cleared, unused ID = %+v, %v; want zeros, nil", u, err)
			}
		})
	}
}

func TestSetLimitsRefusesProjectZero(t *testing.T) {
	dir := t.TempDir()
	for name, err := range map[string]error{
		"SetLimits": SetLimits(dir, 0, Limits{BlockHardBytes: miB}),
		"Clear":     Clear(dir, 0),
	} {
		if !errors.Is(err, unix.EINVAL) {
			t.Errorf("%s of project 0 = %v, want EINVAL", name, err)
		}
	}
}

func TestLimitsWithoutEnforcement(t *testing.T) {
	t.Run("ext4 without prjquota accounts but does not enforce", func(t *testing.T) {
		mnt := mountFS(t, ext4NoOpt)
		vol := mkdir(t, mnt, "vol")
		if err := SetProject(vol, 42); err != nil {
			t.Fatal(err)
		}
		if err := SetLimits(mnt, 42, Limits{BlockHardBytes: miB}); err != nil {
			t.Fatalf("SetLimits = %v; the kernel takes limits it will not enforce", err)
		}
		if n, err := writeFile(filepath.Join(vol, "f"), 2*miB); err != nil {
			t.Fatalf("writing 2 MiB over a 1 MiB limit that is not enforced: wrote %d, err = %v", n, err)
		}
		u, err := Get(mnt, 42)
		if err != nil || u.UsedBytes < 2*miB || u.BlockHardBytes != miB {
			t.Errorf("Get = %+v, %v; want over 2 MiB used and the 1 MiB limit", u, err)
		}
	})
	t.Run("xfs without prjquota refuses", func(t *testing.T) {
		mnt := mountFS(t, xfsPlain)
		err := SetLimits(mnt, 42, Limits{BlockHardBytes: miB})
		if !errors.Is(err, ErrNotEnforced) {
			t.Errorf("SetLimits = %v, want ErrNotEnforced", err)
		}
		t.Logf("SetLimits: %v", err)
		_, err = Get(mnt, 42)
		if !errors.Is(err, ErrNotEnforced) {
			t.Errorf("Get = %v, want ErrNotEnforced", err)
		}
		t.Logf("Get: %v", err)
	})
	t.Run("ext4 without the project feature refuses", func(t *testing.T) {
		mnt := mountFS(t, ext4NoFeat)
		err := SetLimits(mnt, 42, Limits{BlockHardBytes: miB})
		if !errors.Is(err, ErrNotEnforced) {
			t.Errorf("SetLimits = %v, want ErrNotEnforced", err)
		}
		t.Logf("SetLimits: %v", err)
		_, err = Get(mnt, 42)
		if !errors.Is(err, ErrNotEnforced) {
			t.Errorf("Get = %v, want ErrNotEnforced", err)
		}
		t.Logf("Get: %v", err)
	})
}

// TestSysResourceBypass records that on ext4 a process with CAP_SYS_RESOURCE
// is not held to project limits (the VFS quota code lets it through), while
// XFS holds everyone to them.
func TestSysResourceBypass(t *testing.T) {
	for _, tc := range []struct {
		spec     fsSpec
		enforced bool
	}{{xfsPrj, true}, {ext4Prj, false}} {
		t.Run(tc.spec.name, func(t *testing.T) {
			mnt := mountFS(t, tc.spec)
			vol := mkdir(t, mnt, "vol")
			if err := SetProject(vol, 44); err != nil {
				t.Fatal(err)
			}
			if err := SetLimits(mnt, 44, Limits{BlockHardBytes: miB}); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(filepath.Join(vol, "f"), os.O_WRONLY|os.O_CREATE, 0o600)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			_, err = f.Write(make([]byte, 2*miB))
			t.Logf("root with CAP_SYS_RESOURCE writing 2 MiB under a 1 MiB limit: %v", err)
			if enforced := errors.Is(err, errFull[tc.spec.name]); enforced != tc.enforced {
				t.Errorf("root with CAP_SYS_RESOURCE writing 2 MiB under a 1 MiB limit: err = %v, want enforced = %v", err, tc.enforced)
			}
		})
	}
}

// crossCheck compares what Get returned with what xfs_quota (which also
// reads ext4 quotas, with -f) reports for project id on mnt: usage in KiB, and
// soft limits equal to the hard ones, which must be wantHard.
func crossCheck(t *testing.T, mnt string, id uint32, u Usage, wantHard uint64) {
	t.Helper()
	if _, err := exec.LookPath("xfs_quota"); err != nil {
		t.Logf("xfs_quota not found, no cross-check: %v", err)
		return
	}
	cmd := fmt.Sprintf("quota -p -N -b -i -n %d", id)
	out, err := exec.Command("xfs_quota", "-x", "-f", "-c", cmd, mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("xfs_quota -c %q: %v: %s", cmd, err, out)
	}
	// device, KiB used, soft, hard, warns, [grace], inodes used, soft, hard, ...
	f := strings.Fields(string(out))
	if len(f) < 9 {
		t.Fatalf("xfs_quota -c %q: unexpected output %q", cmd, out)
	}
	n := func(i int) uint64 {
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			t.Fatalf("xfs_quota -c %q: field %d of %q: %v", cmd, i, out, err)
		}
		return v
	}
	used, soft, hard, inodes, isoft, ihard := n(1)*kiB, n(2)*kiB, n(3)*kiB, n(6), n(7), n(8)
	if used > u.UsedBytes+kiB || used+kiB < u.UsedBytes || inodes != u.UsedInodes {
		t.Errorf("xfs_quota reports %d bytes and %d inodes used, Get %d and %d", used, inodes, u.UsedBytes, u.UsedInodes)
	}
	if soft != wantHard || hard != wantHard || isoft != u.InodeHard || ihard != u.InodeHard {
		t.Errorf("xfs_quota reports block limits %d/%d and inode limits %d/%d (soft/hard), want %d/%d and %d/%d",
			soft, hard, isoft, ihard, wantHard, wantHard, u.InodeHard, u.InodeHard)
	}
}

// writeFile appends n bytes to path in 64 KiB writes without CAP_SYS_RESOURCE,
// syncs it, and returns how many bytes were written and the first error.
func writeFile(path string, n int) (int, error) {
	var written int
	err := testutil.WithoutSysResource(func() error {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		buf := make([]byte, 64*kiB)
		for i := range buf {
			buf[i] = byte(i)
		}
		for written < n {
			m, err := f.Write(buf[:min(len(buf), n-written)])
			written += m
			if err != nil {
				return err
			}
		}
		return f.Sync()
	})
	return written, err
}

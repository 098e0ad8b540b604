// Package sanity runs csi-sanity, the CSI conformance suite, in-process against a
// real Berth driver serving a pool on a unix socket: with real mounts as root
// (TestSanity), and over the fake host of internal/fakehost as any user
// (TestSanityFakeHost; `make sanity-nonroot` runs it unprivileged).
//
// Specs csi-sanity skips by itself, and why that is right for Berth today:
//   - ControllerPublish/Unpublish: Berth needs no attach step (CSIDriver attachRequired
//     false), so PUBLISH_UNPUBLISH_VOLUME is not advertised.
//   - ControllerExpandVolume: expansion is node-only (docs/design.md, "Expansion"), so
//     the controller does not advertise EXPAND_VOLUME; NodeExpandVolume specs run.
//   - ModifyVolume: advertised only by a driver with a pool that has mutable
//     parameters (quota: inodeLimit; dir, quota and image on a block device: the
//     per-pod I/O limits), so its specs run in the image cases, the dir cases whose
//     temporary directory lies on a block device (not a tmpfs), and the quota cases
//     where the kernel enforces project quotas (make quota-vm otherwise); never in the
//     shared case.
//   - Group snapshots: the GroupController service is advertised only where a
//     group can be taken (a pool whose filesystem has reflinks), so its specs run in
//     the XFS cases (dir-xfs-reflink; quota-xfs where the kernel has quotas) and in
//     `make sanity`, whose driver serves a second pool on XFS for them. csi-test
//     v5.6.0's group specs check only requests that fail; the rest is tested in
//     pkg/controller/group_test.go and pkg/storage/group*_test.go.
//   - Node volume attach limit spec: TestNodeVolumeAttachLimit is left false because
//     --max-volumes-per-node is 0 (no limit) here.
//   - Specs for the other access type than the case's (mount or block).
package sanity

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/fakehost"
	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/driver"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// idGen makes IDs in Berth's format, so "valid but unknown" IDs really are valid.
type idGen struct{ pool string }

func (g idGen) GenerateUniqueValidVolumeID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "b1-" + g.pool + "-" + hex.EncodeToString(b)
}
func (idGen) GenerateInvalidVolumeID() string   { return "not-a-berth-volume-id" }
func (idGen) GenerateUniqueValidNodeID() string { return "node-" + rand.Text()[:8] }
func (idGen) GenerateInvalidNodeID() string     { return "invalid-node" }

// run starts the driver on pools (the first one is tested) and runs csi-sanity.
func run(t *testing.T, pools []storage.PoolConfig, tune func(*sanity.TestConfig)) {
	runOn(t, storage.Host{}, pools, tune)
}

// runOn is run with the driver reaching the machine through host (zero: the real one).
func runOn(t *testing.T, host storage.Host, pools []storage.PoolConfig, tune func(*sanity.TestConfig)) {
	base := t.TempDir()
	kubelet := filepath.Join(base, "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(testutil.ShortTempDir(t), "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- driver.Run(ctx, driver.Options{
			Endpoint: sock, NodeID: "sanity-node", DriverName: "berth.csi.io", Mode: driver.ModeAll,
			Config: storage.Config{Pools: pools}, KubeletDir: kubelet, Host: host,
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("driver: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("driver did not stop")
		}
	})

	waitReady(t, sock)
	config := sanity.NewTestConfig()
	config.Address = "unix://" + sock
	config.TargetPath = filepath.Join(kubelet, "pods", "target")
	config.StagingPath = filepath.Join(kubelet, "pods", "staging")
	config.TestVolumeSize = 64 << 20
	config.TestVolumeParameters = map[string]string{"pool": pools[0].Name}
	if pools[0].Kind != storage.KindShared {
		// Specs run only where MODIFY_VOLUME is advertised (above).
		config.TestVolumeMutableParameters = map[string]string{storage.ParamReadBytesPerSecond: "10Mi"}
	}
	config.IDGen = idGen{pool: pools[0].Name}
	config.IdempotentCount = 3
	if tune != nil {
		tune(&config)
	}
	sanity.Test(t, config)
}

// waitReady waits until Probe answers ready, as kubelet waits for the registration a
// node service makes only then: a shared pool is mounted during start-up.
func waitReady(t *testing.T, sock string) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := csi.NewIdentityClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.Probe(context.Background(), &csi.ProbeRequest{})
		if err == nil && resp.GetReady().GetValue() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("driver not ready after 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cases are the pool configurations csi-sanity runs against. Ginkgo runs one suite
// per process, so TestSanity runs each case in a child process of this test binary.
var cases = map[string]func(t *testing.T){
	"dir": func(t *testing.T) {
		run(t, []storage.PoolConfig{{Name: "default", Path: filepath.Join(t.TempDir(), "pool"), Kind: storage.KindDir}}, nil)
	},
	// On XFS with reflink, snapshots and clones are FICLONE copies, ready at once;
	// on the ext4 of the "dir" case they are background copies.
	"dir-xfs-reflink": func(t *testing.T) {
		mnt := testutil.MountFS(t, testutil.XFSPlain, 4<<30)
		run(t, []storage.PoolConfig{{Name: "default", Path: filepath.Join(mnt, "pool"), Kind: storage.KindDir}}, nil)
	},
	// The quota pool sits on XFS and on ext4 with project quotas, each made on a loop
	// file; every volume's size is a hard limit there.
	"quota-xfs":  func(t *testing.T) { quotaCase(t, testutil.XFSPrjQuota) },
	"quota-ext4": func(t *testing.T) { quotaCase(t, testutil.Ext4PrjQuota) },
	// The image pool serves both access types: a filesystem on a loop device, and
	// the loop device itself as a raw block volume.
	"image-mount": func(t *testing.T) { imageCase(t, "mount") },
	"image-block": func(t *testing.T) { imageCase(t, "block") },
	// A shared pool on a real GlusterFS volume, which the driver mounts itself;
	// skipped, with the reason, where GlusterFS is not installed or cannot run.
	"shared-gluster": func(t *testing.T) {
		g := testutil.StartGluster(t)
		pool := filepath.Join(testutil.ShortTempDir(t), "pool")
		g.UnmountAtCleanup(t, pool)
		run(t, []storage.PoolConfig{{Name: "gl", Path: pool, Kind: storage.KindShared, Source: g.Source, FSType: "glusterfs"}}, nil)
	},
}

func quotaCase(t *testing.T, fs testutil.FS) {
	// Skipped, with the reason, on a kernel built without quota support.
	testutil.RequireQuotaKernel(t)
	mnt := testutil.MountFS(t, fs, 1<<30)
	run(t, []storage.PoolConfig{{Name: "q", Path: filepath.Join(mnt, "pool"), Kind: storage.KindQuota}}, func(c *sanity.TestConfig) {
		c.TestVolumeExpandSize = 96 << 20
		c.TestVolumeMutableParameters = map[string]string{storage.ParamInodeLimit: "1000", storage.ParamReadBytesPerSecond: "10Mi"}
	})
}

func imageCase(t *testing.T, access string) {
	run(t, []storage.PoolConfig{{Name: "img", Path: filepath.Join(t.TempDir(), "pool"), Kind: storage.KindImage}}, func(c *sanity.TestConfig) {
		c.TestVolumeAccessType = access
		// XFS: it grows while mounted with CAP_SYS_ADMIN alone, where ext4 needs
		// CAP_SYS_RESOURCE, which CI machines lack; XFS wants 300 MiB at least.
		c.TestVolumeParameters["fsType"] = "xfs"
		c.TestVolumeSize = 320 << 20
		c.TestVolumeExpandSize = 384 << 20
	})
}

// fakeCases run csi-sanity over the fake host: every mount and loop device is a
// record in memory, so the node service's logic runs without root. The files the
// engine makes (pools, records, images, targets) are real. The image pool's start-up
// check still looks for /dev/loop-control on the machine.
var fakeCases = map[string]func(t *testing.T){
	"dir-fakehost": func(t *testing.T) {
		fh := fakehost.New(filepath.Join(t.TempDir(), "dev"))
		runOn(t, fh.Host(), []storage.PoolConfig{{Name: "default", Path: filepath.Join(t.TempDir(), "pool"), Kind: storage.KindDir}}, nil)
	},
	"image-mount-fakehost": func(t *testing.T) { fakeImageCase(t, "mount") },
	"image-block-fakehost": func(t *testing.T) { fakeImageCase(t, "block") },
}

func fakeImageCase(t *testing.T, access string) {
	fh := fakehost.New(filepath.Join(t.TempDir(), "dev"))
	runOn(t, fh.Host(), []storage.PoolConfig{{Name: "img", Path: filepath.Join(t.TempDir(), "pool"), Kind: storage.KindImage}}, func(c *sanity.TestConfig) {
		c.TestVolumeAccessType = access
		c.TestVolumeExpandSize = 96 << 20
	})
}

const (
	caseEnv = "BERTH_SANITY_CASE"
	// nonrootEnv=1 (make sanity-nonroot) makes the fake-host cases fail, not pass,
	// when they run privileged.
	nonrootEnv = "BERTH_SANITY_NONROOT"
)

// TestSanity runs csi-sanity once per pool configuration, each in its own process.
func TestSanity(t *testing.T) {
	testutil.RequireRoot(t)
	if os.Getenv(caseEnv) != "" {
		t.Skip("running as a single case")
	}
	for _, name := range sorted(cases) {
		t.Run(name, func(t *testing.T) { runCase(t, name) })
	}
}

// TestSanityFakeHost runs csi-sanity over the fake host, each case in its own process,
// as whatever user runs it; unprivileged only when BERTH_SANITY_NONROOT=1.
func TestSanityFakeHost(t *testing.T) {
	if os.Getenv(caseEnv) != "" {
		t.Skip("running as a single case")
	}
	requireUnprivileged(t)
	for _, name := range sorted(fakeCases) {
		t.Run(name, func(t *testing.T) { runCase(t, name) })
	}
}

// runCase runs one case in a child process of this test binary (ginkgo runs one suite
// per process) and logs csi-sanity's counts.
func runCase(t *testing.T, name string) {
	cmd := exec.Command(os.Args[0], "-test.run", "^TestSanityCase$", "-test.v", "-ginkgo.no-color")
	cmd.Env = append(os.Environ(), caseEnv+"="+name)
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil {
		t.Fatalf("csi-sanity over %s: %v\n%s", name, err, text)
	}
	if i := strings.Index(text, "--- SKIP: TestSanityCase"); i >= 0 {
		t.Skip(strings.TrimSpace(text[i:]))
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "Ran ") || strings.Contains(line, "Passed") && strings.Contains(line, "Failed") {
			t.Log(strings.TrimSpace(line))
		}
	}
}

// TestSanityCase is one csi-sanity run, chosen by BERTH_SANITY_CASE.
func TestSanityCase(t *testing.T) {
	name := os.Getenv(caseEnv)
	if name == "" {
		t.Skip("run by TestSanity and TestSanityFakeHost")
	}
	if c, ok := fakeCases[name]; ok {
		requireUnprivileged(t)
		c(t)
		return
	}
	testutil.RequireRoot(t)
	c, ok := cases[name]
	if !ok {
		t.Fatalf("unknown case %q", name)
	}
	c(t)
}

// requireUnprivileged fails the test, when BERTH_SANITY_NONROOT=1, if it runs as root
// or with any effective capability: a run meant to prove that the fake host needs no
// privilege must not pass by having it.
func requireUnprivileged(t *testing.T) {
	t.Helper()
	if os.Getenv(nonrootEnv) != "1" {
		return
	}
	if os.Geteuid() == 0 {
		t.Fatalf("%s=1 but running as root: run it unprivileged (make sanity-nonroot)", nonrootEnv)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatalf("capget: %v", err)
	}
	if data[0].Effective != 0 || data[1].Effective != 0 {
		t.Fatalf("%s=1 but running with effective capabilities %#x %#x", nonrootEnv, data[1].Effective, data[0].Effective)
	}
}

func sorted(m map[string]func(*testing.T)) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

package controller_test

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// withReq returns a valid request for name changed by edit.
func withReq(name string, edit func(*csi.CreateVolumeRequest)) *csi.CreateVolumeRequest {
	r := createReq(name, 1<<20)
	edit(r)
	return r
}

func TestCreateVolumeInvalidArgument(t *testing.T) {
	noMode := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}}
	noType := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	caps := func(c ...*csi.VolumeCapability) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) { r.VolumeCapabilities = c }
	}
	params := func(p map[string]string) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) { r.Parameters = p }
	}
	capacity := func(req, limit int64) func(*csi.CreateVolumeRequest) {
		return func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: req, LimitBytes: limit}
		}
	}
	tests := []struct {
		name     string
		req      *csi.CreateVolumeRequest
		wantCode codes.Code
	}{
		{"missing name", createReq("", 1<<20), codes.InvalidArgument},
		{"name with dot-dot", createReq("a..b", 1<<20), codes.InvalidArgument},
		{"name is dot-dot", createReq("..", 1<<20), codes.InvalidArgument},
		{"name with slash", createReq("a/b", 1<<20), codes.InvalidArgument},
		{"name is a path", createReq("/etc/passwd", 1<<20), codes.InvalidArgument},
		{"name with NUL", createReq("a\x00b", 1<<20), codes.InvalidArgument},
		{"name not UTF-8", createReq("a\xff\xfeb", 1<<20), codes.InvalidArgument},
		{"name of 4 KiB", createReq(strings.Repeat("a", 4096), 1<<20), codes.InvalidArgument},
		{"name in the ephemeral namespace", createReq("ephemeral:csi-0123", 1<<20), codes.InvalidArgument},
		{"name with a leading dash", createReq("-v", 1<<20), codes.InvalidArgument},
		{"missing capabilities", withReq("v", caps()), codes.InvalidArgument},
		{"nil capability", withReq("v", caps(nil)), codes.InvalidArgument},
		{"capability without access mode", withReq("v", caps(noMode)), codes.InvalidArgument},
		{"capability without access type", withReq("v", caps(noType)), codes.InvalidArgument},
		{"unknown access mode", withReq("v", caps(mountCap(csi.VolumeCapability_AccessMode_UNKNOWN))), codes.InvalidArgument},
		{"MULTI_NODE_MULTI_WRITER", withReq("v", caps(mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER))), codes.InvalidArgument},
		{"MULTI_NODE_READER_ONLY", withReq("v", caps(mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY))), codes.InvalidArgument},
		{"MULTI_NODE_SINGLE_WRITER", withReq("v", caps(mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER))), codes.InvalidArgument},
		{"MULTI_NODE among node-local modes", withReq("v", caps(rwo, mountCap(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER))), codes.InvalidArgument},
		{"block access on a dir pool", withReq("v", caps(blockCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER))), codes.InvalidArgument},
		{"unknown parameter", withReq("v", params(map[string]string{"foo": "bar"})), codes.InvalidArgument},
		{"unknown pool", withReq("v", params(map[string]string{controller.ParamPool: "nope"})), codes.InvalidArgument},
		{"invalid pool name", withReq("v", params(map[string]string{controller.ParamPool: "../etc"})), codes.InvalidArgument},
		{"negative required bytes", withReq("v", capacity(-1, 0)), codes.InvalidArgument},
		{"negative limit bytes", withReq("v", capacity(0, -1)), codes.InvalidArgument},
		{"required above limit", withReq("v", capacity(2<<20, 1<<20)), codes.InvalidArgument},
		{"content source names an unknown volume", withReq("v", func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
				Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: unknownID}}}
		}), codes.NotFound},
		{"content source with a hostile volume ID", withReq("v", func(r *csi.CreateVolumeRequest) {
			r.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
				Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "../etc"}}}
		}), codes.InvalidArgument},
		{"pvc name parameter accepted", withReq("v", params(map[string]string{
			"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "default",
		})), codes.OK},
		{"explicit default pool accepted", withReq("v", params(map[string]string{controller.ParamPool: "default"})), codes.OK},
		{"limit without required accepted", withReq("v", capacity(0, 1<<20)), codes.OK},
		{"SINGLE_NODE_MULTI_WRITER accepted", withReq("v", caps(mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER))), codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			resp, err := f.srv.CreateVolume(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode)
			if tc.wantCode != codes.OK {
				if n := len(f.engine.AllVolumes()); n != 0 {
					t.Fatalf("a refused request left %d volumes", n)
				}
				return
			}
			if !f.exists(resp.GetVolume().GetVolumeId()) {
				t.Fatalf("volume %s was not created", resp.GetVolume().GetVolumeId())
			}
		})
	}
}

// tinyPool is a dir pool under base whose reserve leaves 32 MiB of the filesystem's
// size to volumes. A synced 1 MiB ballast file makes sure the filesystem has blocks in
// use, so less than 32 MiB of its free space is left to volumes.
func tinyPool(t *testing.T, base string) storage.PoolConfig {
	t.Helper()
	ballast, err := os.Create(filepath.Join(base, "ballast"))
	if err != nil {
		t.Fatal(err)
	}
	defer ballast.Close()
	if _, err := ballast.Write(make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if err := ballast.Sync(); err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(base, &st); err != nil {
		t.Fatal(err)
	}
	pc := dirPool(base, "default")
	pc.ReservedBytes = int64(st.Blocks)*st.Bsize - 32<<20
	return pc
}

func TestCreateVolumeSize(t *testing.T) {
	tests := []struct {
		name     string
		tiny     bool
		req      *csi.CreateVolumeRequest
		wantCode codes.Code
		wantSize int64
	}{
		{"larger than the filesystem", false, createReq("v", 1<<50), codes.OutOfRange, 0},
		{"larger than a tiny pool", true, createReq("v", 64<<20), codes.OutOfRange, 0},
		{"more than the tiny pool has free", true, createReq("v", 32<<20), codes.ResourceExhausted, 0},
		{"no size gets the default", false, withReq("v", func(r *csi.CreateVolumeRequest) { r.CapacityRange = nil }), codes.OK, storage.DefaultCapacityBytes},
		{"limit below the default", false, withReq("v", func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{LimitBytes: 5 << 20}
		}), codes.OK, 5 << 20},
		{"required bytes exactly", false, createReq("v", 3<<20), codes.OK, 3 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			pc := dirPool(base, "default")
			if tc.tiny {
				pc = tinyPool(t, base)
			}
			f := newFixture(t, pc)
			resp, err := f.srv.CreateVolume(context.Background(), tc.req)
			wantCode(t, err, tc.wantCode)
			if tc.wantCode != codes.OK {
				if n := len(f.engine.AllVolumes()); n != 0 {
					t.Fatalf("a refused request left %d volumes", n)
				}
				return
			}
			if got := resp.GetVolume().GetCapacityBytes(); got != tc.wantSize {
				t.Fatalf("capacity_bytes = %d, want %d", got, tc.wantSize)
			}
		})
	}
}

func TestCreateVolumeTopology(t *testing.T) {
	seg := func(node string) *csi.Topology {
		return &csi.Topology{Segments: map[string]string{controller.TopologyKey: node}}
	}
	tests := []struct {
		name     string
		req      *csi.TopologyRequirement
		wantCode codes.Code
	}{
		{"no requirement", nil, codes.OK},
		{"requisite of this node", &csi.TopologyRequirement{Requisite: []*csi.Topology{seg(testNode)}}, codes.OK},
		{"this node among others", &csi.TopologyRequirement{
			Requisite: []*csi.Topology{seg("node-b"), seg(testNode)}, Preferred: []*csi.Topology{seg("node-b")},
		}, codes.OK},
		{"requisite of another node", &csi.TopologyRequirement{Requisite: []*csi.Topology{seg("node-b")}}, codes.ResourceExhausted},
		{"requisite with another key", &csi.TopologyRequirement{
			Requisite: []*csi.Topology{{Segments: map[string]string{"topology.kubernetes.io/zone": testNode}}},
		}, codes.ResourceExhausted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			req := createReq("v", 1<<20)
			req.AccessibilityRequirements = tc.req
			resp, err := f.srv.CreateVolume(context.Background(), req)
			wantCode(t, err, tc.wantCode)
			if tc.wantCode != codes.OK {
				return
			}
			topo := resp.GetVolume().GetAccessibleTopology()
			want := map[string]string{controller.TopologyKey: testNode}
			if len(topo) != 1 || !maps.Equal(topo[0].GetSegments(), want) {
				t.Fatalf("accessible_topology = %v, want [%v]", topo, want)
			}
		})
	}
}

func TestCreateVolumeIdempotency(t *testing.T) {
	same := func(r *csi.CreateVolumeRequest) {}
	tests := []struct {
		name     string
		second   func(*csi.CreateVolumeRequest)
		wantCode codes.Code
	}{
		{"same name and parameters", same, codes.OK},
		{"smaller required bytes fits", func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 1 << 19 }, codes.OK},
		{"other sidecar parameters", func(r *csi.CreateVolumeRequest) {
			r.Parameters = map[string]string{controller.ParamPool: "default", "csi.storage.k8s.io/pvc/name": "other"}
		}, codes.OK},
		{"larger size", func(r *csi.CreateVolumeRequest) { r.CapacityRange.RequiredBytes = 2 << 20 }, codes.AlreadyExists},
		{"limit below the size", func(r *csi.CreateVolumeRequest) {
			r.CapacityRange = &csi.CapacityRange{RequiredBytes: 1 << 19, LimitBytes: 1<<20 - 1}
		}, codes.AlreadyExists},
		{"no parameters means the default pool", func(r *csi.CreateVolumeRequest) { r.Parameters = nil }, codes.OK},
		{"other pool", func(r *csi.CreateVolumeRequest) { r.Parameters = map[string]string{controller.ParamPool: "fast"} }, codes.AlreadyExists},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			f := newFixture(t, dirPool(base, "default"), dirPool(base, "fast"))
			first := createReq("pvc-1", 1<<20)
			first.Parameters = map[string]string{controller.ParamPool: "default"}
			r1, err := f.srv.CreateVolume(context.Background(), first)
			wantCode(t, err, codes.OK)
			second := createReq("pvc-1", 1<<20)
			second.Parameters = maps.Clone(first.Parameters)
			tc.second(second)
			r2, err := f.srv.CreateVolume(context.Background(), second)
			wantCode(t, err, tc.wantCode)
			if tc.wantCode == codes.OK && r2.GetVolume().GetVolumeId() != r1.GetVolume().GetVolumeId() {
				t.Fatalf("second call returned %s, want %s", r2.GetVolume().GetVolumeId(), r1.GetVolume().GetVolumeId())
			}
			if n := len(f.engine.AllVolumes()); n != 1 {
				t.Fatalf("%d volumes exist after two calls with one name, want 1", n)
			}
		})
	}
}

func TestCreateVolumeLockHeld(t *testing.T) {
	f := newFixture(t)
	id := storage.VolumeID("default", "pvc-busy")
	if !f.locks.TryAcquire(id) {
		t.Fatal("lock already held")
	}
	_, err := f.srv.CreateVolume(context.Background(), createReq("pvc-busy", 1<<20))
	wantCode(t, err, codes.Aborted)
	if f.exists(id) {
		t.Fatal("volume created while its lock was held")
	}
	f.locks.Release(id)
	resp, err := f.srv.CreateVolume(context.Background(), createReq("pvc-busy", 1<<20))
	wantCode(t, err, codes.OK)
	if resp.GetVolume().GetVolumeId() != id {
		t.Fatalf("volume ID %s, want %s", resp.GetVolume().GetVolumeId(), id)
	}
}

func TestCreateVolumeLayout(t *testing.T) {
	f := newFixture(t)
	v := f.mustCreate(t, "pvc-layout")
	data := f.dataPath(t, v.GetVolumeId())
	if filepath.Base(data) != storage.DataDir {
		t.Fatalf("data path %s", data)
	}
	var st unix.Stat_t
	if err := unix.Lstat(data, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Mode&0o777 != storage.DataDirMode {
		t.Fatalf("data dir mode %o, want dir %o", st.Mode, storage.DataDirMode)
	}
	if got := v.GetVolumeContext()["pool"]; got != "default" {
		t.Fatalf("volume_context pool = %q", got)
	}
}

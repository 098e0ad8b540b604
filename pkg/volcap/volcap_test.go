package volcap_test

import (
	"errors"
	"math"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"testing"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/volcap"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/proto"
)

func pool(t *testing.T, kind string) *storage.Pool {
	t.Helper()
	e, err := storage.New(storage.Config{Pools: []storage.PoolConfig{{Name: "p", Path: filepath.Join(t.TempDir(), "p"), Kind: kind}}})
	if err != nil {
		t.Fatal(err)
	}
	return e.DefaultPool()
}

func mount(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

// TestCheckAccessModesByKind: node-local kinds serve SINGLE_NODE_* only; shared
// pools, whose root every node mounts, serve every mode.
func TestCheckAccessModesByKind(t *testing.T) {
	multi := []csi.VolumeCapability_AccessMode_Mode{
		csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_MULTI_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER,
	}
	single := []csi.VolumeCapability_AccessMode_Mode{
		csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
		csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER,
	}
	for _, kind := range []string{storage.KindDir, storage.KindQuota, storage.KindImage, storage.KindShared} {
		p := pool(t, kind)
		for _, m := range single {
			if _, err := volcap.Check([]*csi.VolumeCapability{mount(m)}, p); err != nil {
				t.Errorf("%s pool, %s: %v", kind, m, err)
			}
		}
		for _, m := range multi {
			_, err := volcap.Check([]*csi.VolumeCapability{mount(m)}, p)
			if kind == storage.KindShared && err != nil {
				t.Errorf("shared pool, %s: %v", m, err)
			}
			if kind != storage.KindShared && !errors.Is(err, storage.ErrUnsupported) {
				t.Errorf("%s pool, %s: %v, want ErrUnsupported", kind, m, err)
			}
		}
		if _, err := volcap.Check([]*csi.VolumeCapability{mount(csi.VolumeCapability_AccessMode_UNKNOWN)}, p); !errors.Is(err, storage.ErrInvalid) {
			t.Errorf("%s pool, UNKNOWN mode: %v, want ErrInvalid", kind, err)
		}
	}
	block := &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
	}
	if _, err := volcap.Check([]*csi.VolumeCapability{block}, pool(t, storage.KindShared)); !errors.Is(err, storage.ErrUnsupported) {
		t.Errorf("block on a shared pool: %v, want ErrUnsupported", err)
	}
}

var digits = regexp.MustCompile(`^[0-9]+$`)

// FuzzParse: the capabilities of a request (decoded from the input) are read as the
// CSI message says: the access mode of the same name, mount with its fs_type,
// mount_flags and volume_mount_group (a decimal group ID) or block, refusals wrapping ErrInvalid only for a missing capability,
// mode or access type. ParseAll accepts a list exactly when every capability parses
// and all share one access type.
func FuzzParse(f *testing.F) {
	seed := func(caps ...*csi.VolumeCapability) {
		data, err := proto.Marshal(&csi.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: caps})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	rwo := mount(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
	rwo.GetMount().FsType, rwo.GetMount().MountFlags = "xfs", []string{"noatime", "ro"}
	seed(rwo)
	seed(mount(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER), mount(csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY))
	seed(&csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER}}, rwo)
	seed(&csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: 99}})
	seed(mount(csi.VolumeCapability_AccessMode_UNKNOWN), &csi.VolumeCapability{})
	seed()
	f.Fuzz(func(t *testing.T, data []byte) {
		var req csi.ValidateVolumeCapabilitiesRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		caps := req.GetVolumeCapabilities()
		var parsed []storage.Capability
		allOK := true
		for _, c := range caps {
			got, err := volcap.Parse(c)
			mode := c.GetAccessMode().GetMode()
			_, named := csi.VolumeCapability_AccessMode_Mode_name[int32(mode)]
			// volume_mount_group: empty, or a group ID in decimal digits below (gid_t)-1.
			group, wantGroup := c.GetMount().GetVolumeMountGroup(), (*uint32)(nil)
			groupOK := group == ""
			if n, err := strconv.ParseUint(group, 10, 64); err == nil && digits.MatchString(group) && n < math.MaxUint32 {
				groupOK, wantGroup = true, new(uint32(n))
			}
			valid := c != nil && named && mode != csi.VolumeCapability_AccessMode_UNKNOWN &&
				(c.GetMount() != nil && groupOK || c.GetMount() == nil && c.GetBlock() != nil)
			switch {
			case err != nil && (valid || !errors.Is(err, storage.ErrInvalid)):
				t.Fatalf("Parse(%v): %v", c, err)
			case err == nil && !valid:
				t.Fatalf("Parse(%v) = %+v; want a refusal", c, got)
			case err == nil && got.Mode.String() != mode.String():
				t.Fatalf("Parse(%v): mode %s, want %s", c, got.Mode, mode)
			case err == nil && c.GetMount() != nil && (got.Access != storage.AccessMount || got.FSType != c.GetMount().GetFsType() ||
				!slices.Equal(got.MountFlags, c.GetMount().GetMountFlags()) || !reflect.DeepEqual(got.MountGroup, wantGroup)):
				t.Fatalf("Parse(%v) = %+v, not the mount asked for", c, got)
			case err == nil && c.GetMount() == nil && (got.Access != storage.AccessBlock || got.FSType != "" || len(got.MountFlags) > 0):
				t.Fatalf("Parse(%v) = %+v, not the block volume asked for", c, got)
			}
			allOK = allOK && err == nil
			parsed = append(parsed, got)
		}
		all, err := volcap.ParseAll(caps)
		sameAccess := !slices.ContainsFunc(parsed, func(c storage.Capability) bool { return c.Access != parsed[0].Access })
		switch want := len(caps) > 0 && allOK && sameAccess; {
		case want && (err != nil || !reflect.DeepEqual(all, parsed)):
			t.Fatalf("ParseAll(%v) = %+v, %v; want %+v", caps, all, err, parsed)
		case !want && (err == nil || !errors.Is(err, storage.ErrInvalid)):
			t.Fatalf("ParseAll(%v) = %+v, %v; want a refusal", caps, all, err)
		}
	})
}

// TestParseMountGroup: volume_mount_group, the pod's fsGroup the kubelet passes once the
// node advertises VOLUME_MOUNT_GROUP, is a decimal group ID; anything else is refused.
func TestParseMountGroup(t *testing.T) {
	tests := []struct {
		name    string
		group   string
		want    *uint32
		wantErr error
	}{
		{name: "none", group: ""},
		{name: "fsGroup", group: "2000", want: proto.Uint32(2000)},
		{name: "group 0", group: "0", want: proto.Uint32(0)},
		{name: "largest", group: "4294967294", want: proto.Uint32(4294967294)},
		{name: "(gid_t)-1", group: "4294967295", wantErr: storage.ErrInvalid},
		{name: "negative", group: "-1", wantErr: storage.ErrInvalid},
		{name: "signed", group: "+5", wantErr: storage.ErrInvalid},
		{name: "a name", group: "users", wantErr: storage.ErrInvalid},
		{name: "too large", group: "4294967296", wantErr: storage.ErrInvalid},
		{name: "spaces", group: " 5", wantErr: storage.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := mount(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
			c.GetMount().VolumeMountGroup = tc.group
			got, err := volcap.Parse(c)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Parse(volume_mount_group %q) = %v, want %v", tc.group, err, tc.wantErr)
			}
			if err == nil && !reflect.DeepEqual(got.MountGroup, tc.want) {
				t.Fatalf("MountGroup = %v, want %v", got.MountGroup, tc.want)
			}
		})
	}
}

package driver

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/proto"
	"k8s.io/klog/v2"
)

func TestParseFlags(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	typo := filepath.Join(dir, "typo.yaml")
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(good, "pools:\n- name: fast\n  path: /srv/fast\n  kind: dir\n  reservedBytes: 1024\n")
	write(bad, "pools:\n- name: Fast\n  path: /srv/fast\n  kind: dir\n")
	write(typo, "pools:\n- name: fast\n  path: /srv/fast\n  kind: dir\n  overcomit: true\n")
	kubelet := filepath.Join(dir, "kubelet")
	if err := os.MkdirAll(filepath.Join(kubelet, "plugins_registry"), 0o750); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantErr string // substring naming the problem; "" for success
		check   func(t *testing.T, o Options)
	}{
		{name: "defaults", args: []string{"--node-id", "n1"}, check: func(t *testing.T, o Options) {
			if o.Endpoint != "/csi/csi.sock" || o.Mode != ModeAll || o.DriverName != "berth.csi.io" || o.KubeletDir != "/var/lib/kubelet" {
				t.Errorf("defaults: %+v", o)
			}
			if len(o.Config.Pools) != 1 || o.Config.Pools[0].Name != "default" {
				t.Errorf("embedded default pool missing: %+v", o.Config)
			}
		}},
		{name: "config file", args: []string{"--node-id", "n1", "--config", good}, check: func(t *testing.T, o Options) {
			if o.Config.Pools[0].Name != "fast" || o.Config.Pools[0].ReservedBytes != 1024 {
				t.Errorf("config not loaded: %+v", o.Config)
			}
		}},
		{name: "invalid pool name", args: []string{"--config", bad}, wantErr: "--config"},
		{name: "unknown config key", args: []string{"--config", typo}, wantErr: "overcomit"},
		{name: "missing config", args: []string{"--config", filepath.Join(dir, "nope.yaml")}, wantErr: "--config"},
		{name: "bad mode", args: []string{"--mode", "both"}, wantErr: "--mode"},
		{name: "tcp endpoint", args: []string{"--endpoint", "tcp://127.0.0.1:9000"}, wantErr: "--endpoint"},
		{name: "bad driver name", args: []string{"--driver-name", "-berth"}, wantErr: "--driver-name"},
		{name: "negative max volumes", args: []string{"--max-volumes-per-node", "-1"}, wantErr: "--max-volumes-per-node"},
		{name: "bad logging format", args: []string{"--logging-format", "xml"}, wantErr: "--logging-format"},
		{name: "empty node id", args: []string{"--node-id", ""}, wantErr: "--node-id"},
		{name: "node id not a topology value", args: []string{"--node-id", "node 1"}, wantErr: "--node-id"},
		{name: "node id of 64 characters", args: []string{"--node-id", strings.Repeat("n", 64)}, wantErr: "--node-id"},
		{name: "node id of 63 characters", args: []string{"--node-id", "ip-10-0-0-1_" + strings.Repeat("n", 51)}, check: func(t *testing.T, o Options) {
			if len(o.NodeID) != 63 {
				t.Errorf("node id %q", o.NodeID)
			}
		}},
		{name: "unknown flag", args: []string{"--frobnicate"}, wantErr: "frobnicate"},
		{name: "stray argument", args: []string{"extra"}, wantErr: "unexpected"},
		{name: "registration auto without a plugins_registry", args: []string{"--node-id", "n1", "--kubelet-dir", dir}, check: func(t *testing.T, o Options) {
			if o.Register || o.HealthPort != 0 {
				t.Errorf("registration or health on by default without a kubelet: %+v", o)
			}
		}},
		{name: "registration auto with a plugins_registry", args: []string{"--node-id", "n1", "--kubelet-dir", kubelet}, check: func(t *testing.T, o Options) {
			if !o.Register || o.RegistrationPath != filepath.Join(kubelet, "plugins_registry", "berth.csi.io-reg.sock") || o.RegistrationEndpoint != "/csi/csi.sock" {
				t.Errorf("auto registration: %+v", o)
			}
		}},
		{name: "registration auto in controller mode", args: []string{"--node-id", "n1", "--kubelet-dir", kubelet, "--mode", "controller"}, check: func(t *testing.T, o Options) {
			if o.Register {
				t.Error("controller mode registers with the kubelet")
			}
		}},
		{name: "registration off", args: []string{"--node-id", "n1", "--kubelet-dir", kubelet, "--registration", "off"}, check: func(t *testing.T, o Options) {
			if o.Register {
				t.Error("--registration off registers")
			}
		}},
		{name: "registration on with path and health port", args: []string{"--node-id", "n1", "--registration", "on", "--kubelet-registration-path", "/var/lib/kubelet/plugins/b/csi.sock", "--health-port", "9809"}, check: func(t *testing.T, o Options) {
			if !o.Register || o.RegistrationEndpoint != "/var/lib/kubelet/plugins/b/csi.sock" || o.HealthPort != 9809 {
				t.Errorf("explicit registration: %+v", o)
			}
		}},
		{name: "registration on in controller mode", args: []string{"--registration", "on", "--mode", "controller"}, wantErr: "--registration"},
		{name: "bad registration value", args: []string{"--registration", "yes"}, wantErr: "--registration"},
		{name: "relative registration path", args: []string{"--kubelet-registration-path", "csi.sock"}, wantErr: "--kubelet-registration-path"},
		{name: "health port out of range", args: []string{"--health-port", "70000"}, wantErr: "--health-port"},
		{name: "pool retry too short", args: []string{"--pool-retry-interval", "10ms"}, wantErr: "--pool-retry-interval"},
		{name: "pool retry not a duration", args: []string{"--pool-retry-interval", "soon"}, wantErr: "pool-retry-interval"},
		{name: "negative health port", args: []string{"--health-port", "-1"}, wantErr: "--health-port"},
		{name: "metrics off by default", args: []string{"--node-id", "n1"}, check: func(t *testing.T, o Options) {
			if o.MetricsAddress != "" {
				t.Errorf("metrics address by default: %q", o.MetricsAddress)
			}
		}},
		{name: "metrics on the node address", args: []string{"--metrics-address", "10.1.2.3:9810"}, check: func(t *testing.T, o Options) {
			if o.MetricsAddress != "10.1.2.3:9810" {
				t.Errorf("metrics address %q", o.MetricsAddress)
			}
		}},
		{name: "metrics address without host", args: []string{"--metrics-address", ":9810"}, wantErr: "--metrics-address"},
		{name: "metrics address without port", args: []string{"--metrics-address", "10.1.2.3"}, wantErr: "--metrics-address"},
		{name: "metrics address with a bad port", args: []string{"--metrics-address", "10.1.2.3:99999"}, wantErr: "--metrics-address"},
		{name: "orphan scan off by default", args: []string{"--node-id", "n1"}, check: func(t *testing.T, o Options) {
			if o.OrphanScanInterval != 0 || o.PVListerEndpoint != "/pv-lister/pv-lister.sock" {
				t.Errorf("orphan scan %s, pv-lister %q by default", o.OrphanScanInterval, o.PVListerEndpoint)
			}
		}},
		{name: "orphan scan every 5m", args: []string{"--orphan-scan-interval", "5m", "--pv-lister-endpoint", "unix:///run/l.sock"}, check: func(t *testing.T, o Options) {
			if o.OrphanScanInterval != 5*time.Minute || o.PVListerEndpoint != "/run/l.sock" {
				t.Errorf("orphan scan %s, pv-lister %q", o.OrphanScanInterval, o.PVListerEndpoint)
			}
		}},
		{name: "orphan scan too often", args: []string{"--orphan-scan-interval", "30s"}, wantErr: "--orphan-scan-interval"},
		{name: "orphan scan too rare", args: []string{"--orphan-scan-interval", "25h"}, wantErr: "--orphan-scan-interval"},
		{name: "pv-lister over tcp", args: []string{"--pv-lister-endpoint", "tcp://127.0.0.1:1"}, wantErr: "--pv-lister-endpoint"},
		{name: "transfer channel off by default", args: []string{"--node-id", "n1"}, check: func(t *testing.T, o Options) {
			if o.TransferAddress != "" || o.TransferCADir != DefaultTransferCADir || o.TransferRateLimit != 0 {
				t.Errorf("transfer %q %q %d by default", o.TransferAddress, o.TransferCADir, o.TransferRateLimit)
			}
		}},
		{name: "transfer channel on", args: []string{"--transfer-address", "[10.1.2.3]:9813", "--transfer-ca-dir", "/ca", "--transfer-rate-limit", "100Mi"}, check: func(t *testing.T, o Options) {
			if o.TransferAddress != "[10.1.2.3]:9813" || o.TransferCADir != "/ca" || o.TransferRateLimit != 100<<20 {
				t.Errorf("transfer %q %q %d", o.TransferAddress, o.TransferCADir, o.TransferRateLimit)
			}
		}},
		{name: "snapshot metadata for peers", args: []string{"--transfer-address", "10.1.2.3:9813", "--snapshot-metadata-address", "10.1.2.3:9816"}, check: func(t *testing.T, o Options) {
			if o.SnapshotMetadataAddress != "10.1.2.3:9816" {
				t.Errorf("SnapshotMetadataAddress %q", o.SnapshotMetadataAddress)
			}
		}},
		{name: "snapshot metadata without the transfer channel", args: []string{"--snapshot-metadata-address", "10.1.2.3:9816"}, wantErr: "needs --transfer-address"},
		{name: "snapshot metadata address without host", args: []string{"--transfer-address", "10.1.2.3:9813", "--snapshot-metadata-address", ":9816"}, wantErr: "--snapshot-metadata-address"},
		{name: "transfer address without host", args: []string{"--transfer-address", ":9813"}, wantErr: "--transfer-address"},
		{name: "transfer address in controller mode", args: []string{"--mode", "controller", "--transfer-address", "10.1.2.3:9813"}, wantErr: "--transfer-address"},
		{name: "transfer CA dir relative", args: []string{"--transfer-address", "10.1.2.3:9813", "--transfer-ca-dir", "ca"}, wantErr: "--transfer-ca-dir"},
		{name: "transfer rate not a quantity", args: []string{"--transfer-rate-limit", "fast"}, wantErr: "--transfer-rate-limit"},
		{name: "transfer rate negative", args: []string{"--transfer-rate-limit", "-1"}, wantErr: "--transfer-rate-limit"},
		{name: "version", args: []string{"--version", "--mode", "bogus"}, check: func(t *testing.T, o Options) {
			if !o.ShowVersion {
				t.Error("--version not set")
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o, err := ParseFlags("csi-driver", tc.args)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.check != nil {
				tc.check(t, o)
			}
		})
	}
}

// FuzzParseFlags: a command line ParseFlags accepts gives options the driver can
// serve with and that keep the CSI spec: a clean absolute socket path, a known mode,
// a node ID that NodeGetInfo may report (at most 256 bytes) and may use as its
// topology segment value, a driver name of at most 63 characters, a port, a
// registration decided. The values of the driver's own flags are fuzzed; klog's
// flags, which write files and change the process's logging, are left alone.
func FuzzParseFlags(f *testing.F) {
	f.Add("unix:///csi/csi.sock", "node-1", "berth.csi.io", "all", "0", "auto", "", "0", "text")
	f.Add("/run/csi.sock", "worker-2.example.com", "b", "controller", "110", "off", "/var/lib/kubelet/plugins/b/csi.sock", "9809", "json")
	f.Add("unix:/a/../b.sock", "n", "berth.csi.io", "node", "-1", "on", "rel.sock", "70000", "xml")
	f.Add("tcp://1.2.3.4:5", "", "-berth", "both", "x", "yes", "", "-1", "")
	kubeletDir := f.TempDir()
	segmentValue := regexp.MustCompile(`^[A-Za-z0-9]([-_.A-Za-z0-9]{0,61}[A-Za-z0-9])?$`)
	driverName := regexp.MustCompile(`^[A-Za-z0-9]([-.A-Za-z0-9]{0,61}[A-Za-z0-9])?$`)
	f.Fuzz(func(t *testing.T, endpoint, nodeID, name, mode, maxVolumes, registration, regPath, healthPort, format string) {
		args := []string{
			"--endpoint=" + endpoint, "--node-id=" + nodeID, "--driver-name=" + name, "--mode=" + mode,
			"--max-volumes-per-node=" + maxVolumes, "--registration=" + registration,
			"--kubelet-registration-path=" + regPath, "--health-port=" + healthPort,
			"--logging-format=" + format, "--kubelet-dir=" + kubeletDir,
		}
		o, err := ParseFlags("csi-driver", args)
		defer klog.ClearLogger() // --logging-format=json set a JSON logger
		if err != nil {
			return
		}
		switch {
		case !filepath.IsAbs(o.Endpoint) || filepath.Clean(o.Endpoint) != o.Endpoint:
			t.Fatalf("%q: endpoint %q", args, o.Endpoint)
		case o.Mode != ModeAll && o.Mode != ModeController && o.Mode != ModeNode:
			t.Fatalf("%q: mode %q", args, o.Mode)
		case len(o.NodeID) > 256 || !segmentValue.MatchString(o.NodeID):
			t.Fatalf("%q: node ID %q is not a CSI topology segment value", args, o.NodeID)
		case !driverName.MatchString(o.DriverName):
			t.Fatalf("%q: driver name %q", args, o.DriverName)
		case o.MaxVolumes < 0 || o.HealthPort < 0 || o.HealthPort > 65535:
			t.Fatalf("%q: max volumes %d, health port %d", args, o.MaxVolumes, o.HealthPort)
		case o.LoggingFormat != "text" && o.LoggingFormat != "json":
			t.Fatalf("%q: logging format %q", args, o.LoggingFormat)
		case !filepath.IsAbs(o.RegistrationEndpoint):
			t.Fatalf("%q: registration endpoint %q", args, o.RegistrationEndpoint)
		case o.Register && o.Mode == ModeController:
			t.Fatalf("%q: controller mode registers with the kubelet", args)
		case o.RegistrationPath != filepath.Join(kubeletDir, "plugins_registry", o.DriverName+"-reg.sock"):
			t.Fatalf("%q: registration socket %q", args, o.RegistrationPath)
		}
		resp := &csi.NodeGetInfoResponse{NodeId: o.NodeID,
			AccessibleTopology: &csi.Topology{Segments: map[string]string{storage.TopologyKey: o.NodeID}}}
		if _, err := proto.Marshal(resp); err != nil {
			t.Fatalf("%q: NodeGetInfo cannot answer node ID %q: %v", args, o.NodeID, err)
		}
	})
}

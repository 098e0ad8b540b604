package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
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

package kubectlberth

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	clienttesting "k8s.io/client-go/testing"
)

// TestOutputs: each command's table, JSON and YAML on the fixture cluster, against
// golden files (go test -update rewrites them).
func TestOutputs(t *testing.T) {
	for _, tc := range []struct {
		name, golden string
		args         []string
		wantErr      error
	}{
		{"pools", "pools.txt", []string{"pools"}, nil},
		{"pools json", "pools.json", []string{"pools", "-o", "json"}, nil},
		{"pools yaml", "pools.yaml", []string{"pools", "-o", "yaml"}, nil},
		{"volumes", "volumes.txt", []string{"volumes"}, nil},
		{"volumes all", "volumes-all.txt", []string{"volumes", "-A"}, nil},
		{"volumes json", "volumes.json", []string{"volumes", "-A", "-o", "json"}, nil},
		{"volumes yaml", "volumes.yaml", []string{"volumes", "-n", "team-b", "-o", "yaml"}, nil},
		{"doctor", "doctor.txt", []string{"doctor"}, ErrAttention},
		{"doctor json", "doctor.json", []string{"doctor", "-o", "json"}, ErrAttention},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := fixture(t)
			out, _, err := w.run(t, "", tc.args...)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			golden(t, tc.golden, out)
		})
	}
}

// TestBadOutputFormat: an unknown -o is an error before anything is read.
func TestBadOutputFormat(t *testing.T) {
	w := fixture(t)
	if _, _, err := w.run(t, "", "pools", "-o", "wide"); err == nil || errors.Is(err, ErrAttention) {
		t.Errorf("pools -o wide: %v, want an error", err)
	}
	if n := len(w.kube.Actions()); n != 0 {
		t.Errorf("%d API calls made before the flag was refused", n)
	}
}

// TestMetricsThroughPodProxy: metrics are read through the API server's pod proxy,
// at the driver container's port named metrics, path metrics (no scheme: http).
func TestMetricsThroughPodProxy(t *testing.T) {
	w := fixture(t)
	if _, _, err := w.run(t, "", "pools"); err != nil {
		t.Fatal(err)
	}
	var proxied []string
	for _, a := range w.kube.Actions() {
		if pa, ok := a.(clienttesting.ProxyGetAction); ok {
			proxied = append(proxied, fmt.Sprintf("%s %s/%s:%s/%s", pa.GetScheme(), pa.GetNamespace(), pa.GetName(), pa.GetPort(), pa.GetPath()))
		}
	}
	// node-c's pod is Pending: not read.
	want := " kube-system/berth-node-a:9811/metrics,  kube-system/berth-node-b:9811/metrics"
	if got := strings.Join(proxied, ", "); got != want {
		t.Errorf("proxied calls %q, want %q", got, want)
	}
}

// TestNamespaceFilter: -n shows the claims of one namespace; the default namespace is
// the kubeconfig's.
func TestNamespaceFilter(t *testing.T) {
	w := fixture(t)
	out, _, err := w.run(t, "", "volumes", "-n", "team-b")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "team-b/logs") || strings.Contains(out, "team-a/") {
		t.Errorf("volumes -n team-b:\n%s", out)
	}
}

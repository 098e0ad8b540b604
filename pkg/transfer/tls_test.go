package transfer

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
)

// Only a peer with a certificate of the cluster's CA gets anything, and a client
// refuses a server that is not a Berth node of that CA: refused in the
// handshake, before the server reads a request or opens a source.
func TestMutualTLS(t *testing.T) {
	n := startServer(t, ServerOptions{})
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "secret"), []byte("volume data"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.sources.add("vol", Source{Kind: KindTree, Path: src})
	other := newCA(t, "another-ca")
	otherNode := other.node(t, "node-b")

	cases := []struct {
		name    string
		tls     func() *tls.Config
		wantErr error
	}{
		{"no client certificate", func() *tls.Config {
			c := clientTLS(t, n.client, "node-a")
			c.Certificates = nil
			c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
				return &tls.Certificate{}, nil
			}
			return c
		}, ErrRefused},
		{"client certificate of another CA", func() *tls.Config {
			c := clientTLS(t, otherNode, "node-a")
			c.RootCAs = clientTLS(t, n.client, "node-a").RootCAs // trusts the server
			return c
		}, ErrRefused},
		{"server of another CA", func() *tls.Config {
			return clientTLS(t, otherNode, "node-a") // the cluster's server is not in its CA
		}, ErrRefused},
		{"server certificate of another node name", func() *tls.Config {
			return clientTLS(t, n.client, "node-c")
		}, ErrRefused},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "copy")
			o := n.pullOptions(t, "vol", dest)
			o.TLS = tc.tls()
			_, err := Pull(testContext(t), o)
			wantErr(t, err, tc.wantErr)
			if opened, _ := n.sources.counts(); opened != 0 {
				t.Errorf("the server opened %d sources for a refused client", opened)
			}
			if ents, _ := os.ReadDir(filepath.Dir(dest)); len(ents) != 0 {
				t.Errorf("destination or staging made: %v", ents)
			}
		})
	}

	t.Run("a node of the CA", func(t *testing.T) {
		dest := filepath.Join(t.TempDir(), "copy")
		if _, err := Pull(testContext(t), n.pullOptions(t, "vol", dest)); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dest, "secret"))
		if err != nil || string(b) != "volume data" {
			t.Fatalf("copy: %q, %v", b, err)
		}
	})
}

// A server refuses to start without client verification: anonymous clients are
// not a mode.
func TestServerRequiresClientCertificates(t *testing.T) {
	c := newCA(t, "ca")
	cfg := serverTLS(t, c.node(t, "node-a"))
	for _, auth := range []tls.ClientAuthType{tls.NoClientCert, tls.RequestClientCert, tls.RequireAnyClientCert,
		tls.VerifyClientCertIfGiven} {
		bad := cfg.Clone()
		bad.ClientAuth = auth
		if _, err := NewServer(ServerOptions{TLS: bad, Sources: &fakeSources{}}); err == nil {
			t.Errorf("NewServer with ClientAuth %v: no error", auth)
		}
	}
	if _, err := NewServer(ServerOptions{TLS: cfg, Sources: &fakeSources{}}); err != nil {
		t.Errorf("NewServer: %v", err)
	}
}

func TestListenNeedsAHost(t *testing.T) {
	for _, addr := range []string{":9812", "9812", "127.0.0.1:", "127.0.0.1:x"} {
		if l, err := Listen(addr); err == nil {
			l.Close()
			t.Errorf("Listen(%q): no error", addr)
		}
	}
}

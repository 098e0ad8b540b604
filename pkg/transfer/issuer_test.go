package transfer

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
)

func newIssuer(t testing.TB, dir, name string) *Issuer {
	t.Helper()
	i, err := NewIssuer(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// Two nodes given only the CA directory mint their own certificates and reach
// each other; the client checks the server's node name; a rotated CA is used at
// the next handshake, without a restart, and peers of the old one are refused.
func TestIssuerMintsNodeCertificates(t *testing.T) {
	caDir := t.TempDir()
	testutil.WriteCA(t, caDir, "berth-transfer-ca", true)
	a, b := newIssuer(t, caDir, "node-a"), newIssuer(t, caDir, "node-b")
	n := startServer(t, ServerOptions{TLS: a.ServerTLS()})
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	n.sources.add("vol", Source{Kind: KindTree, Path: src})
	pull := func(c *Issuer, server string) error {
		cfg, err := c.ClientTLS(server)
		if err != nil {
			return err
		}
		o := n.pullOptions(t, "vol", filepath.Join(t.TempDir(), "copy"))
		o.TLS, o.Retries = cfg, -1
		_, err = Pull(testContext(t), o)
		return err
	}
	if err := pull(b, "node-a"); err != nil {
		t.Fatalf("node-b pulling from node-a: %v", err)
	}
	wantErr(t, pull(b, "node-c"), ErrRefused)

	// Another cluster's CA: refused both ways.
	otherDir := t.TempDir()
	testutil.WriteCA(t, otherDir, "another-ca", true)
	stranger := newIssuer(t, otherDir, "node-b")
	wantErr(t, pull(stranger, "node-a"), ErrRefused)

	// The CA rotated under both nodes (the Secret rewritten): they agree on the
	// new one at once; a peer still holding the old CA is refused.
	oldDir := t.TempDir()
	for _, f := range []string{CACertFile, CAKeyFile} {
		data, err := os.ReadFile(filepath.Join(caDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(oldDir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := newIssuer(t, oldDir, "node-b")
	testutil.WriteCA(t, caDir, "berth-transfer-ca-2", true)
	if err := pull(b, "node-a"); err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
	wantErr(t, pull(old, "node-a"), ErrRefused)
	if n.sources.opened != 2 {
		t.Errorf("the server opened %d sources, want 2 (the two pulls let in)", n.sources.opened)
	}
}

// The minted certificate: the node's name, both usages, within the CA's life,
// renewed at half its own; the last good one is kept while the files are being
// rewritten.
func TestIssuerRenewal(t *testing.T) {
	dir := t.TempDir()
	testutil.WriteCA(t, dir, "ca", true)
	now := time.Now()
	i := newIssuer(t, dir, "node-a")
	i.now = func() time.Time { return now }
	first, err := i.current()
	if err != nil {
		t.Fatal(err)
	}
	leaf := first.cert.Leaf
	if leaf.Subject.CommonName != "node-a" || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "node-a" || len(leaf.ExtKeyUsage) != 2 {
		t.Errorf("certificate: CN %q, SANs %v, EKU %v", leaf.Subject.CommonName, leaf.DNSNames, leaf.ExtKeyUsage)
	}
	if err := leaf.CheckSignatureFrom(mustParse(t, first.caPEM)); err != nil {
		t.Errorf("not signed by the CA: %v", err)
	}
	now = now.Add(DefaultLeafLifetime/2 - time.Minute)
	if again, _ := i.current(); again != first {
		t.Error("a new certificate before half its life")
	}
	if err := os.Remove(filepath.Join(dir, CAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if again, err := i.current(); err != nil || again != first {
		t.Errorf("files missing before renewal: %v, same certificate %v", err, again == first)
	}
	now = now.Add(2 * time.Minute)
	if _, err := i.current(); err == nil || !strings.Contains(err.Error(), CAKeyFile) {
		t.Errorf("files missing when due: %v", err)
	}
	testutil.WriteCA(t, dir, "ca", true)
	next, err := i.current()
	if err != nil || next == first || next.cert.Leaf.SerialNumber.Cmp(leaf.SerialNumber) == 0 {
		t.Errorf("renewal: %v", err)
	}
}

// A directory that does not hold a usable CA fails at start-up, naming why.
func TestIssuerRefusesBadCA(t *testing.T) {
	notCA := t.TempDir()
	testutil.WriteCA(t, notCA, "leaf", false)
	mismatch := t.TempDir()
	testutil.WriteCA(t, mismatch, "ca", true)
	other := t.TempDir()
	testutil.WriteCA(t, other, "ca2", true)
	key, err := os.ReadFile(filepath.Join(other, CAKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mismatch, CAKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct{ dir, want string }{
		"missing":    {t.TempDir(), "no such file"},
		"not a CA":   {notCA, "is not a CA"},
		"wrong key":  {mismatch, "does not belong"},
		"empty name": {notCA, "name is required"},
	} {
		t.Run(name, func(t *testing.T) {
			node := "node-a"
			if name == "empty name" {
				node = ""
			}
			_, err := NewIssuer(tc.dir, node)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewIssuer: %v, want %q", err, tc.want)
			}
		})
	}
}

func mustParse(t testing.TB, b []byte) *x509.Certificate {
	t.Helper()
	c, err := parseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

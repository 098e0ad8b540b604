package transfer

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/klog/v2/ktesting"
)

// ca is a certificate authority made for one test: what the chart will make for
// a cluster (a CA, a certificate per node).
type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	dir  string
}

func newCA(t testing.TB, name string) *ca {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	c := &ca{cert: cert, key: key, dir: t.TempDir()}
	writePEM(t, filepath.Join(c.dir, "ca.crt"), "CERTIFICATE", der)
	return c
}

var serial atomic.Int64

// node issues a node's certificate (both key usages, its name as a DNS SAN) and
// returns its credential files.
func (c *ca) node(t testing.TB, name string) Credentials {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(100 + serial.Add(1)),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cr := Credentials{CAFile: filepath.Join(c.dir, "ca.crt"), CertFile: filepath.Join(c.dir, name+".crt"),
		KeyFile: filepath.Join(c.dir, name+".key")}
	writePEM(t, cr.CertFile, "CERTIFICATE", der)
	writePEM(t, cr.KeyFile, "EC PRIVATE KEY", kder)
	return cr
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func serverTLS(t testing.TB, c Credentials) *tls.Config {
	t.Helper()
	cfg, err := ServerTLS(c)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func clientTLS(t testing.TB, c Credentials, server string) *tls.Config {
	t.Helper()
	cfg, err := ClientTLS(c, server)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// fakeSources serves paths by ID and counts what was opened and closed.
type fakeSources struct {
	mu      sync.Mutex
	byID    map[string]Source
	opened  int
	closed  int
	closeFn func(id string) error // the Close of every source, when set
}

func (f *fakeSources) add(id string, s Source) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.byID == nil {
		f.byID = map[string]Source{}
	}
	f.byID[id] = s
}

func (f *fakeSources) Open(_ context.Context, id string) (*Source, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opened++
	s, ok := f.byID[id]
	if !ok {
		return nil, ErrNotFound
	}
	s.Close = func() error {
		f.mu.Lock()
		f.closed++
		fn := f.closeFn
		f.mu.Unlock()
		if fn != nil {
			return fn(id)
		}
		return nil
	}
	return &s, nil
}

func (f *fakeSources) counts() (opened, closed int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.opened, f.closed
}

// testNet is a server on 127.0.0.1 with the credentials of node-a, and the
// credentials a client on node-b uses.
type testNet struct {
	ca      *ca
	client  Credentials
	sources *fakeSources
	srv     *Server
	addr    string
	stop    func()
}

// startServer serves o (TLS and Sources filled in when unset) on a random
// loopback port until the test ends.
func startServer(t testing.TB, o ServerOptions) *testNet {
	t.Helper()
	n := &testNet{ca: newCA(t, "berth-test-ca"), sources: &fakeSources{}}
	n.client = n.ca.node(t, "node-b")
	if o.TLS == nil {
		o.TLS = serverTLS(t, n.ca.node(t, "node-a"))
	}
	if o.Sources == nil {
		o.Sources = n.sources
	}
	srv, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	n.srv = srv
	n.serve(t, "127.0.0.1:0")
	return n
}

// serve (re)starts the server on addr; stop ends it, as a restarted plugin's
// would.
func (n *testNet) serve(t testing.TB, addr string) {
	t.Helper()
	l, err := Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	n.addr = l.Addr().String()
	ctx, cancel := context.WithCancel(testContext(t))
	done := make(chan error, 1)
	go func() { done <- n.srv.Serve(ctx, l) }()
	var once sync.Once
	n.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(n.stop)
}

func (n *testNet) pullOptions(t testing.TB, id, dest string) PullOptions {
	return PullOptions{Addr: n.addr, TLS: clientTLS(t, n.client, "node-a"), ID: id, Dest: dest,
		RetryWait: 10 * time.Millisecond}
}

// testContext logs to the test at V(4).
func testContext(t testing.TB) context.Context {
	_, ctx := ktesting.NewTestContext(t)
	return ctx
}

// cutProxy forwards connections to target and cuts the first cuts of them after
// bytes from the server to the client: an interrupted network.
type cutProxy struct {
	l       net.Listener
	target  string
	after   int64
	cuts    atomic.Int64 // connections still to cut
	cutDone atomic.Int64
}

func newCutProxy(t testing.TB, target string, after int64, cuts int) *cutProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l, target: target, after: after}
	p.cuts.Store(int64(cuts))
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { p.forward(c) })
		}
	})
	return p
}

func (p *cutProxy) addr() string { return p.l.Addr().String() }

func (p *cutProxy) forward(c net.Conn) {
	defer c.Close()
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer s.Close()
	cut := p.cuts.Add(-1) >= 0
	go func() { _, _ = io.Copy(s, c); s.Close() }()
	if !cut {
		_, _ = io.Copy(c, s)
		return
	}
	// Cut: the client reads what came, then the end of the stream; the server's
	// next writes fail.
	if _, err := io.CopyN(c, s, p.after); err == nil {
		p.cutDone.Add(1)
	}
}

// wantErr fails the test unless err wraps want.
func wantErr(t testing.TB, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("error %v, want one wrapping %v", err, want)
	}
}

package e2e

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/transfer"
)

// transferPort is the chart's transfer.port.
const transferPort = "9813"

// The transfer channel between two nodes as the chart installs it: a volume
// written on another node is pulled from that node's plugin with a certificate
// minted from the chart's CA (data, hard links, holes, a symlink pointing out of
// the volume and a fifo come across as they are); a client without a
// certificate, and one of another CA, get nothing.
func TestTransferChannel(t *testing.T) {
	c := setup(t, parallel)
	nodes := c.needNodes(2)
	src := nodes[len(nodes)-1]
	script := `set -e
cd /data
head -c 33554432 /dev/urandom > big
mkdir d && echo linked > d/a && ln d/a d/hard
ln -s /etc/passwd out
mkfifo fifo
dd if=/dev/urandom of=sparse bs=4096 count=1 seek=10000 2>/dev/null
sync`
	c.apply(pvc("tx", "berth", "128Mi", "Filesystem") + "---\n" + podOnNode("writer", src, "tx", script, "Never"))
	c.waitPhase("writer", "Succeeded", 3*time.Minute)
	id := c.volumeHandle("tx")
	onNode := filepath.Join(c.hostPathOf("tx", defaultPool), "data")
	want, err := c.nodeRun(src, "sha256sum", filepath.Join(onNode, "big"))
	if err != nil {
		t.Fatal(err)
	}
	addr := c.internalIP(src) + ":" + transferPort

	// A peer of the chart's CA, as another node's plugin would be.
	cfg := c.chartPeer(src)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pull := func(cfg *tls.Config, dest string) error {
		_, err := transfer.Pull(ctx, transfer.PullOptions{Addr: addr, TLS: cfg, ID: id, Dest: dest, Retries: -1})
		return err
	}

	t.Run("refused without credentials", func(t *testing.T) {
		anonymous := cfg.Clone()
		anonymous.Certificates = nil
		anonymous.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }
		otherDir := t.TempDir()
		testutil.WriteCA(t, otherDir, "another cluster", true)
		other, err := transfer.NewIssuer(otherDir, "berth-e2e")
		if err != nil {
			t.Fatal(err)
		}
		stranger, err := other.ClientTLS(src)
		if err != nil {
			t.Fatal(err)
		}
		stranger.RootCAs = cfg.RootCAs // it trusts the server; the server does not trust it
		for name, cfg := range map[string]*tls.Config{"no certificate": anonymous, "another CA's": stranger} {
			dest := filepath.Join(t.TempDir(), "copy")
			if err := pull(cfg, dest); !errors.Is(err, transfer.ErrRefused) {
				t.Errorf("%s: %v, want refused", name, err)
			}
			if _, err := os.Lstat(dest); err == nil {
				t.Errorf("%s: a copy was made", name)
			}
		}
	})

	t.Run("pulled by a peer", func(t *testing.T) {
		dest := filepath.Join(t.TempDir(), "copy")
		start := time.Now()
		if err := pull(cfg, dest); err != nil {
			t.Fatalf("pull of %s from %s (%s): %v", id, src, addr, err)
		}
		t.Logf("32 MiB and a small tree pulled from %s in %s", src, time.Since(start).Round(time.Millisecond))
		if got := testutil.SHA256File(t, filepath.Join(dest, "big")); !strings.HasPrefix(want, got) {
			t.Errorf("big: %s here, %s on %s", got, want, src)
		}
		a, hard := testutil.Lstat(t, filepath.Join(dest, "d", "a")), testutil.Lstat(t, filepath.Join(dest, "d", "hard"))
		if a.Ino != hard.Ino || a.Nlink != 2 {
			t.Errorf("hard link: inodes %d and %d, %d links", a.Ino, hard.Ino, a.Nlink)
		}
		testutil.AssertContent(t, filepath.Join(dest, "d", "hard"), "linked\n")
		if target, err := os.Readlink(filepath.Join(dest, "out")); err != nil || target != "/etc/passwd" {
			t.Errorf("symlink: %q %v", target, err)
		}
		if st := testutil.Lstat(t, filepath.Join(dest, "fifo")); st.Mode&syscall.S_IFMT != syscall.S_IFIFO {
			t.Errorf("fifo: mode %o", st.Mode)
		}
		sp := testutil.Lstat(t, filepath.Join(dest, "sparse"))
		if sp.Size != 10001*4096 || sp.Blocks*512 > 64<<10 {
			t.Errorf("sparse: size %d, %d bytes allocated", sp.Size, sp.Blocks*512)
		}
	})
}

// chartPeer is the client side of the transfer channel towards node, with a
// certificate minted from the chart's CA (Secret berth-transfer-ca), as another
// node's plugin would have.
func (c *cluster) chartPeer(node string) *tls.Config {
	c.t.Helper()
	caDir := c.t.TempDir()
	for _, f := range []string{transfer.CACertFile, transfer.CAKeyFile} {
		b64 := c.kubectlNS(driverNS, "get", "secret", "berth-transfer-ca", "-o", "jsonpath={.data."+strings.ReplaceAll(f, ".", `\.`)+"}")
		b, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			c.t.Fatalf("Secret berth-transfer-ca %s: %v", f, err)
		}
		if err := os.WriteFile(filepath.Join(caDir, f), b, 0o600); err != nil {
			c.t.Fatal(err)
		}
	}
	peer, err := transfer.NewIssuer(caDir, "berth-e2e")
	if err != nil {
		c.t.Fatal(err)
	}
	cfg, err := peer.ClientTLS(node)
	if err != nil {
		c.t.Fatal(err)
	}
	return cfg
}

// internalIP is node's InternalIP address.
func (c *cluster) internalIP(node string) string {
	c.t.Helper()
	return c.kubectlNS("", "get", "node", node, "-o", `jsonpath={.status.addresses[?(@.type=="InternalIP")].address}`)
}

// The channel's throughput between two nodes against tar over plain TCP between
// the same two (the yardstick, target >= 0.8), in one run: a volume of
// 256 MiB (four 48 MiB files and 1,000 of 64 KiB) on the last node, pulled by this
// node through the plugin there, then sent by tar over a TCP connection to a tar
// here; both land on this machine's disk and are flushed. Two rounds, alternating
// which goes first; the figures sum both.
func TestTransferThroughput(t *testing.T) {
	if os.Getenv("BERTH_E2E_BENCH") != "1" || os.Getenv("BERTH_E2E") != "1" {
		t.Skip("measurement on the cluster: run with BERTH_E2E=1 BERTH_E2E_BENCH=1 (make e2e-bench)")
	}
	c := setup(t, alone)
	nodes := c.needNodes(2)
	src := nodes[len(nodes)-1]
	script := `set -e
cd /data
for i in 1 2 3 4; do head -c 50331648 /dev/urandom > big$i; done
for d in 0 1 2 3 4 5 6 7 8 9; do mkdir d$d; for f in $(seq 100); do head -c 65536 /dev/urandom > d$d/f$f; done; done
sync`
	c.apply(pvc("tx", "berth", "400Mi", "Filesystem") + "---\n" + podOnNode("writer", src, "tx", script, "Never"))
	c.waitPhase("writer", "Succeeded", 10*time.Minute)
	id := c.volumeHandle("tx")
	onNode := filepath.Join(c.hostPathOf("tx", defaultPool), "data")
	du, err := c.nodeRun(src, "du", "-sb", onNode)
	if err != nil {
		t.Fatal(err)
	}
	var size float64
	if _, err := fmt.Sscan(du, &size); err != nil {
		t.Fatalf("du: %q", du)
	}
	cfg := c.chartPeer(src)
	addr := c.internalIP(src) + ":" + transferPort
	here := c.internalIP(nodes[0])
	base := t.TempDir()

	channel := func(dest string) time.Duration {
		start := time.Now()
		if _, err := transfer.Pull(context.Background(), transfer.PullOptions{Addr: addr, TLS: cfg, ID: id, Dest: dest}); err != nil {
			t.Fatalf("pull: %v", err)
		}
		return time.Since(start)
	}
	tarTCP := func(dest string) time.Duration {
		testutil.MkdirAll(t, dest)
		l, err := net.Listen("tcp", net.JoinHostPort(here, "0"))
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
		got := make(chan error, 1)
		start := time.Now()
		go func() {
			conn, err := l.Accept()
			if err != nil {
				got <- err
				return
			}
			defer conn.Close()
			x := exec.Command("tar", "-x", "-C", dest)
			x.Stdin = conn
			if out, err := x.CombinedOutput(); err != nil {
				got <- fmt.Errorf("tar -x: %v: %s", err, out)
				return
			}
			got <- exec.Command("sync", "-f", dest).Run()
		}()
		if _, err := c.nodeRun(src, "bash", "-c", "tar -C "+onNode+" -cf - . > /dev/tcp/"+here+"/"+port); err != nil {
			t.Fatal(err)
		}
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	var tCh, tTar time.Duration
	for round := range 2 {
		a := filepath.Join(base, fmt.Sprintf("channel%d", round))
		b := filepath.Join(base, fmt.Sprintf("tar%d", round))
		if round == 0 {
			tCh += channel(a)
			tTar += tarTCP(b)
		} else {
			tTar += tarTCP(b)
			tCh += channel(a)
		}
		if err := os.RemoveAll(a); err != nil {
			t.Fatal(err)
		}
		if err := os.RemoveAll(b); err != nil {
			t.Fatal(err)
		}
	}
	mib := 2 * size / (1 << 20)
	for _, line := range []string{
		fmt.Sprintf("figure: transfer-2node-throughput %.1f MiB/s", mib/tCh.Seconds()),
		fmt.Sprintf("figure: tar-tcp-2node-throughput %.1f MiB/s", mib/tTar.Seconds()),
		fmt.Sprintf("figure: transfer-throughput-over-tar-tcp-2node %.2f x", tTar.Seconds()/tCh.Seconds()),
	} {
		fmt.Println(line)
		t.Log(line)
	}
}

package transfer

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/storage/clone"
	"golang.org/x/sys/unix"
)

// rec is one record a hostile server sends.
type rec struct {
	t frameType
	p []byte
}

func payload(f func(e *enc)) []byte {
	var e enc
	f(&e)
	return e.b
}

var plainMeta = clone.Meta{Mode: 0o755}

func rEnter(name string) rec { return rec{fEnter, payload(func(e *enc) { e.str(name) })} }
func rLeave() rec            { return rec{fLeave, payload(func(e *enc) { encodeMeta(e, &plainMeta) })} }
func rFileEnd() rec          { return rec{fFileEnd, nil} }

func rFile(name string, size, offset int64) rec {
	return rec{fFile, payload(func(e *enc) {
		e.str(name)
		encodeMeta(e, &plainMeta)
		e.i(size)
		e.ver(fileVersion{})
		e.i(offset)
	})}
}

func rData(off int64, b string) rec {
	p := binary.BigEndian.AppendUint64(nil, uint64(off))
	return rec{fData, append(p, b...)}
}

func rLink(name string, target ...string) rec {
	return rec{fLink, payload(func(e *enc) { e.str(name); e.strs(target) })}
}

func rSymlink(name, target string) rec {
	return rec{fSymlink, payload(func(e *enc) { e.str(name); encodeMeta(e, &plainMeta); e.str(target) })}
}

func rSpecial(name string, typ uint32) rec {
	return rec{fSpecial, payload(func(e *enc) { e.str(name); encodeMeta(e, &plainMeta); e.u(uint64(typ)); e.u(0) })}
}

// hostileServer answers every request with a header of kind and recs, then an end
// frame: a peer with valid credentials that does not play by the rules.
func hostileServer(t *testing.T, kind Kind, recs []rec) (addr string, client *tls.Config) {
	return scriptedServer(t, func(conn net.Conn) {
		if _, _, err := newFrameReader(conn).next(); err != nil {
			return
		}
		answer(conn, header{Version: protocolVersion, Kind: kind, SizeBytes: 4096, Generation: "g"}, recs)
	})
}

// scriptedServer serves each connection with handle (which closes it), over TLS
// with node-a's credentials; the client configuration is node-b's.
func scriptedServer(t *testing.T, handle func(conn net.Conn)) (addr string, client *tls.Config) {
	t.Helper()
	c := newCA(t, "ca")
	l, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS(t, c.node(t, "node-a")))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				handle(conn)
			})
		}
	})
	return l.Addr().String(), clientTLS(t, c.node(t, "node-b"), "node-a")
}

// answer writes header h, recs and an end frame.
func answer(conn net.Conn, h header, recs []rec) {
	fw := newFrameWriter(conn)
	var e enc
	_ = fw.frame(fHeader, h.encode(&e))
	for _, r := range recs {
		_ = fw.frame(r.t, r.p)
	}
	_ = fw.frame(fEnd, nil)
	_ = fw.flush()
}

// Whatever a sender says, the receiver writes beneath its staging directory only:
// names are one component, nothing is made through a symlink or over an entry, a
// hard link names a regular file of the copy. Every violation fails the Pull
// (ErrProtocol), discards the staged copy and leaves the destination unmade.
func TestReceiverConfinement(t *testing.T) {
	testutil.RequireRoot(t)
	cases := []struct {
		name string
		kind Kind
		recs []rec
		want error
	}{
		{"enter ..", KindTree, []rec{rEnter("..")}, ErrProtocol},
		{"enter a path", KindTree, []rec{rEnter("a/b")}, ErrProtocol},
		{"enter an empty name", KindTree, []rec{rEnter("")}, ErrProtocol},
		{"file with an absolute name", KindTree, []rec{rFile("/etc/passwd", 1, 0)}, ErrProtocol},
		{"file named ..", KindTree, []rec{rFile("..", 1, 0)}, ErrProtocol},
		{"enter through a symlink", KindTree, []rec{rSymlink("evil", "../../outside"), rEnter("evil")}, ErrProtocol},
		{"file over a symlink", KindTree, []rec{rSymlink("evil", "../../outside/host"), rFile("evil", 4, 0), rData(0, "pwnd"), rFileEnd()}, ErrProtocol},
		{"symlink over a file", KindTree, []rec{rFile("f", 0, 0), rFileEnd(), rSymlink("f", "/etc")}, ErrProtocol},
		{"a name twice", KindTree, []rec{rEnter("d"), rLeave(), rEnter("d")}, ErrProtocol},
		{"link out of the copy", KindTree, []rec{rLink("x", "..", "outside", "host")}, ErrProtocol},
		{"link with an absolute target", KindTree, []rec{rLink("x", "/etc/passwd")}, ErrProtocol},
		{"link through a symlink", KindTree, []rec{rSymlink("s", "../../outside"), rLink("x", "s", "host")}, ErrProtocol},
		{"link to a symlink", KindTree, []rec{rSymlink("s", "../../outside/host"), rLink("x", "s")}, ErrProtocol},
		{"link to a directory", KindTree, []rec{rEnter("d"), rLeave(), rLink("x", "d")}, ErrProtocol},
		{"link to nothing sent", KindTree, []rec{rLink("x", "missing")}, ErrProtocol},
		{"special of a regular type", KindTree, []rec{rSpecial("x", unix.S_IFREG)}, ErrProtocol},
		{"special of a directory type", KindTree, []rec{rSpecial("x", unix.S_IFDIR)}, ErrProtocol},
		{"data past the file's size", KindTree, []rec{rFile("f", 2, 0), rData(0, "abc")}, ErrProtocol},
		{"data before what was written", KindTree, []rec{rFile("f", 8, 0), rData(4, "abcd"), rData(0, "ab")}, ErrProtocol},
		{"data outside a file", KindTree, []rec{rData(0, "abcd")}, ErrProtocol},
		{"a file continued that was not asked for", KindTree, []rec{rFile("f", 8, 4), rData(4, "abcd"), rFileEnd()}, ErrProtocol},
		{"an entry inside a file", KindTree, []rec{rFile("f", 8, 0), rEnter("d")}, ErrProtocol},
		{"records after the root", KindTree, []rec{rLeave(), rEnter("d")}, ErrProtocol},
		{"end before the root is complete", KindTree, []rec{rEnter("d")}, ErrProtocol},
		{"a directory left twice", KindTree, []rec{rEnter("d"), rLeave(), rLeave(), rLeave()}, ErrProtocol},
		{"mode bits beyond 07777", KindTree, []rec{{fLeave, payload(func(e *enc) { encodeMeta(e, &clone.Meta{Mode: 0o170777}) })}}, ErrProtocol},
		{"an xattr without a name", KindTree, []rec{{fLeave, payload(func(e *enc) {
			encodeMeta(e, &clone.Meta{Mode: 0o755, Xattrs: []clone.Xattr{{Name: "", Value: []byte("v")}}})
		})}}, ErrProtocol},
		{"an unknown frame", KindTree, []rec{{frameType(99), nil}}, ErrProtocol},
		{"a frame too large", KindTree, []rec{{fEnter, make([]byte, maxFrame+1)}}, ErrProtocol},
		{"an image file with a name", KindImage, []rec{rFile("x", 4, 0), rFileEnd()}, ErrProtocol},
		{"two files in an image", KindImage, []rec{rFile("", 4, 0), rFileEnd(), rFile("", 4, 0), rFileEnd()}, ErrProtocol},
		{"a directory in an image", KindImage, []rec{rEnter("d")}, ErrProtocol},
		{"more data than allowed", KindTree, []rec{rFile("f", 8192, 0), rData(0, string(make([]byte, 8192)))}, ErrTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			outside, dst := filepath.Join(base, "outside"), filepath.Join(base, "dst")
			testutil.WriteFile(t, filepath.Join(outside, "host"), "host data")
			testutil.MkdirAll(t, dst)
			before := testutil.ListTree(t, outside)
			addr, cfg := hostileServer(t, tc.kind, tc.recs)
			o := PullOptions{Addr: addr, TLS: cfg, ID: "vol", Dest: filepath.Join(dst, "data"), MaxBytes: 4096}
			_, err := Pull(testContext(t), o)
			wantErr(t, err, tc.want)
			if got := testutil.ListTree(t, outside); !slices.Equal(got, before) {
				t.Errorf("outside changed:\n%v\nwant\n%v", got, before)
			}
			if ents, _ := os.ReadDir(dst); len(ents) != 0 {
				t.Errorf("left in the destination's directory: %v", ents)
			}
		})
	}
}

// The frame reader and the decoders take any input without panicking or
// allocating more than it holds.
func FuzzDecode(f *testing.F) {
	var e enc
	r := &request{Version: protocolVersion, ID: "b1-default-x", Started: true, Generation: "g", Kind: KindTree,
		Path: []string{"a", "b"}, Step: stepEntry, Partial: partial{Name: "f", Offset: 4}}
	f.Add(r.encode(&e))
	dr := &request{Version: protocolVersion, ID: "b1-default-x", Generation: "g", Kind: KindImage, Delta: true,
		Since: 1, Chunk: DeltaChunk, Hashes: make([]byte, 2*hashSize)}
	f.Add(dr.encode(&e))
	h := header{Version: protocolVersion, Kind: KindImage, SizeBytes: 1 << 30, Total: 4096, ServerTime: 1, Delta: true}
	f.Add(h.encode(&e))
	f.Add(rFile("f", 10, 0).p)
	f.Add(rLink("x", "a", "b").p)
	f.Add(rSymlink("s", "/t").p)
	f.Add(encodeError(&e, ErrNotFound))
	f.Fuzz(func(t *testing.T, p []byte) {
		_, _ = decodeRequest(p)
		_, _ = decodeHeader(p)
		_ = decodeError(p)
		d := &dec{b: p}
		_ = decodeMeta(d)
		_ = d.strs(maxPath, maxName)
		_ = d.end()
		fr := newFrameReader(bytes.NewReader(p))
		for {
			if _, _, err := fr.next(); err != nil {
				break
			}
		}
	})
}

// Keepalives (a sender skipping what the client has) may come between any
// records and change nothing.
func TestReceiverKeepalive(t *testing.T) {
	testutil.RequireRoot(t)
	ka := rec{fKeepalive, nil}
	addr, cfg := hostileServer(t, KindTree, []rec{ka, rEnter("d"), ka, rFile("f", 4, 0), ka, rData(0, "data"), ka, rFileEnd(), rLeave(), ka, rLeave(), ka})
	dest := filepath.Join(t.TempDir(), "data")
	if _, err := Pull(testContext(t), PullOptions{Addr: addr, TLS: cfg, ID: "vol", Dest: dest}); err != nil {
		t.Fatal(err)
	}
	testutil.AssertContent(t, filepath.Join(dest, "d", "f"), "data")
}

package storage

import (
	"path/filepath"
	"testing"
	"unicode/utf8"
)

// FuzzStaged: whatever a staging record holds, Staged returns an error or a record
// that MarkStaged writes back identically; and any staging path kubelet can send
// (proto3 strings are UTF-8) is read back exactly as it was marked.
func FuzzStaged(f *testing.F) {
	for _, s := range [][2]string{
		{`{"path":"/var/lib/kubelet/plugins/kubernetes.io/csi/berth.csi.io/abc/globalmount"}`, "/var/lib/kubelet/staging/v"},
		{`{"path":""}`, ""},
		{`{"path":"\u00e9\ud800"}`, "/a\u2028b"},
		{`null`, "\x00"},
		{`{"path":1}`, "/\xff"},
		{``, "/a\nb"},
	} {
		f.Add([]byte(s[0]), s[1])
	}
	p := fuzzPool(f)
	path := filepath.Join(p.VolumeDir(testHash), stagedFile)
	f.Fuzz(func(t *testing.T, data []byte, target string) {
		writeFile(t, path, data)
		if st, err := p.Staged(testHash); err == nil {
			if st == nil {
				t.Fatal("Staged found no record where one exists")
			}
			if err := p.MarkStaged(testHash, st.Path); err != nil {
				t.Fatal(err)
			}
			again, err := p.Staged(testHash)
			if err != nil || again == nil || *again != *st {
				t.Fatalf("staging record %q read as %+v, written back and read as %+v, %v", data, st, again, err)
			}
		}
		if !utf8.ValidString(target) {
			return
		}
		if err := p.MarkStaged(testHash, target); err != nil {
			t.Fatal(err)
		}
		if st, err := p.Staged(testHash); err != nil || st == nil || st.Path != target {
			t.Fatalf("MarkStaged(%q) read back as %+v, %v", target, st, err)
		}
	})
}

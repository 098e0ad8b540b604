package locate_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-csi/berth/internal/testutil"
	"github.com/berth-csi/berth/pkg/healthz"
	"github.com/berth-csi/berth/pkg/locate"
	"github.com/berth-csi/berth/pkg/orphans"
)

// serve runs, on a fresh unix socket until the test ends, what the pv-lister serves:
// /volume-handles from lister and /locate from l. It returns the socket's path.
func serve(t *testing.T, lister orphans.Lister, l locate.Locator) string {
	t.Helper()
	mux := http.NewServeMux()
	ctx, cancel := context.WithCancel(context.Background())
	orphans.ServeVolumeHandles(ctx, mux, lister)
	locate.ServeLocate(ctx, mux, l)
	return serveMux(t, ctx, cancel, mux)
}

func serveMux(t *testing.T, ctx context.Context, cancel context.CancelFunc, h http.Handler) string {
	t.Helper()
	path := filepath.Join(testutil.ShortTempDir(t), "pv-lister.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- healthz.ServeHTTP(ctx, lis, h, 0) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return path
}

// TestSocketLocator: the driver's side reads through the socket what the pv-lister
// finds through the API, and its refusals by kind; the same socket still lists the
// volume handles for the orphan scan.
func TestSocketLocator(t *testing.T) {
	api := cluster()
	kl := locator(t, api, 1)
	sock := serve(t, orphans.KubeLister{PVs: kl.PVs, Driver: driver, PageSize: 1}, kl)
	l := locate.NewSocketLocator(sock)
	ctx := context.Background()

	for _, tc := range []struct {
		id   string
		want locate.Where
	}{
		{volA, locate.Where{Node: "node-a", Address: "10.0.0.1"}},
		{snapPre, locate.Where{Node: "node-b", Address: "fd00::b"}},
	} {
		if got, err := l.Locate(ctx, tc.id); err != nil || got != tc.want {
			t.Errorf("Locate %s: %+v, %v; want %+v", tc.id, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		name    string
		id      string
		wantErr error  // errors.Is; nil: neither sentinel
		wantMsg string // in the error's text
	}{
		{"unknown snapshot (404)", snapNone, locate.ErrNotFound, "no VolumeSnapshotContent of berth.csi.io names it"},
		{"shared pool's volume (404)", volS, locate.ErrNotFound, "pv-shared names no node"},
		{"no ID (400)", "", locate.ErrInvalidID, "400"},
		{"not a Berth ID (400)", "pvc-1&id=" + volA, locate.ErrInvalidID, "not a Berth volume or snapshot ID"},
	} {
		_, err := l.Locate(ctx, tc.id)
		if err == nil || !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
			t.Errorf("%s: %v, want %v saying %q", tc.name, err, tc.wantErr, tc.wantMsg)
		}
	}

	h, err := orphans.NewSocketLister(sock).VolumeHandles(ctx)
	if err != nil || len(h) != 3 || !h.Has(volA) || !h.Has(volB) || !h.Has(volS) {
		t.Errorf("volume handles on the same socket: %v, %v", h, err)
	}

	api.refuse = "/api/v1/nodes/node-a"
	_, err = l.Locate(ctx, volA)
	if err == nil || errors.Is(err, locate.ErrNotFound) || !strings.Contains(err.Error(), "502") || !strings.Contains(err.Error(), "Forbidden") {
		t.Errorf("node refused by RBAC: %v, want a 502 naming it", err)
	}
}

// locatorFunc is a Locator of a function.
type locatorFunc func(ctx context.Context, id string) (locate.Where, error)

func (f locatorFunc) Locate(ctx context.Context, id string) (locate.Where, error) { return f(ctx, id) }

// TestServeLocateSharesLookups: requests for one ID while it is looked up share
// that lookup; another ID gets its own.
func TestServeLocateSharesLookups(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	l := locatorFunc(func(ctx context.Context, id string) (locate.Where, error) {
		calls.Add(1)
		<-release
		return locate.Where{Node: "node-" + id[:2], Address: "10.0.0.1"}, nil
	})
	var arrived atomic.Int32
	mux := http.NewServeMux()
	ctx, cancel := context.WithCancel(context.Background())
	locate.ServeLocate(ctx, mux, l)
	sock := serveMux(t, ctx, cancel, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		mux.ServeHTTP(w, r)
	}))
	client := locate.NewSocketLocator(sock)
	var wg sync.WaitGroup
	got := make([]locate.Where, 6)
	errs := make([]error, 6)
	for i := range got {
		id := volA
		if i == 5 {
			id = snapA
		}
		wg.Go(func() { got[i], errs[i] = client.Locate(context.Background(), id) })
	}
	// The six requests reach the server, which starts two lookups; the others
	// join theirs at once (a moment more, for them to get from the count there).
	deadline := time.Now().Add(10 * time.Second)
	for (arrived.Load() < 6 || calls.Load() < 2) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	for i := range got {
		want := "node-b1"
		if i == 5 {
			want = "node-s1"
		}
		if errs[i] != nil || got[i].Node != want {
			t.Errorf("request %d: %+v, %v; want %s", i, got[i], errs[i], want)
		}
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("%d lookups for 2 IDs (6 requests)", n)
	}
}

// TestSocketLocatorBadAnswers: no pv-lister, an answer too long, or one that names no
// node are errors, never a Where.
func TestSocketLocatorBadAnswers(t *testing.T) {
	none := filepath.Join(testutil.ShortTempDir(t), "none.sock")
	if w, err := locate.NewSocketLocator(none).Locate(context.Background(), volA); err == nil {
		t.Errorf("no pv-lister: %+v, no error", w)
	}
	for _, body := range []string{
		`{"node":"node-a","address":"` + strings.Repeat("1", 70<<10) + `"}`,
		`{"node":"node-a"}`,
		`not JSON`,
	} {
		ctx, cancel := context.WithCancel(context.Background())
		sock := serveMux(t, ctx, cancel, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(body))
		}))
		if w, err := locate.NewSocketLocator(sock).Locate(context.Background(), volA); err == nil {
			t.Errorf("answer %.40q: %+v, no error", body, w)
		}
	}
}

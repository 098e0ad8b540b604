package healthz

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestHandler(t *testing.T) {
	fails := func() error { return errors.New("pool default not served") }
	ok := func() error { return nil }
	tests := []struct {
		name     string
		method   string
		path     string
		checks   []Check
		wantCode int
		wantBody string
	}{
		{name: "no checks", method: "GET", path: "/healthz", wantCode: 200, wantBody: "ok"},
		{name: "all pass", method: "GET", path: "/healthz", checks: []Check{ok, ok}, wantCode: 200, wantBody: "ok"},
		{name: "one fails", method: "GET", path: "/healthz", checks: []Check{ok, fails}, wantCode: 503, wantBody: "pool default not served"},
		{name: "unknown path", method: "GET", path: "/metrics", wantCode: 404},
		{name: "wrong method", method: "POST", path: "/healthz", wantCode: 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			Handler(tc.checks...).ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
			if rec.Code != tc.wantCode {
				t.Errorf("code %d, want %d", rec.Code, tc.wantCode)
			}
			if !strings.Contains(rec.Body.String(), tc.wantBody) {
				t.Errorf("body %q, want %q", rec.Body.String(), tc.wantBody)
			}
		})
	}
}

// A pool served without enforcing sizes keeps the driver ready, and /readyz says so
// after its "ok"; /healthz does not.
func TestReadyzNotices(t *testing.T) {
	notes := func() []string { return []string{"SizesNotEnforced: pool default (kind auto) is a dir pool"} }
	h := Routes(nil, []Check{func() error { return nil }}, notes)
	for _, tc := range []struct{ path, want string }{
		{"/readyz", "ok\nSizesNotEnforced: pool default (kind auto) is a dir pool\n"},
		{"/healthz", "ok\n"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", tc.path, nil))
		if rec.Code != 200 || rec.Body.String() != tc.want {
			t.Errorf("%s: %d %q, want 200 %q", tc.path, rec.Code, rec.Body.String(), tc.want)
		}
	}
}

func TestServeOnLoopbackAndStop(t *testing.T) {
	lis, err := Listen(0)
	if err != nil {
		t.Fatal(err)
	}
	if host := lis.Addr().String(); !strings.HasPrefix(host, "127.0.0.1:") {
		t.Fatalf("listening on %s, want 127.0.0.1 only", host)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, lis, Handler()) }()
	resp, err := http.Get("http://" + lis.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
		t.Errorf("got %d %q", resp.StatusCode, body)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not stop")
	}
}

func TestListenRefusesBusyPort(t *testing.T) {
	lis, err := Listen(0)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if _, err := Listen(lis.Addr().(*net.TCPAddr).Port); err == nil {
		t.Error("second listener on a busy port")
	}
}

// Package healthz serves GET /healthz over HTTP on 127.0.0.1, for the kubelet's liveness
// probe: the job the livenessprobe sidecar does, without a second container.
package healthz

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"k8s.io/klog/v2"
)

// Check reports a reason the driver is not healthy, or nil.
type Check func() error

// Handler answers /healthz with 200 "ok" when every check passes, else 503 and the
// first failure. Anything else is 404.
func Handler(checks ...Check) http.Handler { return Routes(checks, nil) }

// Routes answers /healthz (liveness) from live, and /readyz from live and then
// ready: 200 "ok" when every check passes, else 503 and the first failure. Anything
// else is 404. A 200 from /readyz is followed by the lines of notes, if any: what
// the driver serves without doing all its operator may expect (a pool whose volume
// sizes are not enforced).
func Routes(live, ready []Check, notes ...func() []string) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", answer(live, nil))
	mux.HandleFunc("GET /readyz", answer(append(append([]Check{}, live...), ready...), notes))
	return mux
}

func answer(checks []Check, notes []func() []string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		for _, c := range checks {
			if err := c(); err != nil {
				klog.FromContext(r.Context()).V(6).Info("Health check failed", "path", r.URL.Path, "err", err)
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintln(w, err)
				return
			}
		}
		fmt.Fprintln(w, "ok")
		for _, n := range notes {
			for _, line := range n() {
				fmt.Fprintln(w, line)
			}
		}
	}
}

// Listen opens the health port on 127.0.0.1 only (0 picks a free port, for tests).
func Listen(port int) (net.Listener, error) {
	lis, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("health port: %w", err)
	}
	return lis, nil
}

// Serve serves h on lis until ctx ends, then shuts down within a few seconds.
func Serve(ctx context.Context, lis net.Listener, h http.Handler) error {
	klog.FromContext(ctx).Info("Serving health checks", "address", lis.Addr().String())
	return ServeHTTP(ctx, lis, h, 0)
}

// ServeHTTP serves h on lis until ctx ends, then shuts down within a few seconds;
// a response taking longer than writeTimeout (0: no bound) is cut off. The caller
// says what it serves in its log.
func ServeHTTP(ctx context.Context, lis net.Listener, h http.Handler, writeTimeout time.Duration) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: writeTimeout,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(lis)
	<-done
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

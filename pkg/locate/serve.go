package locate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/berth-csi/berth/pkg/server"
	"golang.org/x/sync/singleflight"
	"k8s.io/klog/v2"
)

// Path is where the pv-lister answers: GET /locate?id=<volume or snapshot ID>.
const Path = "/locate"

const (
	// maxLocating bounds the lookups one pv-lister runs at once (each may list
	// every PersistentVolume); the others wait for a turn.
	maxLocating = 4
	// locateTimeout bounds one lookup, waiting for its turn included: a lookup is
	// shared by every request for its ID meanwhile, so none may hang it forever.
	locateTimeout = time.Minute
	// maxAnswer bounds what the driver reads of an answer or a refusal.
	maxAnswer = 64 << 10
)

// ServeLocate adds GET /locate?id=<id> to mux, answered by l: 200 and the JSON of
// Where, 404 with the message for ErrNotFound, 400 for a missing or invalid ID, 502
// with the message for any other failure (the API's). Requests for one ID while it
// is looked up share that lookup; at most maxLocating run at once. Lookups run
// under ctx, the server's, not a request's, as several requests may share one.
func ServeLocate(ctx context.Context, mux *http.ServeMux, l Locator) {
	var flights singleflight.Group
	turns := make(chan struct{}, maxLocating)
	locate := func(id string) (any, error) {
		lctx, cancel := context.WithTimeout(ctx, locateTimeout)
		defer cancel()
		select {
		case turns <- struct{}{}:
			defer func() { <-turns }()
		case <-lctx.Done():
			return Where{}, fmt.Errorf("locate %s: no turn: %w", id, lctx.Err())
		}
		return l.Locate(lctx, id)
	}
	mux.HandleFunc("GET "+Path, func(w http.ResponseWriter, r *http.Request) {
		logger := klog.FromContext(ctx)
		id := r.URL.Query().Get("id")
		if id == "" {
			http.Error(w, "the id parameter is required", http.StatusBadRequest)
			return
		}
		start := time.Now()
		var res singleflight.Result
		select {
		case res = <-flights.DoChan(id, func() (any, error) { return locate(id) }):
		case <-r.Context().Done():
			return
		}
		if res.Err != nil {
			code := http.StatusBadGateway
			switch {
			case errors.Is(res.Err, ErrInvalidID):
				code = http.StatusBadRequest
			case errors.Is(res.Err, ErrNotFound):
				code = http.StatusNotFound
				logger.V(4).Info("Not located", "id", id, "err", res.Err.Error())
			default:
				logger.Error(res.Err, "Cannot locate", "id", id)
			}
			http.Error(w, res.Err.Error(), code)
			return
		}
		where := res.Val.(Where)
		logger.V(4).Info("Located", "id", id, "node", where.Node, "address", where.Address,
			"shared", res.Shared, "duration", time.Since(start))
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(where)
	})
}

// SocketLocator asks a pv-lister over its unix socket.
type SocketLocator struct {
	client *http.Client
}

// NewSocketLocator returns a Locator asking the pv-lister at socket path.
func NewSocketLocator(path string) *SocketLocator {
	tr := server.UnixTransport(path)
	tr.MaxIdleConns, tr.IdleConnTimeout = maxLocating, time.Minute
	return &SocketLocator{client: &http.Client{Transport: tr}}
}

// answerError is the pv-lister's refusal; it wraps ErrNotFound for a 404 and
// ErrInvalidID for a 400.
type answerError struct {
	status string
	msg    string
	is     error
}

func (e *answerError) Error() string { return "pv-lister: " + e.status + ": " + e.msg }
func (e *answerError) Unwrap() error { return e.is }

// Locate implements Locator.
func (l *SocketLocator) Locate(ctx context.Context, id string) (Where, error) {
	u := "http://pv-lister" + Path + "?" + url.Values{"id": {id}}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return Where{}, err
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return Where{}, fmt.Errorf("ask the pv-lister where %s is: %w", id, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return Where{}, fmt.Errorf("read the pv-lister's answer for %s: %w", id, err)
	}
	if len(data) > maxAnswer {
		return Where{}, fmt.Errorf("the pv-lister's answer for %s is over %d bytes", id, maxAnswer)
	}
	if resp.StatusCode != http.StatusOK {
		e := &answerError{status: resp.Status, msg: strings.TrimSpace(string(data))}
		switch resp.StatusCode {
		case http.StatusNotFound:
			e.is = ErrNotFound
		case http.StatusBadRequest:
			e.is = ErrInvalidID
		}
		return Where{}, e
	}
	var where Where
	if err := json.Unmarshal(data, &where); err != nil {
		return Where{}, fmt.Errorf("decode the pv-lister's answer for %s: %w", id, err)
	}
	if where.Node == "" || where.Address == "" {
		return Where{}, fmt.Errorf("the pv-lister's answer for %s names no node or no address: %s", id, data)
	}
	return where, nil
}

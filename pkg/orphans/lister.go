package orphans

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/berth-csi/berth/pkg/healthz"
	"github.com/berth-csi/berth/pkg/server"
	"k8s.io/klog/v2"
)

// Lister lists the volume handles of the driver's PersistentVolumes.
type Lister interface {
	VolumeHandles(ctx context.Context) (Handles, error)
}

// KubeLister lists them through the API server.
type KubeLister struct {
	PVs      PVLister
	Driver   string
	PageSize int64 // 0: DefaultPageSize
}

// VolumeHandles implements Lister.
func (l KubeLister) VolumeHandles(ctx context.Context) (Handles, error) {
	return ListHandles(ctx, l.PVs, l.Driver, l.PageSize)
}

// The pv-lister runs beside the driver in its own unprivileged container, the one
// of the node plugin's pod that holds an API token (the privileged driver holds
// none: docs/operations.md, "Privileges of the driver"). It answers GET
// /volume-handles on a unix socket in a directory the two containers share, with
// a listing made for that request: the driver asks once per scan.
const listerPath = "/volume-handles"

// maxListerResponse bounds what the driver reads from the pv-lister: 64 MiB, over
// a million handles.
const maxListerResponse = 64 << 20

type listerResponse struct {
	VolumeHandles []string `json:"volumeHandles"`
}

// ServeLister answers GET /volume-handles on lis with l's listing until ctx ends
// (ServeVolumeHandles).
func ServeLister(ctx context.Context, lis net.Listener, l Lister) error {
	mux := http.NewServeMux()
	ServeVolumeHandles(ctx, mux, l)
	klog.FromContext(ctx).Info("Serving PersistentVolume listings", "address", lis.Addr().String())
	return healthz.ServeHTTP(ctx, lis, mux, 0)
}

// ServeVolumeHandles adds GET /volume-handles to mux, answered with l's listing; a
// listing that fails answers 502 with its error. One listing runs at a time: a
// request meanwhile waits for it. ctx is the server's, for its logger.
func ServeVolumeHandles(ctx context.Context, mux *http.ServeMux, l Lister) {
	var mu sync.Mutex
	failing := false
	mux.HandleFunc("GET "+listerPath, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		logger := klog.FromContext(ctx)
		start := time.Now()
		h, err := l.VolumeHandles(r.Context())
		if err != nil {
			if !failing {
				logger.Error(err, "Cannot list PersistentVolumes for the orphan scan; tried again at its next scan")
			}
			failing = true
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		if failing {
			logger.Info("PersistentVolumes listed again for the orphan scan")
		}
		failing = false
		resp := listerResponse{VolumeHandles: make([]string, 0, len(h))}
		for id := range h {
			resp.VolumeHandles = append(resp.VolumeHandles, id)
		}
		logger.V(4).Info("PersistentVolumes listed", "volumeHandles", len(h), "duration", time.Since(start))
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
	})
}

// SocketLister asks a pv-lister over its unix socket.
type SocketLister struct {
	client *http.Client
}

// NewSocketLister returns a Lister asking the pv-lister at socket path.
func NewSocketLister(path string) *SocketLister {
	tr := server.UnixTransport(path)
	tr.DisableKeepAlives = true // one request per scan
	return &SocketLister{client: &http.Client{Transport: tr}}
}

// VolumeHandles implements Lister.
func (l *SocketLister) VolumeHandles(ctx context.Context) (Handles, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://pv-lister"+listerPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := l.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("ask the pv-lister: %w", err)
	}
	defer resp.Body.Close()
	body := io.LimitReader(resp.Body, maxListerResponse+1)
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(body, 4096))
		return nil, fmt.Errorf("pv-lister: %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	data, err := io.ReadAll(body)
	if err != nil {
		return nil, fmt.Errorf("read the pv-lister's answer: %w", err)
	}
	if len(data) > maxListerResponse {
		return nil, errors.New("the pv-lister's answer is over 64 MiB")
	}
	var lr listerResponse
	if err := json.Unmarshal(data, &lr); err != nil {
		return nil, fmt.Errorf("decode the pv-lister's answer: %w", err)
	}
	out := make(Handles, len(lr.VolumeHandles))
	for _, id := range lr.VolumeHandles {
		out[id] = struct{}{}
	}
	return out, nil
}

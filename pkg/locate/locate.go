// Package locate finds the node that holds a volume or a snapshot of the driver, and
// the address of that node's plugin, for copies between nodes over the transfer
// channel (a restore or a clone whose source lives on another node).
//
// The answer comes from the API server: the PersistentVolume naming a volume, the
// VolumeSnapshotContent naming a snapshot, then the Node. The privileged driver
// container holds no API token, so it asks the pv-lister over its unix socket
// (SocketLocator), which asks the API (KubeLocator) and answers GET /locate
// (ServeLocate) on the socket it serves the orphan scan on.
package locate

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/berth-csi/berth/pkg/grouplabel"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/storage"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Where is the node holding a volume or snapshot and the address its plugin serves on.
type Where struct {
	Node    string `json:"node"`
	Address string `json:"address"` // the node's InternalIP (IPv4 or IPv6 literal, no port)
}

// Locator finds where a volume or a snapshot (by its Berth ID) lives.
type Locator interface {
	Locate(ctx context.Context, id string) (Where, error)
}

// ErrNotFound: nothing of the driver names the ID, or what names it names no node
// (a shared pool's volume), or that node is gone.
var ErrNotFound = errors.New("not found")

// snapshotPrefix starts a snapshot ID (storage.ParseSnapshotID); any other ID is a
// volume's (storage.ParseVolumeID).
const snapshotPrefix = "s1-"

// ErrInvalidID: the ID is neither a Berth volume ID nor a Berth snapshot ID.
var ErrInvalidID = errors.New("not a Berth volume or snapshot ID")

// ContentLister lists VolumeSnapshotContents: NewContentClient's, or a test's.
type ContentLister interface {
	List(ctx context.Context, opts metav1.ListOptions) (*ContentList, error)
}

// NodeGetter gets Nodes: client-go's NodeInterface is one (a fake's in tests), and
// NewNodeClient's.
type NodeGetter interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Node, error)
}

// KubeLocator locates through the API server. Each Locate lists at most once the
// VolumeSnapshotContents (a snapshot) and once the PersistentVolumes, page by page
// (the API has no field selector on either handle), then gets one Node.
type KubeLocator struct {
	PVs      orphans.PVLister
	Contents ContentLister
	Nodes    NodeGetter
	Driver   string
	PageSize int64 // 0: orphans.DefaultPageSize
}

// Locate implements Locator.
func (l KubeLocator) Locate(ctx context.Context, id string) (Where, error) {
	var node string
	var err error
	if strings.HasPrefix(id, snapshotPrefix) {
		if _, perr := storage.ParseSnapshotID(id); perr != nil {
			return Where{}, fmt.Errorf("%w: %v", ErrInvalidID, perr)
		}
		node, err = l.snapshotNode(ctx, id)
	} else {
		if _, perr := storage.ParseVolumeID(id); perr != nil {
			return Where{}, fmt.Errorf("%w: %v", ErrInvalidID, perr)
		}
		node, err = l.volumeNode(ctx, id, "volume "+id)
	}
	if err != nil {
		return Where{}, err
	}
	addr, err := l.address(ctx, node, id)
	if err != nil {
		return Where{}, err
	}
	return Where{Node: node, Address: addr}, nil
}

func (l KubeLocator) pageSize() int64 {
	if l.PageSize <= 0 {
		return orphans.DefaultPageSize
	}
	return l.PageSize
}

// volumeNode is the node in the affinity of the PersistentVolume of the driver that
// names volume id (what says what is looked for, in errors). The first such
// PersistentVolume ends the listing: two PersistentVolumes never name one volume,
// save by an admin's mistake.
func (l KubeLocator) volumeNode(ctx context.Context, id, what string) (string, error) {
	opts := metav1.ListOptions{Limit: l.pageSize()}
	for {
		page, err := l.PVs.List(ctx, opts)
		if err != nil {
			return "", fmt.Errorf("list PersistentVolumes: %w", err)
		}
		for i := range page.Items {
			pv := &page.Items[i]
			if h, ok := orphans.HandleOf(pv, l.Driver); !ok || h != id {
				continue
			}
			if n := grouplabel.NodeOf(pv); n != "" {
				return n, nil
			}
			return "", fmt.Errorf("%s: its PersistentVolume %s names no node in its node affinity (%s), as a shared pool's volume: %w",
				what, pv.Name, storage.TopologyKey, ErrNotFound)
		}
		if page.Continue == "" {
			return "", fmt.Errorf("%s: no PersistentVolume of %s names it: %w", what, l.Driver, ErrNotFound)
		}
		opts.Continue = page.Continue
	}
}

// snapshotNode is the node of snapshot id: the managed-by label of the
// VolumeSnapshotContent of the driver that names it (the snapshot-controller's
// distributed snapshotting puts the node's name there), else the node of its source
// volume's PersistentVolume. A labelled content ends the listing; an unlabelled one
// (a pre-provisioned content may be, beside the dynamic one of the same snapshot)
// does not.
func (l KubeLocator) snapshotNode(ctx context.Context, id string) (string, error) {
	opts := metav1.ListOptions{Limit: l.pageSize()}
	found, volume := "", ""
	for {
		page, err := l.Contents.List(ctx, opts)
		if err != nil {
			return "", fmt.Errorf("list VolumeSnapshotContents: %w", err)
		}
		for i := range page.Items {
			c := &page.Items[i]
			if c.Spec.Driver != l.Driver || (c.Status.SnapshotHandle != id && c.Spec.Source.SnapshotHandle != id) {
				continue
			}
			if n := c.Metadata.Labels[grouplabel.ManagedByLabel]; n != "" {
				return n, nil
			}
			if found == "" || (volume == "" && c.Spec.Source.VolumeHandle != "") {
				found, volume = c.Metadata.Name, c.Spec.Source.VolumeHandle
			}
		}
		if page.Metadata.Continue == "" {
			break
		}
		opts.Continue = page.Metadata.Continue
	}
	switch {
	case found == "":
		return "", fmt.Errorf("snapshot %s: no VolumeSnapshotContent of %s names it: %w", id, l.Driver, ErrNotFound)
	case volume == "":
		return "", fmt.Errorf("snapshot %s: its VolumeSnapshotContent %s has no label %s and no source volume: %w",
			id, found, grouplabel.ManagedByLabel, ErrNotFound)
	}
	return l.volumeNode(ctx, volume, fmt.Sprintf("snapshot %s (VolumeSnapshotContent %s, without label %s) of volume %s",
		id, found, grouplabel.ManagedByLabel, volume))
}

// address is the first InternalIP of node that is an IP address.
func (l KubeLocator) address(ctx context.Context, node, id string) (string, error) {
	n, err := l.Nodes.Get(ctx, node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("%s: its node %s does not exist: %w", id, node, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("get node %s: %w", node, err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Zone() == "" {
			return ip.String(), nil
		}
	}
	return "", fmt.Errorf("%s: node %s has no InternalIP address", id, node)
}

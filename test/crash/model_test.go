package crash

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/status"
)

// existence is what the test knows of a volume name.
type existence int

const (
	absent    existence = iota // the last acknowledged operation deleted it, or none created it
	present                    // the last acknowledged operation created it
	uncertain                  // an operation on it failed or was cut off by the kill
)

func (e existence) String() string {
	return [...]string{"absent", "present", "uncertain"}[e]
}

// volName is one volume name and what the acknowledged operations on it
// imply. The test sends one call at a time per name, so the acknowledgements
// of one name are totally ordered; different names interleave freely.
type volName struct {
	name string
	busy sync.Mutex // held by the call in flight on this name; guards the rest

	state existence
	id    string          // the volume's ID while present; its last known ID otherwise
	ids   map[string]bool // every ID the driver returned for this name
}

type model struct {
	names []*volName
}

func newModel(n int) *model {
	m := &model{}
	for i := range n {
		m.names = append(m.names, &volName{name: fmt.Sprintf("crash-%02d", i), ids: map[string]bool{}})
	}
	return m
}

// counts of one round's calls.
type roundStats struct {
	creates, deletes atomic.Int64 // acknowledged
	cutOff           atomic.Int64 // failed after the kill: outcome unknown
}

// load drives CreateVolume and DeleteVolume calls against one driver.
type load struct {
	t      *testing.T
	ctrl   csi.ControllerClient
	m      *model
	killed *atomic.Bool // set just before the driver is killed
	stats  *roundStats
}

func createRequest(name string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:          name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		}},
		Parameters: map[string]string{"pool": "default"},
	}
}

// step calls CreateVolume or DeleteVolume on a random free name and records
// the outcome.
func (l *load) step(ctx context.Context, rng *rand.Rand) {
	n := l.m.names[rng.IntN(len(l.m.names))]
	if !n.busy.TryLock() {
		return // another worker has a call in flight on it
	}
	defer n.busy.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()

	// Delete half of the present volumes; now and then delete the stale ID
	// of an absent one, which must succeed and change nothing.
	if (n.state == present && rng.IntN(2) == 0) || (n.state == absent && n.id != "" && rng.IntN(5) == 0) {
		l.delete(ctx, n)
		return
	}
	l.create(ctx, n)
}

func (l *load) create(ctx context.Context, n *volName) {
	resp, err := l.ctrl.CreateVolume(ctx, createRequest(n.name))
	if err != nil {
		l.failed("CreateVolume", n, err)
		n.state = uncertain
		return
	}
	id := resp.GetVolume().GetVolumeId()
	switch {
	case id == "":
		l.t.Errorf("CreateVolume %s succeeded with an empty volume_id", n.name)
		n.state = uncertain
		return
	case n.state == present && id != n.id:
		l.t.Errorf("CreateVolume %s, already present as %s, returned another volume %s", n.name, n.id, id)
	}
	n.state, n.id, n.ids[id] = present, id, true
	l.stats.creates.Add(1)
}

func (l *load) delete(ctx context.Context, n *volName) {
	stale := n.state != present
	_, err := l.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: n.id})
	if err != nil {
		l.failed("DeleteVolume", n, err)
		if !stale {
			n.state = uncertain
		}
		return
	}
	if !stale {
		n.state = absent
	}
	l.stats.deletes.Add(1)
}

// failed records a call that was not acknowledged. After the kill that is
// expected; before it, it is a driver error.
func (l *load) failed(call string, n *volName, err error) {
	if l.killed.Load() {
		l.stats.cutOff.Add(1)
		return
	}
	l.t.Errorf("%s %s (%s, %s) failed before any kill: %v (code %v)", call, n.name, n.state, n.id, err, status.Code(err))
}

// run calls step on workers goroutines until stop is closed.
func (l *load) run(ctx context.Context, workers int, seed uint64, round int, stop <-chan struct{}) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := range workers {
		rng := rand.New(rand.NewPCG(seed, uint64(round*workers+w+1)))
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				l.step(ctx, rng)
			}
		})
	}
	return &wg
}

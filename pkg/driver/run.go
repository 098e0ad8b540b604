package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"github.com/berth-csi/berth/pkg/controller"
	"github.com/berth-csi/berth/pkg/healthz"
	"github.com/berth-csi/berth/pkg/identity"
	"github.com/berth-csi/berth/pkg/locks"
	"github.com/berth-csi/berth/pkg/metrics"
	"github.com/berth-csi/berth/pkg/node"
	"github.com/berth-csi/berth/pkg/orphans"
	"github.com/berth-csi/berth/pkg/registration"
	"github.com/berth-csi/berth/pkg/server"
	"github.com/berth-csi/berth/pkg/storage"
	"github.com/berth-csi/berth/pkg/storage/iothrottle"
	"github.com/berth-csi/berth/pkg/storage/podfreeze"
	"github.com/berth-csi/berth/pkg/version"
	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"
)

// Run serves the CSI services until ctx ends. The socket answers from the start, with
// Probe not ready until start-up reconciliation is done.
func Run(ctx context.Context, o Options) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logger := klog.FromContext(ctx)
	logger.Info("Starting Berth", "version", version.Get(), "driverName", o.DriverName, "nodeID", o.NodeID,
		"mode", o.Mode, "endpoint", o.Endpoint, "pools", len(o.Config.Pools))

	if o.Mode != ModeController {
		// Adopt roots serve the node; a root over the kubelet's, a pool's or the
		// driver's own files would hand them to pods.
		err := o.Config.CheckAdoptRoots(
			storage.ReservedDir{What: "the kubelet directory (--kubelet-dir)", Path: o.KubeletDir},
			storage.ReservedDir{What: "the driver's socket (--endpoint)", Path: o.Endpoint})
		if err != nil {
			return fmt.Errorf("--config: %w", err)
		}
	}
	host := o.Host
	if host.Zero() && o.CgroupRoot != "" {
		host = storage.RealHost()
		host.Pods = podfreeze.New(o.CgroupRoot)
		host.IO = iothrottle.New(o.CgroupRoot)
	}
	engine, err := storage.NewWithHost(o.Config, host)
	if err != nil {
		return err
	}
	engine.SetPoolRetry(o.PoolRetry)
	// On the way out, stop background work (purges, snapshot copies) and wait for it.
	defer func() { cancel(); engine.Wait() }()
	l := &locks.Set{}
	var ready atomic.Bool
	var ctrl csi.ControllerServer
	var nodeSrv *node.Server
	if o.Mode != ModeNode {
		ctrl = controller.New(engine, o.NodeID, l)
	}
	if o.Mode != ModeController {
		nodeSrv, err = node.New(node.Config{NodeID: o.NodeID, KubeletDir: o.KubeletDir, MaxVolumes: o.MaxVolumes}, engine, l)
		if err != nil {
			return fmt.Errorf("--kubelet-dir: %w", err)
		}
	}
	tc, err := openTransfer(o, engine)
	if err != nil {
		return err
	}
	if tc != nil {
		defer tc.lis.Close() // when Run fails before serving it; closing twice is harmless
	}
	mp, err := openMetadataPeers(o, engine, tc)
	if err != nil {
		return err
	}
	if mp != nil {
		defer mp.lis.Close()
	}
	lis, err := server.Listen(o.Endpoint)
	if err != nil {
		return err
	}
	var nodeCSI csi.NodeServer
	if nodeSrv != nil {
		nodeCSI = nodeSrv
	}
	// Until start-up reconciliation is done the driver does not know its volumes and
	// mounts: every call but the Identity service's answers Unavailable meanwhile,
	// never a success that did nothing. A pool that cannot be served does not make
	// the driver unready: its own volumes fail, the other pools serve.
	ident := identity.New(o.DriverName, ctrl != nil, ready.Load)
	srv := server.New(ident, ctrl, nodeCSI)
	if ctrl != nil {
		// Served wherever the controller is, so a group asked of a node whose pools
		// cannot take one hears why; advertised only where one can be taken.
		srv.SetGroupController(controller.NewGroup(engine, l))
		ident.SetGroupSnapshots(func() bool { return ready.Load() && engine.GroupSnapshotsServed() })
		// Changed-block tracking likewise: served with the controller, advertised
		// where an image pool with reflinks can answer a delta.
		// With the peers' channel, every node answers for every node's snapshots.
		meta := controller.NewMetadata(engine)
		if mp != nil {
			meta.Forwarding(mp.fwd)
		}
		srv.SetSnapshotMetadata(meta)
		ident.SetSnapshotMetadata(func() bool { return ready.Load() && (mp != nil || engine.BlockMetadataServed()) })
	}
	srv.GateUntil(ready.Load)
	hooks := server.Hooks{Volumes: engine}
	var mlis net.Listener
	var m *metrics.Metrics
	if o.MetricsAddress != "" {
		if mlis, err = metrics.Listen(o.MetricsAddress); err != nil {
			lis.Close()
			return err
		}
		m = metrics.New(engine, o.NodeID)
		hooks.Observe = m.Observe
		if tc != nil {
			m.AddTransfers(tc.transfers)
		}
	}
	srv.SetHooks(hooks)
	// The orphan scan only counts (berth_pool_orphan_volumes and a log line per
	// orphan); it asks the pv-lister for the PersistentVolumes, as this container
	// holds no API token.
	var scan *orphans.Scanner
	if o.OrphanScanInterval > 0 {
		scan = orphans.New(orphans.Config{Interval: o.OrphanScanInterval, Lister: orphans.NewSocketLister(o.PVListerEndpoint),
			Pools: func() []orphans.Pool { return orphanPools(engine) }})
		if m != nil {
			m.AddOrphanScan(scan.Status)
		}
	}

	// The first failure of a background part stops the driver and is returned.
	var wg sync.WaitGroup
	failed := make(chan error, 1)
	fail := func(err error) {
		select {
		case failed <- err:
		default:
		}
		cancel()
	}
	var reg *registration.Registrar
	if o.Register {
		if reg, err = registration.New(o.DriverName, o.RegistrationEndpoint, o.RegistrationPath); err != nil {
			if mlis != nil {
				mlis.Close()
			}
			return err
		}
	}
	if m != nil {
		wg.Go(func() {
			if err := m.Serve(ctx, mlis); err != nil {
				fail(err)
			}
		})
	}
	if o.HealthPort > 0 {
		hl, err := healthz.Listen(o.HealthPort)
		if err != nil {
			lis.Close()
			if mlis != nil {
				mlis.Close()
			}
			return err
		}
		// Liveness is the process's own health; a pool's trouble is reported per
		// pool (/readyz, logs, capacity, volume health), and restarting the driver
		// for it would only cancel the healthy pools' work.
		checks := []healthz.Check{func() error {
			if !ready.Load() {
				return errors.New("start-up reconciliation not finished")
			}
			return nil
		}}
		if reg != nil {
			checks = append(checks, func() error {
				if !ready.Load() {
					return nil // registration starts once ready
				}
				return reg.Healthy()
			})
		}
		wg.Go(func() {
			if err := healthz.Serve(ctx, hl, healthz.Routes(checks, []healthz.Check{engine.UnservedPools}, engine.Notices)); err != nil {
				fail(err)
			}
		})
	}

	wg.Go(func() {
		err := engine.Start(ctx)
		if err == nil && nodeSrv != nil {
			err = nodeSrv.Recover(ctx)
		}
		if err != nil {
			fail(fmt.Errorf("start-up reconciliation: %w", err))
			return
		}
		ready.Store(true)
		if nodeSrv != nil {
			wg.Go(func() { nodeSrv.KeepIOLimits(ctx) })
		}
		if tc != nil {
			// After reconciliation: a source is sent only once the engine knows it.
			logger.Info("Serving the transfer channel", "address", tc.lis.Addr().String(), "rateLimit", o.TransferRateLimit)
			wg.Go(func() {
				if err := tc.serve(ctx); err != nil {
					fail(fmt.Errorf("transfer channel: %w", err))
				}
			})
		}
		if mp != nil {
			logger.Info("Serving changed-block tracking to the other nodes' plugins", "address", mp.lis.Addr().String())
			wg.Go(func() {
				if err := mp.serve(ctx); err != nil {
					fail(fmt.Errorf("snapshot metadata for peers: %w", err))
				}
			})
		}
		if scan != nil {
			// After reconciliation: the index then holds every committed volume.
			wg.Go(func() { scan.Run(ctx) })
		}
		if reg != nil {
			// Registered only once ready: the kubelet sends work as soon as it knows us.
			wg.Go(func() {
				if err := reg.Run(ctx); err != nil {
					fail(err)
				}
			})
		}
		for _, n := range engine.Notices() {
			logger.Info("Pool served with a limitation", "notice", n)
		}
		if err := engine.UnservedPools(); err != nil {
			logger.Error(err, "Ready, without the pools that cannot be served; they are tried again")
			return
		}
		logger.Info("Ready")
	})
	err = srv.Serve(ctx, lis)
	cancel()
	wg.Wait() // the registration socket is gone before the process exits
	if err != nil {
		return err
	}
	select {
	case err := <-failed:
		return err
	default:
		return nil
	}
}

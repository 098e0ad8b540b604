// Package testengine starts storage engines for tests (apart from testutil, which the
// engine's own subpackages import).
package testengine

import (
	"context"
	"testing"
	"time"

	"github.com/berth-csi/berth/pkg/storage"
	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
)

// Start builds and starts a storage engine on cfg and fails the test when a
// pool is not served.
func Start(t testing.TB, cfg storage.Config) *storage.Engine {
	t.Helper()
	return StartWithHost(t, cfg, storage.Host{})
}

// StartWithHost is Start on an engine that reaches the machine through host (a fake
// of internal/fakehost; the zero Host is the real machine).
func StartWithHost(t testing.TB, cfg storage.Config, host storage.Host) *storage.Engine {
	t.Helper()
	e := StartWith(t, cfg, Options{Host: host})
	if err := e.Unserved(); err != nil {
		t.Fatalf("pool not served: %v", err)
	}
	return e
}

// StartAny builds and starts a storage engine on cfg, served pools or not. Its
// background work (purges, snapshot copies) logs nowhere, and is stopped and waited
// for at cleanup, before the test's directories are removed.
func StartAny(t testing.TB, cfg storage.Config) *storage.Engine {
	t.Helper()
	return StartWith(t, cfg, Options{})
}

// Options are how StartWith starts an engine; the zero value is StartAny's.
type Options struct {
	// Host is the machine the engine reaches (zero: the real one).
	Host storage.Host
	// PoolRetry is how often unserved pools are tried again (zero: the default).
	PoolRetry time.Duration
	// Before runs on the engine before it starts: what must be wired first, such
	// as its node side (Engine.Node), which is told when a pool is served again.
	Before func(*storage.Engine)
}

// StartWith builds and starts a storage engine on cfg as o says, served pools or
// not, with StartAny's logging and cleanup.
func StartWith(t testing.TB, cfg storage.Config, o Options) *storage.Engine {
	t.Helper()
	e, err := storage.NewWithHost(cfg, o.Host)
	if err != nil {
		t.Fatal(err)
	}
	e.SetPoolRetry(o.PoolRetry)
	if o.Before != nil {
		o.Before(e)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logr.Discard()))
	t.Cleanup(func() { cancel(); e.Wait() })
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return e
}

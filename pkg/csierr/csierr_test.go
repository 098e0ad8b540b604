package csierr_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/berth-csi/berth/pkg/csierr"
	"github.com/berth-csi/berth/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestCode(t *testing.T) {
	// Not started: resolving IDs and paging need no disk.
	e, err := storage.New(storage.Config{Pools: []storage.PoolConfig{
		{Name: "default", Path: filepath.Join(t.TempDir(), "default"), Kind: storage.KindDir},
	}})
	if err != nil {
		t.Fatal(err)
	}
	_, badToken := e.VolumesFrom("garbage")
	notServed := e.DeleteVolume(context.Background(), "b1-elsewhere-0123456789abcdef0123456789abcdef")
	_, unknownPool := e.PoolFor(map[string]string{storage.ParamPool: "elsewhere"})
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{"nil", nil, codes.OK},
		{"a status passes unchanged", status.Error(codes.Unavailable, "x"), codes.Unavailable},
		{"a lock held elsewhere", fmt.Errorf("create: %w", storage.ErrBusy), codes.Aborted},
		{"a copy still running", fmt.Errorf("create: %w", storage.ErrInProgress), codes.Aborted},
		{"a bad starting token", badToken, codes.Aborted},
		{"an unreachable topology", fmt.Errorf("create: %w", storage.ErrUnreachable), codes.ResourceExhausted},
		{"no space", fmt.Errorf("create: %w", storage.ErrNoSpace), codes.ResourceExhausted},
		// Never NotFound, which the CO would take for "already deleted".
		{"a deletion in a pool served elsewhere", notServed, codes.FailedPrecondition},
		{"a lookup in a pool served elsewhere", fmt.Errorf("volume x: %w", storage.ErrPoolNotConfigured), codes.NotFound},
		{"a StorageClass naming a pool this node lacks", unknownPool, codes.InvalidArgument},
		{"published", fmt.Errorf("delete: %w", storage.ErrInUse), codes.FailedPrecondition},
		{"cancelled", fmt.Errorf("copy: %w", context.Canceled), codes.Canceled},
		// A failure no sentinel names is a bug to look at, not "still in progress".
		{"anything else", errors.New("disk on fire"), codes.Internal},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := csierr.Code(tc.err); got != tc.want {
				t.Fatalf("Code(%v) = %s, want %s", tc.err, got, tc.want)
			}
		})
	}
}

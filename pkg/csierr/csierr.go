// Package csierr turns engine errors into gRPC status errors, in one place.
package csierr

import (
	"context"
	"errors"

	"github.com/berth-csi/berth/pkg/storage"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var codeOf = []struct {
	err  error
	code codes.Code
}{
	{storage.ErrInvalid, codes.InvalidArgument},
	{storage.ErrUnsupported, codes.InvalidArgument},
	{storage.ErrNotFound, codes.NotFound},
	{storage.ErrExists, codes.AlreadyExists},
	{storage.ErrNoSpace, codes.ResourceExhausted},
	{storage.ErrUnreachable, codes.ResourceExhausted},
	{storage.ErrOutOfRange, codes.OutOfRange},
	{storage.ErrInUse, codes.FailedPrecondition},
	{storage.ErrPrecondition, codes.FailedPrecondition},
	{storage.ErrNotStaged, codes.FailedPrecondition},
	{storage.ErrStaleMount, codes.FailedPrecondition},
	{storage.ErrNotReady, codes.Unavailable},
	{storage.ErrBusy, codes.Aborted},
	{storage.ErrInProgress, codes.Aborted},
	{storage.ErrBadToken, codes.Aborted},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

// Status converts err to a status error: an existing status passes unchanged, a wrapped
// engine sentinel gets its code, anything else is Internal (a real failure, never
// Aborted, which would read as "still in progress").
func Status(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, c := range codeOf {
		if errors.Is(err, c.err) {
			return status.Error(c.code, err.Error())
		}
	}
	return status.Error(codes.Internal, err.Error())
}

// Code is the code Status would give err.
func Code(err error) codes.Code { return status.Code(Status(err)) }

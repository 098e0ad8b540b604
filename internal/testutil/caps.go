package testutil

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// WithoutSysResource runs fn on an OS thread of its own whose effective
// capabilities lack CAP_SYS_RESOURCE, as a pod's writes do: with it, ext4 lets
// writes past project limits. The thread is thrown away afterwards.
func WithoutSysResource(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the runtime ends the thread when this goroutine exits.
		runtime.LockOSThread()
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capget: %w", err)
			return
		}
		data[unix.CAP_SYS_RESOURCE/32].Effective &^= 1 << (unix.CAP_SYS_RESOURCE % 32)
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			errc <- fmt.Errorf("capset: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

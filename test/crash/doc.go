// Package crash holds Berth's crash-safety tests. They kill the driver with
// SIGKILL, restart it on the same pool, and check what survived:
//
//   - TestCrashConsistency kills it while volumes are being created and
//     deleted, and checks that every acknowledged create and delete survived
//     and that start-up left no half-built or half-deleted volume behind.
//   - TestCrashImageStaging stages, publishes, expands, unpublishes and
//     unstages an xfs image volume in a loop, kills the driver at random
//     moments (most inside a call), repeats the cut-off call as kubelet
//     would, and checks loop devices, mounts, sizes and fsynced data.
//   - TestCrashImageInterrupted builds, with the driver dead, each state a
//     kill inside a stage or an expansion leaves (between attach and mount,
//     between grow and resize...) and checks the repeated call finishes it.
//
// Run them as root:
//
//	go test -race ./test/crash/
//
// BERTH_BIN names a prebuilt driver (otherwise the test builds one),
// BERTH_CRASH_ROUNDS the number of kills of TestCrashConsistency (default
// 8), BERTH_IMAGE_CRASH_ROUNDS that of TestCrashImageStaging (default 120)
// and BERTH_CRASH_SEED the seed of the random choices, which the tests log.
package crash

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
//   - TestCrashMatrix kills it inside every mutating call a dir pool serves
//     (create, delete, snapshot, snapshot deletion, restore and clone on a
//     copying pool and on an xfs with reflinks; stage, unstage, publish,
//     unpublish; ephemeral inline and adopted publish and unpublish), repeats
//     the cut-off call, and after every restart checks listings against the
//     model, tmp/ and trash/, records, accounting, mounts, loop devices and
//     that every publication takes a write. Controller expansion does not
//     exist (expansion is node-only; TestCrashImageStaging kills it).
//
// Each logs its counts: "kills: N (op a, op b, ...)".
//
// Run them as root:
//
//	go test -race ./test/crash/
//
// BERTH_BIN names a prebuilt driver (otherwise the test builds one),
// BERTH_CRASH_ROUNDS the number of kills of TestCrashConsistency (default
// 8), BERTH_IMAGE_CRASH_ROUNDS that of TestCrashImageStaging (default 120),
// BERTH_MATRIX_KILLS that of TestCrashMatrix (default 40) and BERTH_CRASH_SEED the seed of the random choices, which the tests log.
// `make crash` runs them all with 500 matrix kills, 120 image kills and 40
// consistency rounds (660 kills); on the 2 shared cores it was measured on it
// takes about a minute (56 s and 58 s measured, building included).
package crash

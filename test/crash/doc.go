// Package crash holds Berth's crash-safety test: it kills the driver with
// SIGKILL while volumes are being created and deleted, restarts it on the
// same pool, and checks that every acknowledged create and delete survived
// and that start-up left no half-built or half-deleted volume behind.
//
// Run it as root:
//
//	go test -race ./test/crash/
//
// BERTH_BIN names a prebuilt driver (otherwise the test builds one),
// BERTH_CRASH_ROUNDS the number of kills (default 8) and BERTH_CRASH_SEED
// the seed of the random choices, which the test logs.
package crash

#!/usr/bin/env bash
# Runs Go fuzz targets one after another, each for FUZZTIME: hack/fuzz.sh 5s
# storage:FuzzParseQuantity server:FuzzSanitize ... (package under pkg/, target).
#
# Go 1.26's fuzz coordinator can fail a run at the -fuzztime deadline with a bare
# "context deadline exceeded" and no failing input, when a loaded machine keeps a
# worker from answering in time (go.dev/issue/75804, fixed in Go 1.27). Such a run
# found nothing: it is run again, at most twice. Any other failure (a failing input
# written to testdata/fuzz/, a failing seed or committed entry) stops at once.
set -euo pipefail
fuzztime=$1
shift
for t in "$@"; do
	pkg=./pkg/${t%%:*} target=${t#*:}
	for try in 1 2 3; do
		echo "$target ($pkg, $fuzztime)"
		if out=$(go test -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" "$pkg" 2>&1); then
			echo "$out" | tail -n 1
			break
		fi
		echo "$out"
		if [ "$try" = 3 ] || ! grep -qx '    context deadline exceeded' <<<"$out" ||
			grep -q 'Failing input written' <<<"$out"; then
			exit 1
		fi
		echo "$target: stopped by the coordinator's deadline race, nothing found; again"
	done
done

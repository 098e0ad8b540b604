#!/usr/bin/env bash
# The previous release, for the upgrade test (test/e2e/upgrade_test.go): its chart and
# its driver image, built from its own tree. The commit is checked out into a temporary
# git worktree (removed afterwards), its driver built with its Makefile and its image
# assembled by its own hack/images.sh under the tag berth:<commit>; the archive and a
# copy of charts/berth are cached in $BERTH_CACHE/previous-<commit>, so a warm run only
# imports the image into every node's containerd where it is missing.
#
# Usage: hack/previous-release.sh [commit]  (default PREVIOUS_RELEASE below)
# Prints chart=<dir> and image=<repository:tag>, one a line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
source "$here/cluster-lib.sh"
# The last release before the upgrade-safety work (issue "Failure paths never lose
# track of data"); move it forward at each release.
PREVIOUS_RELEASE=281c7c0
commit=$(git -C "$root" rev-parse --short=7 "${1:-$PREVIOUS_RELEASE}^{commit}")
image=ghcr.io/berth-csi/berth:$commit
cache=$BERTH_CACHE/previous-$commit

if [ ! -f "$cache/berth.tar" ] || [ ! -f "$cache/chart/berth/Chart.yaml" ]; then
	work=$(mktemp -d /tmp/berth-previous.XXXXXX)
	tree=$work/tree
	cleanup() {
		git -C "$root" worktree remove --force "$tree" 2>/dev/null || true
		rm -rf "$work"
	}
	trap cleanup EXIT
	git -C "$root" worktree add --detach --quiet "$tree" "$commit"
	make -C "$tree" --no-print-directory build >&2
	# That tree's images.sh writes $BERTH_CACHE/images/berth.tar, the current image's
	# archive: give it a cache of its own whose downloaded packages are the shared ones.
	mkdir -p "$work/cache/images" "$BERTH_CACHE/debs"
	ln -s "$BERTH_CACHE/debs" "$work/cache/debs"
	BERTH_CACHE=$work/cache BERTH_IMAGE=$image "$tree/hack/images.sh" berth >/dev/null
	rm -rf "$cache.tmp"
	mkdir -p "$cache.tmp/chart"
	cp "$work/cache/images/berth.tar" "$cache.tmp/berth.tar"
	cp -a "$tree/charts/berth" "$cache.tmp/chart/berth"
	rm -rf "$cache"
	mv "$cache.tmp" "$cache"
fi

# Into every node's containerd: this machine's and those of the further nodes.
for sock in "$CONTAINERD_SOCK" "$CLUSTER_DIR"/nodes/*/containerd.sock; do
	if [ -S "$sock" ] && ! ctr --address "$sock" -n k8s.io images ls -q "name==$image" | grep -q .; then
		ctr --address "$sock" -n k8s.io images import --no-unpack=false "$cache/berth.tar" >/dev/null
	fi
done
echo "chart=$cache/chart/berth"
echo "image=$image"

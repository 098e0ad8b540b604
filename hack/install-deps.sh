#!/usr/bin/env bash
# Installs the Debian packages Berth's tests need, only when one is missing, so a
# warm machine pays nothing. Go tools are built by the Makefile into a cache.
set -euo pipefail
packages=(util-linux mount e2fsprogs xfsprogs glusterfs-server glusterfs-client)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "Installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

#!/bin/bash
# Runs one package's tests as root in a throwaway QEMU guest that boots
# Debian's stock kernel, for hosts whose kernel cannot enforce project quotas
# (built without CONFIG_XFS_QUOTA or CONFIG_QFMT_V2: the quota tests skip
# there). The guest sees the host's root filesystem read-only over 9p, so it
# uses the host's mkfs.xfs, mkfs.ext4, mount and xfs_quota; its /tmp is a
# tmpfs. Debian hosts only (apt); TCG by default, QEMU_ACCEL="-enable-kvm
# -cpu host" where nested KVM works. The first argument is the package
# directory; the rest go to the test binary, e.g.
#   hack/vmtest.sh ./pkg/storage/quota -test.v -test.run TestLimits
# The binary is built with -race unless BERTH_VMTEST_RACE=0 (benchmarks);
# BERTH_VMTEST_TIMEOUT bounds the guest's run in seconds (default 1200).
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "vmtest.sh: needs root" >&2; exit 1; }
[ $# -ge 1 ] || { echo "usage: vmtest.sh <package dir> [test flags...]" >&2; exit 2; }
pkg=$(cd "$1" && pwd)
shift
cache=${BERTH_VMTEST_CACHE:-/var/cache/berth-vmtest}
mkdir -p "$cache"
work=$(mktemp -d "$cache/run.XXXXXX")
chmod 755 "$work" # the guest reads it over 9p
trap 'rm -rf "$work"' EXIT

need=()
for c in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static depmod:kmod; do
	command -v "${c%%:*}" >/dev/null || need+=("${c#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The kernel: linux-image-amd64 names the current image package.
img=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
if [ ! -d "$cache/$img" ]; then
	(cd "$cache" && apt-get download "$img" 2>/dev/null)
	dpkg -x "$cache/$img"_*.deb "$cache/$img.tmp"
	kver=$(ls "$cache/$img.tmp/lib/modules")
	depmod -b "$cache/$img.tmp" "$kver"
	mv "$cache/$img.tmp" "$cache/$img"
	rm -f "$cache/$img"_*.deb
fi
kroot=$cache/$img
kver=$(ls "$kroot/lib/modules")

race=(-race)
[ "${BERTH_VMTEST_RACE:-1}" != 0 ] || race=()
(cd "$pkg" && go test -c "${race[@]}" -o "$work/quota.test" .)
args=$(printf '%q ' "$@")

# The initramfs: busybox, the modules to reach the host over 9p, and an init
# that mounts the host root, loads loop, ext4, xfs and quota_v2 from the
# unpacked kernel, and runs the tests.
mkdir -p "$work/initrd/"{bin,mods,newroot,proc,sys,dev}
cp "$(command -v busybox)" "$work/initrd/bin/busybox"
modprobe -S "$kver" -d "$kroot" -a --show-depends virtio_pci 9pnet_virtio 9p |
	awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++' > "$work/order"
while read -r m; do cp "$m" "$work/initrd/mods/"; echo "insmod /mods/$(basename "$m")"; done < "$work/order" > "$work/insmods"
cat > "$work/initrd/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
$(cat "$work/insmods")
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /newroot || { echo "9p mount failed"; poweroff -f; }
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
mount -t devtmpfs dev /newroot/dev
mount -t tmpfs run /newroot/run
cp /newroot$work/quota.test /newroot/run/quota.test
cat > /newroot/run/run.sh <<'RUN'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
for m in loop ext4 xfs quota_v2; do modprobe -d $kroot \$m || echo "modprobe \$m failed"; done
mount -t tmpfs tmp /tmp
export TMPDIR=/tmp HOME=/run
cd /run && ./quota.test $args
echo "BERTH-VMTEST-EXIT \$?"
RUN
chroot /newroot /bin/sh /run/run.sh
poweroff -f
INIT
chmod +x "$work/initrd/init"
(cd "$work/initrd" && find . | busybox cpio -o -H newc 2>/dev/null | gzip > "$work/initrd.gz")

# shellcheck disable=SC2086 # QEMU_ACCEL holds several arguments
timeout "${BERTH_VMTEST_TIMEOUT:-1200}" qemu-system-x86_64 ${QEMU_ACCEL:--accel tcg} -m 4096 -smp 2 -nographic -no-reboot \
	-kernel "$kroot/boot/vmlinuz-$kver" -initrd "$work/initrd.gz" \
	-append "console=ttyS0 panic=-1 quiet rdinit=/init" \
	-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
	</dev/null | tr -d '\r' | tee "$work/console.log" | grep -v '^\[ *[0-9]' || true
code=$(sed -n 's/^BERTH-VMTEST-EXIT \([0-9]*\)$/\1/p' "$work/console.log")
[ -n "$code" ] || { echo "vmtest.sh: the guest did not finish the tests" >&2; exit 1; }
exit "$code"

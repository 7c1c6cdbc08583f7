#!/usr/bin/env bash
# Build the Debian 12 (bookworm) guest of the host lane from Debian packages only, and cache it.
#
#   scripts/hosts/build-image.sh OUTDIR
#
# Writes OUTDIR/base-KEY.raw (ext4, the guest's root), OUTDIR/vmlinuz-KEY, OUTDIR/initrd-KEY and
# OUTDIR/container-base-KEY.tar (a minimal bookworm root for `docker import`), where KEY hashes
# this recipe: a changed recipe builds a new image, an unchanged one is reused. Prints the path of
# the image. Everything runs inside a private mount namespace, so the mounts debootstrap makes
# never show on this machine.
set -euo pipefail

out=${1:?usage: build-image.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
key=$(cat "$here/build-image.sh" "$here/guest/lane.service" | sha256sum | cut -c1-12)
image=$out/base-$key.raw
if [ -f "$image" ] && [ -f "$out/vmlinuz-$key" ] && [ -f "$out/initrd-$key" ] \
    && [ -f "$out/container-base-$key.tar" ]; then
    echo "$image"
    exit 0
fi

mirror=${PLUGIND_HOSTS_MIRROR:-http://deb.debian.org/debian}
# The guest: systemd as PID 1 (pure cgroup v2), what docs/operations.md installs with, what
# `make setup` and the privileged suite need, and Debian's Docker engine for the container lane.
packages=(
    systemd systemd-sysv udev dbus kmod procps iproute2 nftables iptables psmisc
    libseccomp2 libcap2 libcap-dev gcc make git ca-certificates curl openssl rsync shellcheck
    python3 python3-venv python3-dev python3-pip e2fsprogs util-linux
    linux-image-amd64 initramfs-tools zstd docker.io uidmap
)
# The container lane's base image: what the project's Dockerfile needs of a Python base.
container_packages=(python3 python3-venv ca-certificates)

work=$(mktemp -d "$out/work.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$out/debs"

log() { printf '  [image] %s\n' "$*" >&2; }

# Both roots are bootstrapped in one private mount namespace: debootstrap mounts /proc and /sys in
# its target, and those mounts vanish with the namespace.
log "debootstrap bookworm (guest root, then container base), cached downloads in $out/debs"
# shellcheck disable=SC2016  # expanded by the inner shell, from its arguments
unshare --mount --propagation private bash -euo pipefail -c '
    # One after the other: two debootstraps sharing a download cache race on the same files.
    for t in root:"$1" cbase:"$3"; do
        name=${t%%:*}
        if ! debootstrap --variant=minbase --cache-dir="$4" --include="${t#*:}" bookworm \
                "$2/$name" "$5" >"$2/debootstrap-$name.log" 2>&1; then
            tail -n 30 "$2/debootstrap-$name.log" >&2
            exit 1
        fi
    done
' _ "$(IFS=,; echo "${packages[*]}")" "$work" "$(IFS=,; echo "${container_packages[*]}")" "$out/debs" "$mirror"

root=$work/root
# TLS: the package registries are reached through this machine's certificate set-up; the guest
# and the container base must trust the same extra authorities (pip uses the system bundle).
for r in "$root" "$work/cbase"; do
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$r/usr/local/share/ca-certificates/"
    fi
    chroot "$r" update-ca-certificates >/dev/null 2>&1
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$r/etc/pip.conf"
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" >"$r/etc/apt/sources.list"
    rm -rf "$r/var/cache/apt/archives/"*.deb "$r/var/lib/apt/lists/"*
done

log "configuring the guest"
echo plugind-guest >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 plugind-guest\n' >"$root/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\nhost0 /mnt/host 9p trans=virtio,version=9p2000.L,msize=524288,nofail 0 0\n' >"$root/etc/fstab"
mkdir -p "$root/mnt/host"
printf '9p\n9pnet_virtio\n' >"$root/etc/modules-load.d/9p.conf"
# Passwordless root on the serial console, for a person debugging the guest by hand.
sed -i 's/^root:[^:]*:/root::/' "$root/etc/shadow"
# qemu's user-mode network: DHCP from 10.0.2.2, DNS at 10.0.2.3.
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n' >"$root/etc/systemd/network/50-dhcp.network"
printf 'nameserver 10.0.2.3\n' >"$root/etc/resolv.conf"
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
# The lane's entry point: once the system is up, run /mnt/host/run.sh and power off.
install -m 0644 "$here/guest/lane.service" "$root/etc/systemd/system/plugind-lane.service"
chroot "$root" systemctl enable plugind-lane.service >/dev/null 2>&1
# No Docker at boot unless a lane starts it (saves boot time under emulation).
chroot "$root" systemctl disable docker.service docker.socket containerd.service >/dev/null 2>&1 || true

# A small initrd: the root disk is virtio, ext4.
log "kernel and a small initrd"
printf 'virtio_pci\nvirtio_blk\next4\n' >"$root/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
# shellcheck disable=SC2016  # expanded by the inner shell, from its arguments
unshare --mount --propagation private bash -euo pipefail -c '
    mount -t proc proc "$1/proc"
    chroot "$1" update-initramfs -u -k all >/dev/null 2>&1
' _ "$root"
kver=$(basename "$(ls -d "$root"/lib/modules/*)")
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/initrd"

log "container base image"
tar -C "$work/cbase" --numeric-owner -cf "$work/container-base.tar" .
mkdir -p "$root/var/lib/plugind-lane"

log "ext4 image (mkfs.ext4 -d)"
truncate -s 8G "$work/image.raw"
mkfs.ext4 -q -F -L plugind-guest -d "$root" "$work/image.raw"

mv "$work/vmlinuz" "$out/vmlinuz-$key"
mv "$work/initrd" "$out/initrd-$key"
mv "$work/container-base.tar" "$out/container-base-$key.tar"
mv "$work/image.raw" "$image"
# Older images are superseded by this one.
find "$out" -maxdepth 1 \( -name 'base-*.raw' -o -name 'vmlinuz-*' -o -name 'initrd-*' \
    -o -name 'container-base-*.tar' -o -name 'prepared-*.qcow2' \) ! -name "*$key*" -delete
echo "$image"

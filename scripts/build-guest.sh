#!/bin/sh
# build-guest.sh [DIR]: the vm level's guest image, cached in DIR (default
# $ALCUB3_GUEST_DIR, else /var/cache/alcub3/guest):
#
#   vmlinux          Debian's cloud kernel (linux-image-6.12-cloud-amd64, the
#                    newest in bookworm's archive), unpacked from its bzImage
#                    into the ELF that QEMU boots directly through its PVH
#                    entry point: no firmware, no decompression in the guest
#                    (about 2 s less under TCG). virtio and virtio_console are
#                    built in; virtio_mmio (-M microvm) is a module, loaded by
#                    the guest agent.
#   initramfs.cpio   busybox-static (applets linked in /bin), the guest agent
#                    guest/alcub3-guest.c as /init (static: libbpf.a,
#                    libelf.a, libz.a), /lib/modules/virtio_mmio.ko.
#   MANIFEST         the sha256 of both (alcub3 checks them before every
#                    boot), the packages they came from, and the hash of the
#                    inputs: the image is rebuilt when one changes.
#
# Packages are downloaded with apt-get download (checked against the signed
# archive index), never installed, and kept in DIR/packages. Needs root only
# for apt-get's lists; alcub3 runs it itself when the image is missing.
set -eu
cd "$(dirname "$0")/.."

DIR=${1:-${ALCUB3_GUEST_DIR:-/var/cache/alcub3/guest}}
CC=${CC:-cc}
KERNEL_META=linux-image-6.12-cloud-amd64

for tool in cpio xz zstd dpkg-deb apt-get "$CC"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "build-guest: $tool is missing: run make deps" >&2; exit 1; }
done
for lib in libbpf.a libelf.a libz.a; do
    [ -f "/usr/lib/x86_64-linux-gnu/$lib" ] || { echo "build-guest: $lib is missing: run make deps (libbpf-dev libelf-dev zlib1g-dev)" >&2; exit 1; }
done
mkdir -p "$DIR/packages"

# The .deb of package $1 in DIR/packages (downloaded once).
package() {
    found=$(ls "$DIR/packages/$1"_*.deb 2>/dev/null | head -n 1 || true)
    if [ -z "$found" ]; then
        if ! (cd "$DIR/packages" && apt-get download -q -o APT::Sandbox::User=root "$1" >/dev/null 2>&1); then
            apt-get update -qq
            (cd "$DIR/packages" && apt-get download -q -o APT::Sandbox::User=root "$1" >/dev/null)
        fi
        found=$(ls "$DIR/packages/$1"_*.deb | head -n 1)
    fi
    echo "$found"
}

kernel_pkg=$(apt-cache depends "$KERNEL_META" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
if [ -z "$kernel_pkg" ]; then
    kernel_pkg=$(ls "$DIR"/packages/linux-image-*-cloud-amd64_*.deb 2>/dev/null | head -n 1 | xargs -r basename | cut -d_ -f1)
fi
if [ -z "$kernel_pkg" ]; then
    apt-get update -qq
    kernel_pkg=$(apt-cache depends "$KERNEL_META" | awk '/Depends: linux-image-/ { print $2; exit }')
fi
[ -n "$kernel_pkg" ] || { echo "build-guest: $KERNEL_META is not in the apt lists" >&2; exit 1; }
kernel_deb=$(package "$kernel_pkg")
busybox_deb=$(package busybox-static)

# Everything the image is made from; a change to any rebuilds it.
inputs=$({ sha256sum "$kernel_deb" "$busybox_deb" guest/alcub3-guest.c guest/alcub3-tpm.c guest/alcub3-tpm.h scripts/build-guest.sh \
             Sources/CAlcub3/include/alcub3_guest.h Sources/CAlcub3/include/alcub3_events.h \
             /usr/lib/x86_64-linux-gnu/libbpf.a | cut -d' ' -f1; "$CC" --version | head -n 1; } | sha256sum | cut -d' ' -f1)
if [ -f "$DIR/MANIFEST" ] && grep -q "^inputs $inputs\$" "$DIR/MANIFEST" &&
   (cd "$DIR" && grep -E '^[0-9a-f]{64}  ' MANIFEST | sha256sum -c --status); then
    echo "build-guest: $DIR is up to date"
    exit 0
fi

work=$(mktemp -d "$DIR/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/k" "$work/b" "$work/root/bin" "$work/root/sbin" "$work/root/dev" "$work/root/lib/modules" \
         "$work/root/proc" "$work/root/sys" "$work/root/tmp" "$work/root/root" "$work/root/etc"
dpkg-deb --fsys-tarfile "$kernel_deb" | tar -x -C "$work/k" --wildcards './boot/vmlinuz-*' '*/virtio_mmio.ko*'
dpkg-deb --fsys-tarfile "$busybox_deb" | tar -x -C "$work/b" ./bin/busybox

$CC -static -O2 -Wall -Wextra -Werror -ISources/CAlcub3/include \
    -o "$work/root/init" guest/alcub3-guest.c guest/alcub3-tpm.c -lbpf -lelf -lz
strip "$work/root/init"

cp "$work/b/bin/busybox" "$work/root/bin/busybox"
for applet in $("$work/b/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$work/root/bin/$applet"
done
mod=$(find "$work/k" -name 'virtio_mmio.ko*' | head -n 1)
case "$mod" in
    *.xz) xz -dc "$mod" > "$work/root/lib/modules/virtio_mmio.ko" ;;
    *) cp "$mod" "$work/root/lib/modules/virtio_mmio.ko" ;;
esac
echo virtio_mmio.ko > "$work/root/lib/modules/load"
echo "root:x:0:0:root:/root:/bin/sh" > "$work/root/etc/passwd"
echo "root:x:0:" > "$work/root/etc/group"
mknod -m 600 "$work/root/dev/console" c 5 1
chmod 755 "$work/root/init"

(cd "$work/root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible 2>/dev/null ||
    find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$work/initramfs.cpio"
# The bzImage's payload is a zstd stream after the setup code: the first
# offset whose stream decompresses to an ELF is it.
bz=$(ls "$work"/k/boot/vmlinuz-*)
for offset in $(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$bz" | cut -d: -f1); do
    tail -c +$((offset + 1)) "$bz" | zstd -dcq 2>/dev/null > "$work/vmlinux" || true
    [ "$(head -c 4 "$work/vmlinux" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] && break
    rm -f "$work/vmlinux"
done
[ -s "$work/vmlinux" ] || { echo "build-guest: no zstd-compressed ELF kernel in $(basename "$bz")" >&2; exit 1; }
{
    echo "# alcub3 vm guest image (scripts/build-guest.sh); alcub3 checks these sha256 before each boot"
    echo "kernel-package $(basename "$kernel_deb")"
    echo "busybox-package $(basename "$busybox_deb")"
    echo "inputs $inputs"
    (cd "$work" && sha256sum vmlinux initramfs.cpio)
} > "$work/MANIFEST"
# The manifest last: a reader never sees a manifest whose files are not in place.
rm -f "$DIR/MANIFEST"
rm -f "$DIR/vmlinuz"
mv "$work/vmlinux" "$DIR/vmlinux"
mv "$work/initramfs.cpio" "$DIR/initramfs.cpio"
mv "$work/MANIFEST" "$DIR/MANIFEST"
echo "build-guest: built $DIR ($(basename "$kernel_deb"), $(basename "$busybox_deb"))"

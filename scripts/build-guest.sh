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
#                    libelf.a, libz.a), /lib/modules/virtio_mmio.ko, and
#                    virtio_net.ko with its two helpers, loaded only when the
#                    host gives the guest a network (alcub3.net=user).
#   initramfs-python.cpio
#                    the same plus the runtime of the policy's python
#                    capability: CPython 3.11 from Debian's python3.11-minimal,
#                    libpython3.11-minimal and -stdlib, the shared libraries
#                    it needs (libc6, libssl3, ...), its modules compiled to
#                    .pyc by that same interpreter; no tests, IDLE or tkinter.
#                    An extension module whose library is not shipped (curses,
#                    readline, dbm, nis) is left out, and named while building.
#   MANIFEST         the sha256 of each (alcub3 checks the two it boots
#                    before every boot), the packages they came from, and the
#                    hash of the inputs: the image is rebuilt when one changes.
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
# The python runtime and the libraries its interpreter and extension modules link.
PYTHON_PACKAGES="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 zlib1g libexpat1 libssl3 libffi8
                 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1 libcrypt1"
python_debs=$(for p in $PYTHON_PACKAGES; do package "$p"; done)

# Everything the image is made from; a change to any rebuilds it.
inputs=$({ sha256sum "$kernel_deb" "$busybox_deb" $python_debs guest/alcub3-guest.c guest/alcub3-tpm.c guest/alcub3-tpm.h guest/alcub3-scan.c guest/alcub3-scan.h scripts/build-guest.sh \
             Sources/CAlcub3/include/alcub3_guest.h Sources/CAlcub3/include/alcub3_events.h Sources/CAlcub3/include/alcub3_tpm2.h Sources/CAlcub3/alcub3_tpm2.c \
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
dpkg-deb --fsys-tarfile "$kernel_deb" | tar -x -C "$work/k" --wildcards './boot/vmlinuz-*' '*/virtio_mmio.ko*' \
    '*/failover.ko*' '*/net_failover.ko*' '*/virtio_net.ko*'
dpkg-deb --fsys-tarfile "$busybox_deb" | tar -x -C "$work/b" ./bin/busybox

$CC -static -O2 -Wall -Wextra -Werror -ISources/CAlcub3/include \
    -o "$work/root/init" guest/alcub3-guest.c guest/alcub3-tpm.c guest/alcub3-scan.c Sources/CAlcub3/alcub3_tpm2.c -lbpf -lelf -lz
strip "$work/root/init"

cp "$work/b/bin/busybox" "$work/root/bin/busybox"
for applet in $("$work/b/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$work/root/bin/$applet"
done
for name in virtio_mmio failover net_failover virtio_net; do
    mod=$(find "$work/k" -name "$name.ko*" | head -n 1)
    [ -n "$mod" ] || { echo "build-guest: $name.ko is not in $(basename "$kernel_deb")" >&2; exit 1; }
    case "$mod" in
        *.xz) xz -dc "$mod" > "$work/root/lib/modules/$name.ko" ;;
        *) cp "$mod" "$work/root/lib/modules/$name.ko" ;;
    esac
done
echo virtio_mmio.ko > "$work/root/lib/modules/load"
printf 'failover.ko\nnet_failover.ko\nvirtio_net.ko\n' > "$work/root/lib/modules/load-net"
echo "root:x:0:0:root:/root:/bin/sh" > "$work/root/etc/passwd"
echo "root:x:0:" > "$work/root/etc/group"
mknod -m 600 "$work/root/dev/console" c 5 1
chmod 755 "$work/root/init"

# One newc archive of the tree $1, in a stable order.
archive() {
    (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible 2>/dev/null ||
        find . | LC_ALL=C sort | cpio -o -H newc --quiet)
}
archive "$work/root" > "$work/initramfs.cpio"

# The python runtime: the base tree plus CPython and its libraries.
py="$work/root-python"
cp -a "$work/root" "$py"
mkdir -p "$work/p"
for deb in $python_debs; do dpkg-deb -x "$deb" "$work/p"; done
mkdir -p "$py/usr/bin" "$py/usr/lib" "$py/lib64" "$py/lib/x86_64-linux-gnu" "$py/usr/lib/x86_64-linux-gnu"
cp -a "$work/p/usr/bin/python3.11" "$py/usr/bin/"
ln -s python3.11 "$py/usr/bin/python3"
ln -s python3.11 "$py/usr/bin/python"
cp -a "$work/p/usr/lib/python3.11" "$py/usr/lib/"
cp -a "$work/p/lib64/ld-linux-x86-64.so.2" "$py/lib64/"
cp -a "$work/p/lib/x86_64-linux-gnu/." "$py/lib/x86_64-linux-gnu/"
cp -a "$work/p/usr/lib/x86_64-linux-gnu/." "$py/usr/lib/x86_64-linux-gnu/"
rm -rf "$py/lib/x86_64-linux-gnu/gconv" "$py/usr/lib/x86_64-linux-gnu/gconv" "$py/usr/lib/x86_64-linux-gnu/engines-3" \
       "$py/usr/lib/x86_64-linux-gnu/ossl-modules" "$py/usr/lib/x86_64-linux-gnu/audit"
for dir in test idlelib tkinter turtledemo ensurepip lib2to3 pydoc_data config-3.11-x86_64-linux-gnu; do
    rm -rf "$py/usr/lib/python3.11/$dir"
done
find "$py/usr/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} +
# Every library an ELF file asks for must be in the tree; an extension module
# whose library is not shipped is left out (the interpreter and libraries must be complete).
libs="$py/lib/x86_64-linux-gnu $py/usr/lib/x86_64-linux-gnu"
missing() {
    readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | while read -r lib; do
        found=no
        for d in $libs; do [ -e "$d/$lib" ] && found=yes; done
        [ "$found" = yes ] || echo "$lib"
    done
}
for f in $(find "$py/usr/bin" "$py/usr/lib" "$py/lib" -type f \( -name '*.so*' -o -name 'python3.11' \)); do
    [ "$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] || continue
    lacks=$(missing "$f" | tr '\n' ' ')
    [ -z "$lacks" ] && continue
    case "$f" in
        */lib-dynload/*) echo "build-guest: python runtime without $(basename "$f") (needs $lacks)"; rm -f "$f" ;;
        *) echo "build-guest: $f needs $lacks, which no python package provides" >&2; exit 1 ;;
    esac
done
# Compiled once here by the interpreter itself (unchecked hashes: valid whatever the files' times).
"$py/lib64/ld-linux-x86-64.so.2" --library-path "$py/lib/x86_64-linux-gnu:$py/usr/lib/x86_64-linux-gnu" \
    "$py/usr/bin/python3.11" -I -c 'import compileall, sys; sys.exit(not compileall.compile_dir(sys.argv[1], ddir="/usr/lib/python3.11", quiet=1, workers=2, invalidation_mode=compileall.py_compile.PycInvalidationMode.UNCHECKED_HASH))' \
    "$py/usr/lib/python3.11" || { echo "build-guest: compiling the python runtime's modules failed" >&2; exit 1; }
archive "$py" > "$work/initramfs-python.cpio"
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
    echo "python-package $(basename "$(echo "$python_debs" | head -n 1)")"
    echo "inputs $inputs"
    (cd "$work" && sha256sum vmlinux initramfs.cpio initramfs-python.cpio)
} > "$work/MANIFEST"
# The manifest last: a reader never sees a manifest whose files are not in place.
rm -f "$DIR/MANIFEST"
rm -f "$DIR/vmlinuz"
mv "$work/vmlinux" "$DIR/vmlinux"
mv "$work/initramfs.cpio" "$DIR/initramfs.cpio"
mv "$work/initramfs-python.cpio" "$DIR/initramfs-python.cpio"
mv "$work/MANIFEST" "$DIR/MANIFEST"
echo "build-guest: built $DIR ($(basename "$kernel_deb"), $(basename "$busybox_deb"))"

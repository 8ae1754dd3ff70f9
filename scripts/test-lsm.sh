#!/bin/sh
# make test-lsm: runs bpf/lsm.bpf.c in a QEMU guest, since this host's kernel
# refuses BPF-LSM programs (EPERM under lockdown).
#
# The guest is Debian's cloud kernel (BPF-LSM built in, BTF) booted with "bpf"
# in its LSM list, and a busybox initramfs holding bpf/test/lsm-test.c
# (static, libbpf.a) and the object `make bpf` compiled. lsm-test prints one
# "LSM <hook> ..." line per check and "LSM RESULT PASS|FAIL"; this script
# prints those lines and exits 0 only on PASS.
#
# The kernel and busybox come from Debian packages downloaded (not installed)
# into .build/lsm-guest and kept there with their sha256 in SHA256SUMS, so a
# second run downloads nothing. LSM_TIMEOUT (seconds, default 300) bounds the
# guest's run under TCG.
set -eu
cd "$(dirname "$0")/.."

CACHE=.build/lsm-guest
OBJECT=.build/bpf/lsm.bpf.o
TIMEOUT=${LSM_TIMEOUT:-300}
CC=${CC:-cc}

[ "$(id -u)" -eq 0 ] || { echo "test-lsm: needs root (apt-get, mknod of the guest's console)" >&2; exit 1; }

# Host tools; the kernel and busybox are only unpacked, below.
scripts/install-deps.sh qemu-system-x86 cpio libbpf-dev libelf-dev zlib1g-dev libc6-dev

[ -f "$OBJECT" ] || { echo "test-lsm: $OBJECT is missing: run make bpf" >&2; exit 1; }
mkdir -p "$CACHE"

# Whether $CACHE/$1 is there and matches its line in SHA256SUMS.
cached() {
    [ -f "$CACHE/$1" ] && grep -q "  $1\$" "$CACHE/SHA256SUMS" 2>/dev/null &&
        (cd "$CACHE" && grep "  $1\$" SHA256SUMS | sha256sum -c --status)
}

# Downloads package $1 (apt-get download checks it against the signed archive
# index; nothing is installed) and unpacks its member $2, a tar pattern, to
# $CACHE/$3; records the file's sha256 in SHA256SUMS and its package in SOURCES.
fetch() {
    pkg=$1 member=$2 name=$3
    rm -rf "$CACHE/dl" && mkdir -p "$CACHE/dl/x"
    if ! (cd "$CACHE/dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null 2>&1); then
        apt-get update -qq
        (cd "$CACHE/dl" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
    fi
    deb=$(ls "$CACHE"/dl/*.deb)
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$CACHE/dl/x" --wildcards "$member"
    # shellcheck disable=SC2086 # the member pattern is expanded on purpose
    mv $CACHE/dl/x/$member "$CACHE/$name"
    { grep -v "  $name\$" "$CACHE/SHA256SUMS" 2>/dev/null || true
      (cd "$CACHE" && sha256sum "$name"); } > "$CACHE/SHA256SUMS.tmp"
    mv "$CACHE/SHA256SUMS.tmp" "$CACHE/SHA256SUMS"
    { grep -v "^$name " "$CACHE/SOURCES" 2>/dev/null || true
      echo "$name $(basename "$deb")"; } > "$CACHE/SOURCES.tmp"
    mv "$CACHE/SOURCES.tmp" "$CACHE/SOURCES"
    rm -rf "$CACHE/dl"
    echo "test-lsm: fetched $name from $(basename "$deb")"
}

# The kernel package the metapackage linux-image-cloud-amd64 points at now.
kernel_pkg() {
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
    fi
    [ -n "$pkg" ] || { echo "test-lsm: linux-image-cloud-amd64 is not in the apt lists" >&2; exit 1; }
    echo "$pkg"
}

# Kept until removed (rm -r .build/lsm-guest fetches the current ones).
if ! cached vmlinuz; then
    kpkg=$(kernel_pkg)
    fetch "$kpkg" './boot/vmlinuz-*' vmlinuz
fi
cached busybox || fetch busybox-static ./bin/busybox busybox

# The guest program, static: the initramfs has no libraries.
if [ ! -x "$CACHE/lsm-test" ] || [ bpf/test/lsm-test.c -nt "$CACHE/lsm-test" ] ||
   [ Sources/CAlcub3/include/alcub3_lsm.h -nt "$CACHE/lsm-test" ]; then
    $CC -static -O2 -Wall -Wextra -Werror -ISources/CAlcub3/include \
        -o "$CACHE/lsm-test" bpf/test/lsm-test.c -lbpf -lelf -lz
fi

# The initramfs, rebuilt every run (a few milliseconds): /init runs lsm-test, then powers off.
root=$CACHE/root
rm -rf "$root"
mkdir -p "$root/bin" "$root/sbin" "$root/dev" "$root/tmp"
cp "$CACHE/busybox" "$root/bin/busybox"
cp "$CACHE/lsm-test" "$root/lsm-test"
cp "$OBJECT" "$root/lsm.bpf.o"
ln -s busybox "$root/bin/sh"
mknod -m 600 "$root/dev/console" c 5 1
cat > "$root/init" <<'EOF'
#!/bin/sh
/lsm-test /lsm.bpf.o
echo "lsm-test exited with $?"
/bin/busybox poweroff -f
EOF
# The kernel's modprobe helper: leaves a trace that the kernel asked for a module.
cat > "$root/sbin/modprobe" <<'EOF'
#!/bin/sh
echo "$@" >> /tmp/modprobe.log
EOF
chmod 755 "$root/init" "$root/sbin/modprobe"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$CACHE/initramfs.cpio"

echo "test-lsm: booting $(awk '$1 == "vmlinuz" { print $2 }' "$CACHE/SOURCES") under TCG"
log=$CACHE/console.log
start=$(date +%s%N)
timeout "$TIMEOUT" qemu-system-x86_64 -accel tcg -M pc -m 256 -nographic -nodefaults \
    -serial stdio -no-reboot -kernel "$CACHE/vmlinuz" -initrd "$CACHE/initramfs.cpio" \
    -append 'console=ttyS0 quiet panic=-1 lsm=landlock,lockdown,yama,bpf' < /dev/null |
    sed -e 's/\r$//' -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' > "$log" || true # no CRs, no SeaBIOS escapes
end=$(date +%s%N)

grep -E '^(LSM |    record:|lsm-test)' "$log" || true
ms=$(( (end - start) / 1000000 ))
printf 'test-lsm: the guest ran %d.%03d s\n' $((ms / 1000)) $((ms % 1000))
if grep -q '^LSM RESULT PASS$' "$log"; then
    exit 0
fi
if ! grep -q '^LSM RESULT' "$log"; then
    echo "test-lsm: no result from the guest (console below, from $log)" >&2
    tail -n 40 "$log" >&2
fi
exit 1

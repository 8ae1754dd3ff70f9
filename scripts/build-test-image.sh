#!/bin/sh
# Builds a small OCI image layout from Debian's busybox-static, so container
# tests need no registry: one gzip layer holding /bin/busybox, its applets as
# symlinks and a minimal /etc; digests computed with sha256sum.
#
#   scripts/build-test-image.sh [OUT]     (default .build/images)
#
# Writes OUT/busybox/ (the layout), OUT/busybox.tar (a tar of it) and
# OUT/busybox.digest (the manifest digest, for --image-digest). Cached: it is
# rebuilt only when /bin/busybox or this script changes. Byte-for-byte reproducible (fixed
# times and owners), so the digest is stable on a machine.
set -eu

OUT=${1:-.build/images}
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || { echo "build-test-image: $BUSYBOX is missing (apt-get install busybox-static)" >&2; exit 1; }
if ! file_type=$(od -An -c -N4 "$BUSYBOX" | tr -d ' ') || [ "$file_type" != "177ELF" ]; then
    echo "build-test-image: $BUSYBOX is not an ELF binary" >&2; exit 1
fi

mkdir -p "$OUT"
STAMP="$OUT/busybox.source"
SOURCE=$(cat "$BUSYBOX" "$0" | sha256sum | cut -d' ' -f1)   # busybox and this script
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SOURCE" ] && [ -f "$OUT/busybox/index.json" ] && [ -f "$OUT/busybox.tar" ]; then
    cat "$OUT/busybox.digest"
    exit 0
fi

WORK=$(mktemp -d "$OUT/.build-XXXXXX")
trap 'rm -rf "$WORK"' EXIT

ROOT="$WORK/rootfs"
mkdir -p "$ROOT/bin" "$ROOT/etc" "$ROOT/tmp" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev" "$ROOT/root" "$ROOT/workspace"
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in sh ash echo cat ls sleep true false id env mkdir rm touch ps grep head tail wc nc wget dd \
              printf test stat readlink cp mv ln pwd hostname uname sha256sum find xargs seq kill date ip awk; do
    ln -s busybox "$ROOT/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$ROOT/etc/group"
printf 'alcub3-test\n' > "$ROOT/etc/hostname"

LAYOUT="$WORK/busybox"
BLOBS="$LAYOUT/blobs/sha256"
mkdir -p "$BLOBS"

# The layer: a reproducible tar, then gzip without a name or time.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf "$WORK/layer.tar" -C "$ROOT" .
DIFF_ID=$(sha256sum "$WORK/layer.tar" | cut -d' ' -f1)
gzip -n -9 -c "$WORK/layer.tar" > "$WORK/layer.tar.gz"
LAYER=$(sha256sum "$WORK/layer.tar.gz" | cut -d' ' -f1)
LAYER_SIZE=$(stat -c %s "$WORK/layer.tar.gz")
mv "$WORK/layer.tar.gz" "$BLOBS/$LAYER"

blob() {  # stdin -> blob; prints "digest size"
    cat > "$WORK/blob"
    d=$(sha256sum "$WORK/blob" | cut -d' ' -f1)
    s=$(stat -c %s "$WORK/blob")
    mv "$WORK/blob" "$BLOBS/$d"
    echo "$d $s"
}

set -- $(printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$DIFF_ID" | blob)
CONFIG=$1 CONFIG_SIZE=$2
set -- $(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$CONFIG" "$CONFIG_SIZE" "$LAYER" "$LAYER_SIZE" | blob)
MANIFEST=$1 MANIFEST_SIZE=$2
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"}}]}' \
    "$MANIFEST" "$MANIFEST_SIZE" > "$LAYOUT/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$LAYOUT/oci-layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$WORK/busybox.tar" -C "$LAYOUT" .

rm -rf "$OUT/busybox"
mv "$LAYOUT" "$OUT/busybox"
mv "$WORK/busybox.tar" "$OUT/busybox.tar"
echo "sha256:$MANIFEST" > "$OUT/busybox.digest"
echo "$SOURCE" > "$STAMP"
cat "$OUT/busybox.digest"

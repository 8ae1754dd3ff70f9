#!/bin/sh
# Installs the Debian packages given as arguments when they are missing.
# Idempotent: a machine that has them all makes no apt call at all.
set -eu
missing=""
for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    if [ "$(id -u)" -ne 0 ]; then echo "need root to install packages: sudo make deps" >&2; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if ! command -v swift >/dev/null 2>&1 && [ ! -x /opt/swift/usr/bin/swift ]; then
    echo "swift is not on PATH: alcub3 needs Swift 6 (the machine image has it at /opt/swift)" >&2
    exit 1
fi

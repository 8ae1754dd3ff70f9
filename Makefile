# alcub3: every step a fresh machine needs, from system packages to benchmarks.
# `make demo` and `make test` each install what is missing first.

SWIFT ?= $(shell command -v swift 2>/dev/null || echo /opt/swift/usr/bin/swift)
BUILD_FLAGS ?=
BIN = .build/debug/alcub3
CLANG ?= $(shell command -v clang 2>/dev/null || echo /opt/swift/usr/bin/clang)

# Debian packages alcub3 builds, tests and benchmarks with.
DEB_PACKAGES = libbpf-dev libelf-dev zlib1g-dev libseccomp-dev bpftool pkg-config \
               libsqlite3-dev sqlite3 bpftrace hyperfine bubblewrap iproute2 python3 procps curl util-linux aide chromium \
               netcat-openbsd python3-pytest python3-venv python3-pip python3-wheel gcc make git \
               runc busybox-static iptables swtpm swtpm-tools \
               qemu-system-x86 cpio xz-utils zstd libc6-dev

.PHONY: deps build test test-lsm guest demo bench bpf vmlinux check-generated escape datasets detection clean

deps:
	@scripts/install-deps.sh $(DEB_PACKAGES)

build: deps
	$(SWIFT) build $(BUILD_FLAGS)

# One build (tests included), then every test from it: unit tests and the
# integration tests against the real kernel (they need root).
test: deps
	$(SWIFT) build --build-tests $(BUILD_FLAGS)
	$(SWIFT) test --skip-build --no-parallel $(BUILD_FLAGS)
	@$(MAKE) --no-print-directory test-lsm

# The BPF-LSM programs in a QEMU guest (this host's kernel refuses BPF-LSM):
# Debian's cloud kernel, a busybox initramfs, bpf/test/lsm-test.c. Needs root.
test-lsm: bpf
	@scripts/test-lsm.sh

# The vm level's guest image (Debian's cloud kernel, busybox, guest/alcub3-guest.c),
# cached with its sha256 in GUEST_DIR; rebuilt when an input changes (docs/architecture.md).
GUEST_DIR ?= $(or $(ALCUB3_GUEST_DIR),/var/cache/alcub3/guest)
guest: deps
	@scripts/build-guest.sh $(GUEST_DIR)

demo: build
	@scripts/demo.sh $(BIN)

bench: deps
	@scripts/bench.sh $(BIN)

# vmlinux.h is generated from this kernel's BTF and committed (x86_64); CO-RE
# relocations make the objects portable to other kernels.
vmlinux:
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/include/vmlinux.h

# Compiles the BPF objects alone (the build plugin does the same during swift build).
bpf:
	@mkdir -p .build/bpf
	@for f in bpf/*.bpf.c; do \
	  $(CLANG) -g -O2 -target bpf -mcpu=v3 -D__TARGET_ARCH_x86 -Wall -Werror \
	    -Ibpf/include -ISources/CAlcub3/include -c $$f -o .build/bpf/$$(basename $$f .c).o || exit 1; \
	  echo "compiled $$f"; done

# The escape suite's attacker, run inside sandboxes: static, so any root can run it.
escape:
	@mkdir -p .build/escape
	cc -static -O2 -Wall -Wextra -Werror -o .build/escape/alcub3-escape escape/alcub3-escape.c

# The behavioural model's data sets, recorded with alcub3's own telemetry in
# sandboxes (needs root): normal developer work split into train/ and normal/,
# attacks into attack/, under .build/datasets (docs/detection.md).
datasets: build escape
	@scripts/record-datasets.sh $(BIN)

# The models measured on those data sets; the figures go into docs/detection.md.
detection: datasets
	@scripts/write-detection.sh $(BIN)

clean:
	rm -rf .build

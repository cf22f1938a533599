#!/usr/bin/env bash
# Installs the test tools dicomfs needs (the oracles in ../shared/oracles: dcmtk, dicom3tools,
# dcm2niix, pydicom, ...) and runs every test: format, lints, unit tests, real-mount tests,
# man page lint and short fuzz runs of the DICOMDIR parser and the instance reader.
# Needs root and /dev/fuse for the mount tests.  SKIP_INSTALL=1 skips the install step.
set -euo pipefail
cd "$(dirname "$0")/.."
oracles="$(pwd)/../shared/oracles"

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    missing=0
    for t in dcmdump dciodvfy dcmftest dcmmkdir dcm2niix mandoc rsync; do
        command -v "$t" >/dev/null 2>&1 || missing=1
    done
    python3 -c "import pydicom" 2>/dev/null || missing=1
    if [ "$missing" = 1 ]; then
        echo "== installing the test tools (../shared/oracles/install_oracles.sh)"
        bash "$oracles/install_oracles.sh"
    fi
    # strace injects a kill -9 at an exact write of the daemon (tests/crash.rs).
    command -v strace >/dev/null 2>&1 || {
        echo "== installing strace"
        apt-get install -y -q strace >/dev/null 2>&1 ||
            (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q strace >/dev/null 2>&1) ||
            echo "strace could not be installed: the strace crash test will be skipped"
    }
fi
[ -e /dev/fuse ] || { echo "no /dev/fuse: the mount tests cannot run" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== man pages"
if ls man/*.[1-8] >/dev/null 2>&1; then
    out=$(mandoc -T lint -W warning man/*.[1-8] 2>&1 || true)
    if [ -n "$out" ]; then echo "$out"; exit 1; fi
fi
echo "== fuzz smoke runs of the DICOMDIR parser, the instance reader/transcoder and the FAT medium"
if [ "${SKIP_FUZZ:-0}" != 1 ]; then
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
    # Only a stable toolchain exists here: RUSTC_BOOTSTRAP lets cargo-fuzz use its nightly flags.
    # An allocation over 64 MB counts as a crash: no length field may size an allocation.
    mkdir -p tests/fuzz/corpus/dicomdir
    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz dicomdir \
        tests/fuzz/corpus/dicomdir tests/fuzz/seeds/dicomdir -- \
        -dict=tests/fuzz/dicomdir.dict -malloc_limit_mb=64 -max_total_time="${FUZZ_SECONDS:-30}"
    mkdir -p tests/fuzz/corpus/instance
    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz instance \
        tests/fuzz/corpus/instance tests/fuzz/seeds/instance -- \
        -malloc_limit_mb=64 -max_total_time="${FUZZ_SECONDS:-30}"
    mkdir -p tests/fuzz/corpus/fat
    RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz fat \
        tests/fuzz/corpus/fat tests/fuzz/seeds/fat -- \
        -malloc_limit_mb=64 -max_len=1048576 -max_total_time="${FUZZ_SECONDS:-30}"
fi
echo "== cargo test (unit tests, then tests that really mount)"
log=$(mktemp)
status=0
cargo test --workspace 2>&1 | tee "$log" || status=$?
# Leave no mount behind, whatever happened.
awk '$1 ~ /dicomfs-it-/ {print $2}' /proc/mounts | xargs -r -n1 umount -l || true
# One closing line with the totals of every test binary.
awk '/^test result:/ {p += $4; f += $6} END {printf "tests: %d passed, %d failed\n", p, f}' "$log"
rm -f "$log"
exit "$status"

#!/usr/bin/env bash
# Install dicomfs: the binary, the mount helpers and the man pages.
#
#   scripts/install.sh [--no-build]
#
# PREFIX (default /usr/local): bin/dicomfs, share/man/man{1,5,8}/.
# SBINDIR (default /sbin): mount.fuse.dicomfs, mount.dicomfs, umount.fuse.dicomfs and
#   umount.dicomfs, symlinks to the binary. mount(8) and umount(8) look for helpers only in
#   /sbin (and /sbin/fs.d, /sbin/fs), so that is where they must be for `mount -t fuse.dicomfs`
#   and fstab lines to work.
# DESTDIR (default empty): staging root for packaging; the symlinks point at the final path.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX="${PREFIX:-/usr/local}"
SBINDIR="${SBINDIR:-/sbin}"
DESTDIR="${DESTDIR:-}"

if [ "${1:-}" != --no-build ]; then
    cargo build --release --locked
fi
bin=target/release/dicomfs
[ -x "$bin" ] || { echo "no $bin: run cargo build --release" >&2; exit 1; }

install -d "$DESTDIR$PREFIX/bin" "$DESTDIR$SBINDIR"
install -m 0755 "$bin" "$DESTDIR$PREFIX/bin/dicomfs"
for h in mount.fuse.dicomfs mount.dicomfs umount.fuse.dicomfs umount.dicomfs; do
    ln -sfn "$PREFIX/bin/dicomfs" "$DESTDIR$SBINDIR/$h"
done
for page in man/*.[1-8]; do
    sec="${page##*.}"
    install -d "$DESTDIR$PREFIX/share/man/man$sec"
    install -m 0644 "$page" "$DESTDIR$PREFIX/share/man/man$sec/"
done
echo "installed $PREFIX/bin/dicomfs, helpers in $SBINDIR, man pages in $PREFIX/share/man"

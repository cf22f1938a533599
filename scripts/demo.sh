#!/usr/bin/env bash
# Builds dicomfs, writes a synthetic demo File-set (no medium needed) and mounts it with the
# native view at the root and the alternate .dcm view under by-patient/.
# Usage: scripts/demo.sh [DIR]   (default /tmp/dicomfs-demo); needs root or FUSE access.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-/tmp/dicomfs-demo}"
cargo build --release --quiet
bin="$(pwd)/target/release/dicomfs"
mkdir -p "$dir/mnt"
if mountpoint -q "$dir/mnt"; then umount "$dir/mnt"; fi
[ -f "$dir/medium/DICOMDIR" ] || "$bin" demo "$dir/medium"
"$bin" mount --view both "$dir/medium" "$dir/mnt"
cat <<MSG

Mounted the demo File-set $dir/medium on $dir/mnt.  Look at:
  ls $dir/mnt                       the medium as viewers see it: DICOMDIR and File IDs
  find $dir/mnt/by-patient | head   the same instances as patient/study/series/N.dcm
  dcmdump $dir/mnt/DICOMDIR | head  the DICOMDIR, byte for byte
  $bin ls $dir/medium               the DICOMDIR's tree
  $bin check $dir/medium            verify the File-set (exit 0 = clean)
Unmount with:  umount $dir/mnt
MSG

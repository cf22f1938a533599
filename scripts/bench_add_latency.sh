#!/usr/bin/env bash
# The latency of adding one instance to a 100,300-record File-set, measured inside one process
# (open + write + close of each file), so that starting `cp` is not counted; and of deleting one
# (unlink, then fsync of the mount root). Compared with the same calls on a plain directory.
#
#   scripts/bench_add_latency.sh          # uses $BENCH_DIR/meta from scripts/bench.sh if present
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
(cd "$ROOT" && cargo build --release --quiet)
B=${CARGO_TARGET_DIR:-$ROOT/target}/release/dicomfs
W=$(mktemp -d /var/tmp/dicomfs-lat.XXXXXX)
trap 'mountpoint -q "$W/mnt" && umount "$W/mnt"; rm -rf "$W"' EXIT
META=${BENCH_DIR:-/var/tmp/dicomfs-bench}/meta/DICOMDIR
mkdir -p "$W/fs" "$W/mnt" "$W/plain"
if [[ -f $META ]]; then
    cp "$META" "$W/fs/"
else
    "$B" demo "$W/meta" --patients 100 --studies 2 --series 5 --instances 99 --no-files >/dev/null
    cp "$W/meta/DICOMDIR" "$W/fs/"
fi
"$B" demo "$W/new" --patients 1 --studies 1 --series 1 --instances 20 --rows 512 --cols 512 \
    --seed 3 --no-documents >/dev/null
"$B" mount "$W/fs" "$W/mnt"
python3 - "$W" <<'PY'
import glob, os, statistics, sys, time
W = sys.argv[1]
data = [open(f, "rb").read() for f in sorted(glob.glob(W + "/new/P*/*/*/*"))]
def ms(f):
    t = time.perf_counter(); f(); return (time.perf_counter() - t) * 1000
def add(dst, d):
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); os.write(fd, d); os.close(fd)
def rm(path, root):
    os.unlink(path); fd = os.open(root, os.O_RDONLY); os.fsync(fd); os.close(fd)
m, n = [], []
for i, d in enumerate(data):
    n.append(ms(lambda: add(f"{W}/plain/x{i}.dcm", d)))
    m.append(ms(lambda: add(f"{W}/mnt/x{i}.dcm", d)))
time.sleep(1)
added = sorted(p for p in glob.glob(W + "/fs/P*/**", recursive=True) if os.path.isfile(p))
dm, dn = [], []
for i, p in enumerate(added[:10]):
    dn.append(ms(lambda: rm(f"{W}/plain/x{i}.dcm", W + "/plain")))
    dm.append(ms(lambda: rm(W + "/mnt/" + os.path.relpath(p, W + "/fs"), W + "/mnt")))
f = lambda v: "%.2f ms (%.2f-%.2f)" % (statistics.median(v), min(v), max(v))
print(f"| Add 1 instance of 513 KiB at 100,300 records, in-process open+write+close | {f(n)} | {f(m)} |")
print(f"| Delete 1 instance at 100,300 records, in-process unlink + fsync of the root | {f(dn)} | {f(dm)} |")
PY

#!/usr/bin/env bash
# Benchmark dicomfs against the backing directory, in one run, and print a markdown report.
#
#   scripts/bench.sh              full size (1 GiB file, ~10,000 x 513 KiB files, ~100,000 records)
#   QUICK=1 scripts/bench.sh      small sizes, one repetition: a smoke run
#
# Environment:
#   BENCH_DIR    work directory for data sets and mount points (default /var/tmp/dicomfs-bench);
#                data sets are kept there and reused by later runs with the same sizes
#   BENCH_REGEN  1: regenerate the data sets even if they exist
#   REPS         repetitions of each measurement (default 5, QUICK: 1); the median is reported,
#                with the range (slowest-fastest) in parentheses
#
# Needs root (drops the page cache with /proc/sys/vm/drop_caches, mounts), /dev/fuse, cargo.
# Optional: dcmdump (dcmtk) and /usr/bin/time for the DICOMDIR reference row.
#
# Every figure is compared with the backing directory measured in the same run, the variants
# alternating and their order rotating from one repetition to the next, because absolute numbers
# on a shared machine drift.
# "Cold" means the guest page cache, dentries and inodes were dropped (and, for the mount, the
# File-set freshly mounted); a host-side cache under a virtual disk is not dropped.
# The report goes to stdout (and to $BENCH_DIR/results.md); progress goes to stderr.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
W=${BENCH_DIR:-/var/tmp/dicomfs-bench}
QUICK=${QUICK:-0}
BENCH_REGEN=${BENCH_REGEN:-0}

if [[ $QUICK == 1 ]]; then
    REPS=${REPS:-1}
    BIG_MB=64
    FILES_ARGS=(--patients 2 --studies 1 --series 2 --instances 50 --rows 512 --cols 512)
    META_ARGS=(--patients 10 --studies 2 --series 5 --instances 99)
else
    REPS=${REPS:-5}
    BIG_MB=1024
    FILES_ARGS=(--patients 10 --studies 1 --series 5 --instances 200 --rows 512 --cols 512)
    # 100 + 200 + 1,000 + 99,000 = 100,300 records
    META_ARGS=(--patients 100 --studies 2 --series 5 --instances 99)
fi

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (drop_caches and mounts need it)"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing"
for t in cargo dd find xargs cat awk sort pgrep umount mountpoint; do
    command -v "$t" >/dev/null || die "$t not found"
done

# --- build -------------------------------------------------------------------------------------
log "building release binary"
(cd "$ROOT" && cargo build --release --quiet)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/dicomfs
[[ -x $BIN ]] || die "$BIN not built"

mkdir -p "$W"
W=$(cd "$W" && pwd)

# --- mounts, always undone -----------------------------------------------------------------------
MNT=$W/mnt

daemon_pid() { # MOUNTPOINT -> pid of the daemon serving it (the newest dicomfs mount process)
    pgrep -n -f -- "dicomfs mount .* $1\$" || true
}

bench_umount() { # MOUNTPOINT: unmount and wait until the daemon has exited
    local m=$1 pid i
    mountpoint -q "$m" || return 0
    pid=$(daemon_pid "$m")
    umount "$m" || umount -l "$m"
    if [[ -n $pid ]]; then
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
    fi
}

bench_mount() { # SOURCE [mount args...]: mount SOURCE on $MNT (unmounting what was there)
    local src=$1
    shift
    bench_umount "$MNT"
    mkdir -p "$MNT"
    "$BIN" mount "$@" "$src" "$MNT"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if mountpoint -q "$MNT" 2>/dev/null; then
        log "unmounting $MNT"
        bench_umount "$MNT" || umount -l "$MNT" || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- measuring -----------------------------------------------------------------------------------
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

T_US=0 # result of timeit: wall time of the command in microseconds
timeit() {
    local t0 t1
    t0=$(date +%s%N)
    "$@"
    t1=$(date +%s%N)
    T_US=$(((t1 - t0) / 1000))
}

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {
    if (NR % 2) print a[(NR+1)/2]; else printf "%d\n", (a[NR/2]+a[NR/2+1])/2 }'; }

# rate COUNT MICROSECONDS -> COUNT per second
rate() { awk -v n="$1" -v us="$2" 'BEGIN { printf "%.1f", n / (us / 1e6) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
fmt() { awk -v x="$1" 'BEGIN { if (x >= 100) printf "%.0f", x; else printf "%.1f", x }'; }
ms() { awk -v us="$1" 'BEGIN { printf "%.0f", us / 1000 }'; }
# spread COUNT US... -> " (slowest–fastest)" as rates, or nothing for a single sample
spread() {
    local n=$1
    shift
    (($# > 1)) || return 0
    local lo hi
    lo=$(printf '%s\n' "$@" | sort -n | tail -n 1)
    hi=$(printf '%s\n' "$@" | sort -n | head -n 1)
    printf ' (%s–%s)' "$(fmt "$(rate "$n" "$lo")")" "$(fmt "$(rate "$n" "$hi")")"
}

# rotate I F1 F2...: run the functions, starting with the (I mod n)th, so that no variant always
# runs first (right after the data set was written or another variant warmed something)
rotate() {
    local i=$1 k
    shift
    local n=$#
    local f=("$@")
    for ((k = 0; k < n; k++)); do "${f[$(((i + k) % n))]}"; done
}

read_seq() { dd if="$1" of=/dev/null bs=1M status=none; }
read_tree() { find "$1" -type f -print0 | xargs -0 -r cat >/dev/null; }
stat_tree() { find "$1" -printf '%s\n' | wc -l >/dev/null; }

# --- data sets -----------------------------------------------------------------------------------
# make_set NAME ARGS... : a demo File-set in $W/NAME, regenerated when the arguments change
make_set() {
    local name=$1
    shift
    local dir=$W/$name stamp="$W/$name.stamp" want="$* big=${BIG:-0}"
    if [[ $BENCH_REGEN != 1 && -f $stamp && $(<"$stamp") == "$want" && -f $dir/DICOMDIR ]]; then
        log "reusing $dir"
        return
    fi
    log "generating $dir ($*)"
    rm -rf "$dir" "$stamp"
    "$BIN" demo "$dir" "$@" >"$W/$name.demo.txt"
    cat "$W/$name.demo.txt" >&2
    if [[ ${BIG:-0} != 0 ]]; then
        # Random bytes, so neither a sparse file nor a compressing layer flatters the figure.
        dd if=/dev/urandom of="$dir/BIG" bs=1M count="$BIG" status=none
    fi
    sync
    echo "$want" >"$stamp"
}

BIG=$BIG_MB make_set seq --patients 1 --studies 1 --series 1 --instances 3 --no-documents
make_set files "${FILES_ARGS[@]}" --no-documents
make_set meta "${META_ARGS[@]}" --no-files --no-documents

ROWS=()      # throughput table rows
MROWS=()     # mount / memory table rows
row() { ROWS+=("| $1 | $2 | $3 | $4 | $5 |"); }

# cmp_row LABEL UNIT NATIVE_COUNT MOUNT_COUNT TARGET NATIVE_US... -- MOUNT_US... : one row from
# the medians; the rates are COUNT per second, the ratio is mount rate / native rate.
cmp_row() {
    local label=$1 unit=$2 ncount=$3 mcount=$4 target=$5
    shift 5
    local nat=() mnt=()
    while [[ $1 != -- ]]; do nat+=("$1"); shift; done
    shift
    mnt=("$@")
    local n m rn rmt r ok
    n=$(median "${nat[@]}")
    m=$(median "${mnt[@]}")
    rn=$(rate "$ncount" "$n")
    rmt=$(rate "$mcount" "$m")
    r=$(ratio "$rmt" "$rn")
    local nr mr
    nr=$(spread "$ncount" "${nat[@]}")
    mr=$(spread "$mcount" "${mnt[@]}")
    ok=""
    if [[ -n $target ]]; then
        ok=$(awk -v r="$r" -v t="$target" 'BEGIN { print (r >= t) ? "met" : "**not met**" }')
        ok="≥ ${target}x: $ok"
    fi
    row "$label" "$(fmt "$rn") $unit$nr" "$(fmt "$rmt") $unit$mr" "${r}x" "$ok"
    log "$label: native $(fmt "$rn") $unit, mount $(fmt "$rmt") $unit, ratio $r"
    log "  samples (ms): native $(for x in "${nat[@]}"; do ms "$x"; echo -n ' '; done)| mount $(for x in "${mnt[@]}"; do ms "$x"; echo -n ' '; done)"
}

# --- 1. sequential read of one big file --------------------------------------------------------------
SEQ=$W/seq
BIG_BYTES=$(stat -c %s "$SEQ/BIG")
BIG_MBS=$(awk -v b="$BIG_BYTES" 'BEGIN { print b / 1e6 }')
log "1. sequential read of a $BIG_MB MiB file, $REPS reps"
nc=() mc=() nw=() mw=() pc=() pw=()
seq_native() {
    drop_caches
    timeit read_seq "$SEQ/BIG"; nc+=("$T_US")
    timeit read_seq "$SEQ/BIG"; nw+=("$T_US")
}
seq_mount() {
    bench_mount "$SEQ"
    [[ -f $MNT/BIG ]] || die "BIG is not visible through the mount"
    drop_caches
    timeit read_seq "$MNT/BIG"; mc+=("$T_US")
    timeit read_seq "$MNT/BIG"; mw+=("$T_US")
}
seq_daemon() {
    bench_mount "$SEQ" --no-passthrough
    drop_caches
    timeit read_seq "$MNT/BIG"; pc+=("$T_US")
    timeit read_seq "$MNT/BIG"; pw+=("$T_US")
}
for ((i = 0; i < REPS; i++)); do rotate "$i" seq_native seq_mount seq_daemon; done
bench_umount "$MNT"
cmp_row "Sequential read, $BIG_MB MiB file, cold (dd bs=1M)" MB/s "$BIG_MBS" "$BIG_MBS" 0.9 "${nc[@]}" -- "${mc[@]}"
cmp_row "Sequential read, $BIG_MB MiB file, warm" MB/s "$BIG_MBS" "$BIG_MBS" 0.9 "${nw[@]}" -- "${mw[@]}"
cmp_row "… same, \`--no-passthrough\` (daemon reads), cold" MB/s "$BIG_MBS" "$BIG_MBS" "" "${nc[@]}" -- "${pc[@]}"
cmp_row "… same, \`--no-passthrough\` (daemon reads), warm" MB/s "$BIG_MBS" "$BIG_MBS" "" "${nw[@]}" -- "${pw[@]}"

# --- 2. many small files -------------------------------------------------------------------------
FILES=$W/files
NFILES=$(find "$FILES" -type f | wc -l)
FBYTES=$(find "$FILES" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
FAVG_KIB=$(awk -v b="$FBYTES" -v n="$NFILES" 'BEGIN { printf "%.0f", b / n / 1024 }')
log "2. reading $NFILES files (avg $FAVG_KIB KiB, $((FBYTES / 1048576)) MiB), $REPS reps"
bench_mount "$FILES"
n=$(find "$MNT" -type f | wc -l)
[[ $n == "$NFILES" ]] || die "the mount shows $n files, the backing directory $NFILES"
# The .dcm view: the same instance files (no DICOMDIR) under patient/study/series/N.dcm.
bench_mount "$FILES" --view dcm
NDCM=$(find "$MNT" -type f | wc -l)
nc=() mc=() nw=() mw=() dc=() dw=()
files_native() {
    drop_caches
    timeit read_tree "$FILES"; nc+=("$T_US")
    timeit read_tree "$FILES"; nw+=("$T_US")
}
files_mount() {
    bench_mount "$FILES"
    drop_caches
    timeit read_tree "$MNT"; mc+=("$T_US")
    timeit read_tree "$MNT"; mw+=("$T_US")
}
files_dcm() {
    bench_mount "$FILES" --view dcm
    drop_caches
    timeit read_tree "$MNT"; dc+=("$T_US")
    timeit read_tree "$MNT"; dw+=("$T_US")
}
for ((i = 0; i < REPS; i++)); do rotate "$i" files_native files_mount files_dcm; done
bench_umount "$MNT"
cmp_row "Read $NFILES files of ~$FAVG_KIB KiB (find \| xargs cat), cold" files/s "$NFILES" "$NFILES" 0.9 "${nc[@]}" -- "${mc[@]}"
cmp_row "Read $NFILES files of ~$FAVG_KIB KiB, warm" files/s "$NFILES" "$NFILES" 0.9 "${nw[@]}" -- "${mw[@]}"
# The native figure counts the DICOMDIR too; the .dcm view shows only the instances.
cmp_row "… same through the \`.dcm\` view ($NDCM files), cold" files/s "$NFILES" "$NDCM" "" "${nc[@]}" -- "${dc[@]}"
cmp_row "… same through the \`.dcm\` view, warm" files/s "$NFILES" "$NDCM" "" "${nw[@]}" -- "${dw[@]}"

# --- 3. find + stat ----------------------------------------------------------------------------------
NENT=$(find "$FILES" -printf '%s\n' | wc -l)
log "3. find -printf %s over $NENT entries, $REPS reps"
nc=() mc=() nw=() mw=()
find_native() {
    drop_caches
    timeit stat_tree "$FILES"; nc+=("$T_US")
    timeit stat_tree "$FILES"; nw+=("$T_US")
}
find_mount() {
    bench_mount "$FILES"
    drop_caches
    timeit stat_tree "$MNT"; mc+=("$T_US")
    timeit stat_tree "$MNT"; mw+=("$T_US")
}
for ((i = 0; i < REPS; i++)); do rotate "$i" find_native find_mount; done
bench_umount "$MNT"
cmp_row "find -printf '%s' over $NENT entries, cold (fresh mount)" entries/s "$NENT" "$NENT" "" "${nc[@]}" -- "${mc[@]}"
cmp_row "find -printf '%s' over $NENT entries, warm" entries/s "$NENT" "$NENT" "" "${nw[@]}" -- "${mw[@]}"

# --- 4. mount time and memory with a big DICOMDIR ------------------------------------------------------------
META=$W/meta
RECORDS=$(sed -n 's/.* \([0-9]*\) records.*/\1/p' "$W/meta.demo.txt")
DDBYTES=$(stat -c %s "$META/DICOMDIR")
DDMB=$(awk -v b="$DDBYTES" 'BEGIN { printf "%.1f", b / 1048576 }')
log "4. mount --view both with $RECORDS records (DICOMDIR $DDMB MiB), $REPS reps"
cold=() warm=() ls_us=() rss=() hwm=()
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
for ((i = 0; i < REPS; i++)); do
    bench_umount "$MNT"
    drop_caches
    timeit "$BIN" mount --view both "$META" "$MNT"; cold+=("$T_US")
    bench_umount "$MNT"
    timeit "$BIN" mount --view both "$META" "$MNT"; warm+=("$T_US")
    pid=$(daemon_pid "$MNT")
    [[ -n $pid ]] || die "no daemon found for $MNT"
    timeit sh -c "ls '$MNT/by-patient' | wc -l >/dev/null"; ls_us+=("$T_US")
    rss+=("$(status_kb "$pid" VmRSS)")
    hwm+=("$(status_kb "$pid" VmHWM)")
done
NPAT=$(ls "$MNT/by-patient" | wc -l)
# A walk of the alternate view's directories: every patient and study directory is listed
# (not the series directories: this DICOMDIR references no files, so their entries are missing).
timeit sh -c "find '$MNT/by-patient' -maxdepth 3 | wc -l >/dev/null"
walk_us=$T_US
NWALK=$(find "$MNT/by-patient" -maxdepth 3 | wc -l)
walk_rss=$(status_kb "$pid" VmRSS)
walk_hwm=$(status_kb "$pid" VmHWM)
bench_umount "$MNT"

mcold=$(median "${cold[@]}")
mwarm=$(median "${warm[@]}")
mrss=$(median "${rss[@]}")
mhwm=$(median "${hwm[@]}")
mb() { awk -v kb="$1" 'BEGIN { printf "%.0f", kb / 1024 }'; }
met() { awk -v x="$1" -v t="$2" 'BEGIN { print (x < t) ? "met" : "**not met**" }'; }
MROWS+=("| \`dicomfs mount --view both\` until it returns, cold cache | $(ms "$mcold") ms | < 1000 ms: $(met "$mcold" 1000000) |")
MROWS+=("| same, DICOMDIR in the page cache | $(ms "$mwarm") ms | < 1000 ms: $(met "$mwarm" 1000000) |")
MROWS+=("| \`ls MNT/by-patient \| wc -l\` ($NPAT patients), first listing | $(ms "$(median "${ls_us[@]}")") ms | |")
MROWS+=("| daemon RSS after mount + ls (VmRSS / VmHWM) | $(mb "$mrss") MiB / $(mb "$mhwm") MiB | < 150 MB: $(met "$((mhwm * 1024))" 150000000) |")
MROWS+=("| \`find MNT/by-patient -maxdepth 3\` ($NWALK directories), then RSS (VmRSS / VmHWM) | $(ms "$walk_us") ms, $(mb "$walk_rss") MiB / $(mb "$walk_hwm") MiB | |")

if command -v dcmdump >/dev/null && [[ -x /usr/bin/time ]]; then
    d_us=() d_kb=()
    for ((i = 0; i < REPS; i++)); do
        timeit /usr/bin/time -f %M -o "$W/dcmdump.time" dcmdump "$META/DICOMDIR" >/dev/null
        d_us+=("$T_US")
        d_kb+=("$(tail -n 1 "$W/dcmdump.time")")
    done
    MROWS+=("| reference: \`dcmdump DICOMDIR >/dev/null\` (DICOMDIR in the page cache) | $(ms "$(median "${d_us[@]}")") ms, max RSS $(mb "$(median "${d_kb[@]}")") MiB | |")
else
    log "dcmdump or /usr/bin/time missing: no dcmdump reference row"
fi

# --- report ------------------------------------------------------------------------------------------
{
    echo "Reads and metadata, \`dicomfs mount\` (native view, FUSE passthrough unless noted) against the backing directory in the same run; median of $REPS."
    echo
    echo "| Benchmark | Native | dicomfs | Ratio dicomfs/native | Target |"
    echo "|---|---:|---:|---:|---|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Mount of a DICOMDIR with $RECORDS records ($DDMB MiB), \`--view both\`; median of $REPS."
    echo
    echo "| Measurement | Result | Target |"
    echo "|---|---:|---|"
    printf '%s\n' "${MROWS[@]}"
} | tee "$W/results.md"
log "report also written to $W/results.md"

#!/usr/bin/env bash
# Benchmark dicomfs against the backing directory, in one run, and print a markdown report.
#
#   scripts/bench.sh              full size (1 GiB file, ~10,000 x 513 KiB files, ~100,000 records)
#   QUICK=1 scripts/bench.sh      small sizes, one repetition: a smoke run
#
# Sections 1-4 measure reads and metadata on read-only mounts (`-o ro`). Section 5, "Copy-in and
# delete", measures writes on read-write mounts: `cp -r` into a new File-set against `cp -r` into a
# directory, adding and deleting one instance at ~100,000 records (against `dcmmkdir +A` and
# pydicom's FileSet), and `dicomfs rebuild` against `dcmmkdir +r`.
#
# Section 6, "FAT images", reads a FAT32 image holding the same files through dicomfs, fusefat,
# mtools and raw dd (and the big file against an in-memory FUSE daemon, tests/bin/memfs.rs), and
# times `cp -r` into a fresh image against `mcopy -s`. `BENCH_FAT_ONLY=1 scripts/bench.sh` runs it
# alone (needs mkfs.fat, fsck.fat, mtools, fusefat).
#
# Environment:
#   BENCH_DIR    work directory for data sets and mount points (default /var/tmp/dicomfs-bench);
#                data sets are kept there and reused by later runs with the same sizes
#   BENCH_REGEN  1: regenerate the data sets even if they exist
#   REPS         repetitions of each measurement (default 5, QUICK: 1); the median is reported,
#                with the range (slowest-fastest) in parentheses
#                (section 5: REPS runs of cp -r and of the rebuilds; N_ADD adds, N_DEL deletes and
#                DCMTK_REPS dcmmkdir +A runs, set below; pydicom runs once)
#   BENCH_KEEP_GOING  1: a result that fails its check (e.g. fewer instances in the DICOMDIR than
#                were copied in) is listed under the report instead of stopping the run; the exit
#                status is then 1
#   BENCH_KEEP   1: keep the scratch copies of section 5 ($BENCH_DIR/w-*) at exit
#   BENCH_SETTLE seconds each `cp -r` of section 5 waits after deleting the previous copy
#                (default 61, QUICK: 0; see settle())
#   BIG_MB       size of the big file of section 1 (and 6) in MiB (default 1024, QUICK: 64)
#   FAT_IMG_MB   section 6 (FAT images): size of the sparse FAT32 image (default 8192, QUICK: 1024)
#   BENCH_FAT    0: skip section 6;  BENCH_FAT_ONLY=1: only section 6 (and its data sets)
#
# Needs root (drops the page cache with /proc/sys/vm/drop_caches, mounts), /dev/fuse, cargo.
# Optional: dcmdump (dcmtk) and /usr/bin/time for the DICOMDIR reference row; dcmmkdir (dcmtk) and
# python3 with pydicom for the reference rows of section 5.
# Disk: the data sets (~5.3 GiB at full size) plus ~10.5 GiB of scratch copies for section 5, which
# are removed at the end of the run.
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
    BENCH_SETTLE=${BENCH_SETTLE:-0}
    BIG_MB=${BIG_MB:-64}
    FILES_ARGS=(--patients 2 --studies 1 --series 2 --instances 50 --rows 512 --cols 512)
    META_ARGS=(--patients 10 --studies 2 --series 5 --instances 99)
    # 2 + 4 + 20 + 1,980 = 2,006 records
    PY_ARGS=(--patients 2 --studies 2 --series 5 --instances 99)
    N_ADD=3       # instances added one by one to the META File-set
    N_DEL=3       # of those, deleted one by one
    DCMTK_REPS=3  # dcmmkdir +A runs
else
    REPS=${REPS:-5}
    BENCH_SETTLE=${BENCH_SETTLE:-61}
    BIG_MB=${BIG_MB:-1024}
    FILES_ARGS=(--patients 10 --studies 1 --series 5 --instances 200 --rows 512 --cols 512)
    # 100 + 200 + 1,000 + 99,000 = 100,300 records
    META_ARGS=(--patients 100 --studies 2 --series 5 --instances 99)
    # 20 + 40 + 200 + 19,800 = 20,060 records, with (small) instance files: pydicom's FileSet.write
    # moves every file of the File-set into its own layout, so they must exist
    PY_ARGS=(--patients 20 --studies 2 --series 5 --instances 99)
    N_ADD=20
    N_DEL=10
    DCMTK_REPS=3
fi
PY_TIMEOUT=${PY_TIMEOUT:-120} # seconds; pydicom runs once and is stopped after this

log() { printf '[bench] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
# A command that fails under set -e names itself before the script exits.
set -E
trap 'rc=$?; log "error: line $LINENO${FUNCNAME:+ (in ${FUNCNAME[*]})}: $BASH_COMMAND exited with $rc"' ERR

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

# A daemon that has exited stays a zombie until its parent reaps it; the daemon's parent is init,
# which here reaps only after a second or more: such a process counts as gone.
pid_alive() { # PID
    local st
    st=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null || true)
    [[ -n $st && $st != Z ]]
}

UMOUNT_PID= # set by bench_umount: the daemon it waited for, if any
bench_umount() { # MOUNTPOINT [SECONDS]: unmount and wait (by default up to 5 s) until the daemon has exited
    local m=$1 wait=${2:-5} pid i
    UMOUNT_PID=
    mountpoint -q "$m" || return 0
    pid=$(daemon_pid "$m")
    UMOUNT_PID=$pid
    umount "$m" || umount -l "$m"
    if [[ -n $pid ]]; then
        for ((i = 0; i < wait * 100; i++)); do
            pid_alive "$pid" || break
            sleep 0.01
        done
    fi
}

# A read-write daemon writes pending deletes and removes its staging directory after the kernel
# has let go of the mount: wait for it before looking at the File-set.
bench_umount_rw() { # MOUNTPOINT
    bench_umount "$1" 120
    if [[ -n $UMOUNT_PID ]] && pid_alive "$UMOUNT_PID"; then
        die "the daemon serving $1 (pid $UMOUNT_PID) has not exited 120 s after umount"
    fi
}

bench_mount() { # SOURCE [mount args...]: mount SOURCE read-only on $MNT (unmounting what was there)
    local src=$1
    shift
    bench_umount "$MNT"
    mkdir -p "$MNT"
    "$BIN" mount -o ro "$@" "$src" "$MNT"
}

bench_mount_rw() { # SOURCE: mount SOURCE read-write (the default) on $MNT, logging to $W/mount-rw.log
    local src=$1
    bench_umount "$MNT"
    mkdir -p "$MNT"
    "$BIN" mount --log-file "$W/mount-rw.log" "$src" "$MNT"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM ERR
    if mountpoint -q "$MNT" 2>/dev/null; then
        log "unmounting $MNT"
        bench_umount "$MNT" 30 || umount -l "$MNT" || true
    fi
    for m in "$W/mnt-fusefat" "$W/mnt-memfs" "$W/w-src-tmpfs"; do
        if mountpoint -q "$m" 2>/dev/null; then umount "$m" || umount -l "$m" || true; fi
    done
    rm -f "$W/w-fat-ingest.img" "$W/fat-empty.img"
    # Scratch copies of section 5 (up to ~10 GiB); BENCH_KEEP=1 keeps them for a look after a failure.
    if [[ ${BENCH_KEEP:-0} != 1 ]]; then
        rm -rf "${W:?}"/w-*
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
# Section 5: new instances (another seed: new UIDs) to add one by one, and a File-set with instance
# files for pydicom.
make_set new --seed 2 --patients 1 --studies 1 --series 1 --instances "$N_ADD" --rows 512 --cols 512 --no-documents
make_set new2 --seed 5 --patients 1 --studies 1 --series 1 --instances "$N_ADD" --rows 512 --cols 512 --no-documents
make_set pyfs "${PY_ARGS[@]}" --no-documents


ROWS=()      # throughput table rows
MROWS=()     # mount / memory table rows
CROWS=()     # copy-in and delete table rows
TABLE=ROWS   # the table row() adds to
row() { local -n _t=$TABLE; _t+=("| $1 | $2 | $3 | $4 | $5 |"); }

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

# --- 6. FAT images (issue 4) -----------------------------------------------------------------------
# One FAT32 image (sparse, FAT_IMG_MB, default 8 GiB) holding the `files` File-set (10,000 x ~514
# KiB) and the 1 GiB file BIG, read in the same run through a read-only dicomfs mount, through
# fusefat (Debian's FUSE FAT driver), with mtools (`mtype` of every file, one process each: mtype
# takes one file), and as raw bytes of the image (`dd`); the 1 GiB file also against `memfs`, a FUSE
# daemon serving a 1 GiB file from memory (tests/bin/memfs.rs): what a FUSE daemon reaches
# without any I/O bounds what dicomfs reaching a FAT image through its daemon can. Then `cp -r`
# of the 10,000 instances into a fresh image through dicomfs (keeping the DICOMDIR) against
# `mcopy -s` of the same files, and how many of the files each driver sees (fusefat misses the
# directories past 2 GiB of a big image).
#   FAT_IMG_MB   size of the image (default 8192; QUICK: 1024)
#   BIG_MB       size of the big file (default 1024; QUICK: 64)
#   BENCH_FAT    0: skip this section;  BENCH_FAT_ONLY=1: run only this section
FROWS=()
FNOTES=()
CHECK_FAILED=${CHECK_FAILED:-0}
FAT_IMG_MB=${FAT_IMG_MB:-$([[ $QUICK == 1 ]] && echo 1024 || echo 8192)}
FUSEFAT_MNT=$W/mnt-fusefat
MEMFS_MNT=$W/mnt-memfs

fat_umount() { # MOUNTPOINT: unmount a fusefat or memfs mount (and wait for it to go)
    local i
    mountpoint -q "$1" || return 0
    umount "$1" || umount -l "$1"
    for ((i = 0; i < 500; i++)); do mountpoint -q "$1" || return 0; sleep 0.01; done
}
fat_wait_mount() { # MOUNTPOINT
    local i
    for ((i = 0; i < 1000; i++)); do mountpoint -q "$1" && return 0; sleep 0.01; done
    die "$1 did not get mounted"
}

fat_read_files() { find "$1" -type f ! -name BIG -print0 | xargs -0 -r cat >/dev/null; }
fat_warm() { find "$W/files" -type f -print0 | xargs -0 -r cat >/dev/null; sync; }
fat_check_fail() {
    if [[ ${BENCH_KEEP_GOING:-0} == 1 ]]; then
        log "CHECK FAILED: $*"
        FNOTES+=("**Check failed:** $*")
        CHECK_FAILED=1
    else
        die "$* (BENCH_KEEP_GOING=1 lists this in the report and goes on)"
    fi
}

fat_section() {
    local t
    for t in mkfs.fat fsck.fat mcopy mtype fusefat; do
        command -v "$t" >/dev/null || die "$t not found (apt-get install dosfstools mtools fusefat)"
    done
    log "6. building memfs (the in-memory FUSE reference)"
    (cd "$ROOT" && cargo build --release --quiet --example memfs)
    local MEMFS=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/memfs
    export MTOOLS_SKIP_CHECK=1
    local FILES=$W/files SEQ=$W/seq
    local IMG=$W/fat.img stamp=$W/fat.img.stamp want
    want="$FAT_IMG_MB $(cat "$W/files.stamp") $(cat "$W/seq.stamp")"
    if [[ $BENCH_REGEN != 1 && -f $stamp && $(<"$stamp") == "$want" && -f $IMG ]]; then
        log "reusing $IMG"
    else
        log "6. building $IMG: FAT32, $FAT_IMG_MB MiB sparse, with $W/files and BIG (mcopy -s)"
        rm -f "$IMG" "$stamp"
        truncate -s "${FAT_IMG_MB}M" "$IMG"
        mkfs.fat -F 32 -n BENCH "$IMG" >/dev/null
        mcopy -s -m -i "$IMG" "$FILES"/* "$SEQ/BIG" ::/
        fsck.fat -n "$IMG" >/dev/null || die "fsck.fat -n $IMG is not clean after mcopy"
        sync
        echo "$want" >"$stamp"
    fi
    local IMG_MIB NF FMIB BIGB FB FAVG
    IMG_MIB=$(du -m "$IMG" | cut -f1)
    NF=$(find "$FILES" -type f | wc -l)
    FB=$(find "$FILES" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
    FAVG=$(awk -v b="$FB" -v n="$NF" 'BEGIN { printf "%.0f", b / n / 1024 }')
    FMIB=$((FB / 1048576))
    BIGB=$(stat -c %s "$SEQ/BIG")
    local BIGMB_F
    BIGMB_F=$(awk -v b="$BIGB" 'BEGIN { print b / 1e6 }')
    # mtools paths of every file, in the order find lists the host copy.
    local LIST=$W/fat.list
    (cd "$FILES" && find . -type f | sed 's|^\./|::/|') >"$LIST"
    # Where the files lie in the image: their bytes, as one raw range from the first data cluster.
    local DATA_OFF
    DATA_OFF=$(python3 - "$IMG" <<'PY' 2>/dev/null || echo 0
import struct, sys
b = open(sys.argv[1], 'rb').read(512)
bps, spc, res, nf = struct.unpack_from('<H', b, 11)[0], b[13], struct.unpack_from('<H', b, 14)[0], b[16]
fs = struct.unpack_from('<I', b, 36)[0]
print((res + nf * fs) * bps)
PY
)
    local TABLE=FROWS
    log "6a. reading $NF files ($FMIB MiB) and a $BIG_MB MiB file from a FAT32 image ($FAT_IMG_MB MiB, $IMG_MIB MiB allocated), $REPS reps"
    local dfc=() dbc=() dbw=() ffc=() fbc=() mfc=() mbc=() rfc=() rbc=() memc=()
    fat_dicomfs() {
        bench_mount "$IMG"
        drop_caches
        timeit fat_read_files "$MNT"; dfc+=("$T_US")
        drop_caches
        timeit read_seq "$MNT/BIG"; dbc+=("$T_US")
        # The image's bytes are in the page cache now; a fresh mount has none of BIG in its own
        # (FUSE) page cache, so the daemon serves every byte, as memfs does on its first read.
        bench_mount "$IMG"
        timeit read_seq "$MNT/BIG"; dbw+=("$T_US")
        bench_umount "$MNT"
    }
    fat_fusefat() {
        fat_umount "$FUSEFAT_MNT"
        mkdir -p "$FUSEFAT_MNT"
        fusefat -o ro "$IMG" "$FUSEFAT_MNT"
        fat_wait_mount "$FUSEFAT_MNT"
        drop_caches
        timeit fat_read_files "$FUSEFAT_MNT"; ffc+=("$T_US")
        drop_caches
        timeit read_seq "$FUSEFAT_MNT/BIG"; fbc+=("$T_US")
        fat_umount "$FUSEFAT_MNT"
    }
    fat_mtools() {
        drop_caches
        timeit sh -c 'xargs -n 1 mtype -i "$1" <"$2" >/dev/null' sh "$IMG" "$LIST"; mfc+=("$T_US")
        drop_caches
        timeit sh -c 'mtype -i "$1" ::/BIG >/dev/null' sh "$IMG"; mbc+=("$T_US")
    }
    fat_raw() {
        drop_caches
        timeit dd if="$IMG" of=/dev/null bs=1M skip="$((DATA_OFF / 1048576))" count="$((FB / 1048576))" status=none; rfc+=("$T_US")
        drop_caches
        timeit dd if="$IMG" of=/dev/null bs=1M skip="$((DATA_OFF / 1048576))" count="$((BIGB / 1048576))" status=none; rbc+=("$T_US")
    }
    fat_memfs() {
        fat_umount "$MEMFS_MNT"
        mkdir -p "$MEMFS_MNT"
        "$MEMFS" "$MEMFS_MNT" "$((BIGB / 1048576))" &
        fat_wait_mount "$MEMFS_MNT"
        timeit read_seq "$MEMFS_MNT/BIG"; memc+=("$T_US")
        fat_umount "$MEMFS_MNT"
        wait || true
    }
    local i
    for ((i = 0; i < REPS; i++)); do rotate "$i" fat_dicomfs fat_fusefat fat_mtools fat_raw fat_memfs; done
    # --- 6b. large cards: what each driver sees of the image ---
    local seen_d seen_f
    bench_mount "$IMG"
    seen_d=$(find "$MNT" -type f | wc -l)
    bench_umount "$MNT"
    fat_umount "$FUSEFAT_MNT"
    fusefat -o ro "$IMG" "$FUSEFAT_MNT"
    fat_wait_mount "$FUSEFAT_MNT"
    seen_f=$(find "$FUSEFAT_MNT" -type f 2>/dev/null | wc -l)
    fat_umount "$FUSEFAT_MNT"
    local want_n=$((NF + 1))
    FNOTES+=("Files seen on the $FAT_IMG_MB MiB image (\`find -type f\`, $want_n on it, mtools' count): dicomfs $seen_d, fusefat $seen_f.")
    [[ $seen_d == "$want_n" ]] || fat_check_fail "dicomfs shows $seen_d files of $IMG, mtools put $want_n there"

    # fusefat reads only the files it sees (it misses the directories past 2 GiB of a big image):
    # its rate counts those, not the ones it never read.
    local nf_fusefat=$((seen_f - 1))
    # The raw row counts bytes: express it in files/s of the same bytes.
    cmp_row "Read $NF files of ~$FAVG KiB from the image, cold: fusefat (reads the $nf_fusefat it sees) vs dicomfs (\`-o ro\`)" files/s "$nf_fusefat" "$NF" 5 "${ffc[@]}" -- "${dfc[@]}"
    cmp_row "… same: \`mtype\` of every file (one process per file) vs dicomfs" files/s "$NF" "$NF" 0.5 "${mfc[@]}" -- "${dfc[@]}"
    cmp_row "… same: \`dd\` of the image's raw bytes (the same amount, in one run) vs dicomfs" files/s "$NF" "$NF" "" "${rfc[@]}" -- "${dfc[@]}"
    cmp_row "Read the $BIG_MB MiB file from the image, cold: fusefat vs dicomfs" MB/s "$BIGMB_F" "$BIGMB_F" 5 "${fbc[@]}" -- "${dbc[@]}"
    cmp_row "… same: \`mtype ::/BIG\` vs dicomfs" MB/s "$BIGMB_F" "$BIGMB_F" "" "${mbc[@]}" -- "${dbc[@]}"
    cmp_row "… same: \`dd\` of the image's raw bytes vs dicomfs" MB/s "$BIGMB_F" "$BIGMB_F" "" "${rbc[@]}" -- "${dbc[@]}"
    cmp_row "… $BIG_MB MiB from memfs (FUSE, bytes in memory) vs dicomfs, image in the page cache, fresh mount (first read)" MB/s "$BIGMB_F" "$BIGMB_F" 0.8 "${memc[@]}" -- "${dbw[@]}"

    # --- 6c. ingest: cp -r into a fresh image through dicomfs vs mcopy -s ---
    local SRC_DIRS=() d
    for d in "$FILES"/*/; do SRC_DIRS+=("${d%/}"); done
    local NSRC
    NSRC=$(find "${SRC_DIRS[@]}" -type f | wc -l)
    local EMPTY=$W/fat-empty.img WI=$W/w-fat-ingest.img
    rm -f "$EMPTY"
    truncate -s "${FAT_IMG_MB}M" "$EMPTY"
    mkfs.fat -F 32 -n BENCH "$EMPTY" >/dev/null
    log "6c. cp -r of $NSRC files into a fresh FAT32 image through dicomfs vs mcopy -s, $REPS reps"
    local ic=() mc=()
    ingest_dicomfs() {
        local n
        bench_umount "$MNT"
        cp --sparse=always "$EMPTY" "$WI"
        "$BIN" init "$WI" >/dev/null
        fat_warm
        bench_mount_rw "$WI"
        local t0 t1 t2
        t0=$(date +%s%N)
        cp -r "${SRC_DIRS[@]}" "$MNT"/
        t1=$(date +%s%N)
        bench_umount_rw "$MNT"
        t2=$(date +%s%N)
        ic0+=($(((t1 - t0) / 1000)))
        ic+=($(((t2 - t0) / 1000)))
        fsck.fat -n "$WI" >"$W/fat-fsck.log" 2>&1 || fat_check_fail "fsck.fat -n after cp -r through dicomfs is not clean: $(tr '\n' ' ' <"$W/fat-fsck.log")"
        n=$({ "$BIN" ls "$WI" 2>/dev/null || true; } | grep -c '\.dcm' || true)
        [[ $n == "$NSRC" ]] || fat_check_fail "after cp -r of $NSRC files into the FAT image and umount, the DICOMDIR references $n instances"
    }
    # mcopy leaves the image's pages dirty; dicomfs's umount syncs the image. So the first row
    # ends both with the bytes on the disk (mcopy, then an fsync of the image: sync FILE), the
    # second with them in the page cache (mcopy alone; dicomfs until cp returns).
    local mc0=() ic0=()
    ingest_mcopy() {
        local t0 t1 t2
        cp --sparse=always "$EMPTY" "$WI"
        fat_warm
        t0=$(date +%s%N)
        mcopy -s -m -i "$WI" "${SRC_DIRS[@]}" ::/
        t1=$(date +%s%N)
        sync "$WI"
        t2=$(date +%s%N)
        mc0+=($(((t1 - t0) / 1000)))
        mc+=($(((t2 - t0) / 1000)))
    }
    for ((i = 0; i < REPS; i++)); do rotate "$i" ingest_dicomfs ingest_mcopy; done
    rm -f "$WI" "$EMPTY"
    cmp_row "\`cp -r\` of $NSRC files (~$FAVG KiB) into a fresh FAT32 image: \`mcopy -s\` + fsync of the image vs dicomfs (\`cp -r\` + \`umount\`, which syncs the image; DICOMDIR kept)" files/s "$NSRC" "$NSRC" 0.5 "${mc[@]}" -- "${ic[@]}"
    cmp_row "… same, bytes left in the page cache: \`mcopy -s\` alone vs dicomfs until \`cp -r\` returns (the same runs)" files/s "$NSRC" "$NSRC" 0.5 "${mc0[@]}" -- "${ic0[@]}"
}

fat_report() {
    echo "FAT32 image ($FAT_IMG_MB MiB, sparse) holding the same files, in the same run: dicomfs against fusefat, mtools, raw \`dd\` and an in-memory FUSE file system; median of $REPS, ranges in parentheses. The ratio is dicomfs's speed over the reference's."
    echo
    echo "| Benchmark | Reference | dicomfs | Ratio dicomfs/reference | Target |"
    echo "|---|---:|---:|---:|---|"
    printf '%s\n' "${FROWS[@]}"
    if ((${#FNOTES[@]} > 0)); then
        echo
        printf -- '- %s\n' "${FNOTES[@]}"
    fi
}

if [[ ${BENCH_FAT_ONLY:-0} == 1 ]]; then
    fat_section
    fat_report | tee "$W/results-fat.md"
    log "report also written to $W/results-fat.md"
    [[ $CHECK_FAILED == 0 ]] || exit 1
    exit 0
fi

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
    timeit "$BIN" mount -o ro --view both "$META" "$MNT"; cold+=("$T_US")
    bench_umount "$MNT"
    timeit "$BIN" mount -o ro --view both "$META" "$MNT"; warm+=("$T_US")
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

# --- 5. copy-in and delete ----------------------------------------------------------------------------
# Read-write mounts (the default mode). Scratch copies are made under $W/w-* and removed at exit.
TABLE=CROWS
NOTES=() # problems seen on the way that do not stop the run; printed under the table

# A result that fails its check stops the run, unless BENCH_KEEP_GOING=1: then the failure is listed
# under the table and the script exits with status 1 after the report.
CHECK_FAILED=0
check_fail() {
    if [[ ${BENCH_KEEP_GOING:-0} == 1 ]]; then
        log "CHECK FAILED: $*"
        NOTES+=("**Check failed:** $*")
        CHECK_FAILED=1
    else
        die "$* (BENCH_KEEP_GOING=1 lists this in the report and goes on)"
    fi
}

# count_instances DIR -> number of instance records in DIR/DICOMDIR (per `dicomfs ls`)
count_instances() { { "$BIN" ls "$1" 2>/dev/null || true; } | grep -c '\.dcm' || true; }

msf() { awk -v us="$1" 'BEGIN { x = us / 1000; if (x >= 100) printf "%.0f", x; else printf "%.1f", x }'; }
secs() { awk -v us="$1" 'BEGIN { x = us / 1e6; if (x >= 100) printf "%.0f", x; else printf "%.2f", x }'; }
# trange FORMAT US... -> " (fastest–slowest)" as times, or nothing for a single sample
trange() {
    local f=$1
    shift
    (($# > 1)) || return 0
    local lo hi
    lo=$(printf '%s\n' "$@" | sort -n | head -n 1)
    hi=$(printf '%s\n' "$@" | sort -n | tail -n 1)
    printf ' (%s–%s)' "$($f "$lo")" "$($f "$hi")"
}
xratio() { awk -v a="$1" -v b="$2" 'BEGIN { r = a / b; if (r >= 100) printf "%.0f", r; else if (r >= 10) printf "%.1f", r; else printf "%.2f", r }'; }

# lat_row LABEL FORMAT UNIT TARGET_US TARGET_TEXT REF_US... -- DICOMFS_US... : one row from the
# median times; the ratio is reference time / dicomfs time (above 1: dicomfs is faster). No REF_US
# leaves the reference and ratio cells empty; TARGET_US "" means no target.
lat_row() {
    local label=$1 f=$2 unit=$3 target=$4 ttext=$5
    shift 5
    local ref=() d=()
    while [[ $1 != -- ]]; do ref+=("$1"); shift; done
    shift
    d=("$@")
    local dm rm_ refcell="—" rcell="—" ok=""
    dm=$(median "${d[@]}")
    if ((${#ref[@]} > 0)); then
        rm_=$(median "${ref[@]}")
        refcell="$($f "$rm_") $unit$(trange "$f" "${ref[@]}")"
        rcell="$(xratio "$rm_" "$dm")x"
    fi
    [[ -z $target ]] || ok="$ttext: $(met "$dm" "$target")"
    row "$label" "$refcell" "$($f "$dm") $unit$(trange "$f" "${d[@]}")" "$rcell" "$ok"
    log "$label: reference $refcell, dicomfs $($f "$dm") $unit, ratio $rcell"
    log "  samples (ms): reference $(for x in "${ref[@]}"; do msf "$x"; echo -n ' '; done)| dicomfs $(for x in "${d[@]}"; do msf "$x"; echo -n ' '; done)"
}

# sync FILE opens FILE read-only and fsyncs it (coreutils >= 8.24): the fsync of a directory the
# deletes need, without an interpreter's start-up time.
sync "$W" 2>/dev/null || die "sync(1) cannot fsync a directory (coreutils >= 8.24 needed)"
HAVE_DCMMKDIR=0
if command -v dcmmkdir >/dev/null; then HAVE_DCMMKDIR=1; else log "dcmmkdir missing: no DCMTK reference rows"; fi
HAVE_PYDICOM=0
if python3 -c 'import pydicom.fileset' 2>/dev/null; then HAVE_PYDICOM=1; else log "python3 with pydicom missing: no pydicom reference row"; fi
rm -rf "${W:?}"/w-*

# --- 5a. cp -r into a new File-set ---
SRC_DIRS=()
for d in "$FILES"/*/; do SRC_DIRS+=("${d%/}"); done
NSRC=$(find "${SRC_DIRS[@]}" -type f | wc -l)
SRC_MIB=$(find "${SRC_DIRS[@]}" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s / 1048576}')
n=$(count_instances "$FILES")
[[ $n == "$NSRC" ]] || die "$FILES: the DICOMDIR references $n instances, the patient directories hold $NSRC files"
CPFS=$W/w-cp-fileset # new File-set, mounted
CPDIR=$W/w-cp-dir     # plain directory
log "5a. cp -r of ${#SRC_DIRS[@]} patient directories ($NSRC files, $SRC_MIB MiB) into a new File-set and into a directory, $REPS reps"
cpn=() cpns=() cpm=() cpms=() cpu=()
CP_SRC=("${SRC_DIRS[@]}")
# ext4 skips inodes freed in the last 60 s when it allocates new ones (recently_deleted), and
# each repetition deletes the previous one's 10,000 files just before: whichever copy lands
# in those inode groups pays for it. So each copy waits until the deletes are 61 s old.
settle() { sync; sleep "$BENCH_SETTLE"; }
cp_warm() { read_tree "$FILES"; sync; } # the source in the page cache, nothing dirty left
cp_native() {
    local t0 t1 t2
    rm -rf "$CPDIR"
    mkdir -p "$CPDIR"
    settle
    cp_warm
    t0=$(date +%s%N)
    cp -r "${CP_SRC[@]}" "$CPDIR"/
    t1=$(date +%s%N)
    sync
    t2=$(date +%s%N)
    cpn+=($(((t1 - t0) / 1000)))
    cpns+=($(((t2 - t0) / 1000)))
}
cp_mount() {
    local t0 t1 t2 n
    bench_umount "$MNT"
    rm -rf "$CPFS"
    mkdir -p "$CPFS"
    settle
    "$BIN" init "$CPFS" >/dev/null
    bench_mount_rw "$CPFS"
    cp_warm
    t0=$(date +%s%N)
    cp -r "${CP_SRC[@]}" "$MNT"/
    t1=$(date +%s%N)
    sync
    t2=$(date +%s%N)
    cpm+=($(((t1 - t0) / 1000)))
    cpms+=($(((t2 - t0) / 1000)))
    timeit bench_umount_rw "$MNT"; cpu+=("$T_US")
    n=$(count_instances "$CPFS")
    [[ $n == "$NSRC" ]] || check_fail "after \`cp -r\` of $NSRC files into the mount (exit status 0) and umount, the DICOMDIR references $n instances (run $((${#cpm[@]})))"
    if [[ -e $CPFS/DICOMFS.TMP ]]; then
        NOTES+=("After \`cp -r\` and a clean umount, \`$CPFS/DICOMFS.TMP\` was still there.")
        log "warning: $CPFS/DICOMFS.TMP left after a clean umount"
    fi
}
for ((i = 0; i < REPS; i++)); do rotate "$i" cp_native cp_mount; done
cmp_row "\`cp -r\` of $NSRC files of ~$FAVG_KIB KiB ($SRC_MIB MiB) into a new File-set (\`dicomfs init\` + mount) vs into a directory, source in the page cache: until \`cp\` returns" files/s "$NSRC" "$NSRC" 0.7 "${cpn[@]}" -- "${cpm[@]}"
cmp_row "… same, \`cp -r\` + \`sync\`" files/s "$NSRC" "$NSRC" 0.7 "${cpns[@]}" -- "${cpms[@]}"
lat_row "… then \`umount\` of the File-set until the daemon has exited" secs s "" "" -- "${cpu[@]}"
# The same with the source on another file system (a tmpfs), as when copying from a CD, a
# network share or another disk. With the source on the same file system as the directory, cp
# copies each file inside the kernel (copy_file_range); into any other file system, a FUSE
# mount or a real USB stick alike, it must read and write.
if [[ ${BENCH_CP_TMPFS:-1} == 1 ]]; then
    XSRC=$W/w-src-tmpfs
    mkdir -p "$XSRC"
    mount -t tmpfs -o size=$((SRC_MIB + 512))m tmpfs "$XSRC"
    cp -r "${SRC_DIRS[@]}" "$XSRC"/
    CP_SRC=()
    for d in "$XSRC"/*/; do CP_SRC+=("${d%/}"); done
    cp_warm() { sync; }
    cpn=() cpns=() cpm=() cpms=() cpu=()
    log "5a'. the same cp -r with the source on a tmpfs, $REPS reps"
    for ((i = 0; i < REPS; i++)); do rotate "$i" cp_native cp_mount; done
    umount "$XSRC"
    cmp_row "… same, source on another file system (tmpfs): until \`cp\` returns" files/s "$NSRC" "$NSRC" 0.7 "${cpn[@]}" -- "${cpm[@]}"
    cmp_row "… same, source on tmpfs, \`cp -r\` + \`sync\`" files/s "$NSRC" "$NSRC" 0.7 "${cpns[@]}" -- "${cpms[@]}"
fi
rm -rf "$CPFS"
# The last native copy (the instance files, no DICOMDIR) is the input of 5d.
RB=$W/w-rebuild
mv "$CPDIR" "$RB"

# --- 5b. add one instance at ~100,000 records ---
mapfile -t ADD_FILES < <(find "$W/new" -mindepth 2 -type f | sort)
((${#ADD_FILES[@]} == N_ADD)) || die "$W/new holds ${#ADD_FILES[@]} instance files, not $N_ADD"
ADD_KIB=$(stat -c %s "${ADD_FILES[0]}" | awk '{printf "%.0f", $1 / 1024}')
META_INST=$(count_instances "$META")
ADDFS=$W/w-add-fileset # a copy of META's DICOMDIR, mounted
ADDDIR=$W/w-add-dir    # plain directory
log "5b. adding $N_ADD instances one by one to a File-set of $RECORDS records ($META_INST instances)"
rm -rf "$ADDFS" "$ADDDIR"
mkdir -p "$ADDFS" "$ADDDIR"
cp "$META/DICOMDIR" "$ADDFS/"
bench_mount_rw "$ADDFS"
cat "${ADD_FILES[@]}" >/dev/null
sync
an=() am=()
# (idx, not k or i: rotate's locals would shadow those in the functions it calls)
add_native() { timeit cp "${ADD_FILES[idx]}" "$ADDDIR/x_$idx.dcm"; an+=("$T_US"); }
add_mount() { timeit cp "${ADD_FILES[idx]}" "$MNT/x_$idx.dcm"; am+=("$T_US"); }
for ((idx = 0; idx < N_ADD; idx++)); do rotate "$idx" add_native add_mount; done

# --- 5c. delete one instance at ~100,000 records, on the same mount ---
# META has no instance files, so the files on the medium are the ones just added.
mapfile -t ADDED < <(find "$ADDFS" -path "$ADDFS/DICOMFS.TMP" -prune -o -type f ! -name DICOMDIR -printf '%P\n' | sort)
((${#ADDED[@]} == N_ADD)) || check_fail "after $N_ADD \`cp\` into the mount (exit status 0), the File-set directory holds ${#ADDED[@]} instance files"
((N_DEL <= ${#ADDED[@]})) || die "not enough added instances to delete $N_DEL"
log "5c. deleting $N_DEL of them one by one (rm + fsync of the mount root)"
dn=() dm=()
rm_fsync() { rm "$1" && sync "$2"; } # FILE DIR
del_native() { timeit rm_fsync "$ADDDIR/x_$idx.dcm" "$ADDDIR"; dn+=("$T_US"); }
del_mount() {
    local before after
    before=$(stat -c '%i %s %.9Y' "$ADDFS/DICOMDIR")
    timeit rm_fsync "$MNT/${ADDED[idx]}" "$MNT"; dm+=("$T_US")
    after=$(stat -c '%i %s %.9Y' "$ADDFS/DICOMDIR")
    [[ ! -e $ADDFS/${ADDED[idx]} ]] || check_fail "$ADDFS/${ADDED[idx]} is still there after \`rm\` of it in the mount"
    [[ $after != "$before" ]] || check_fail "the DICOMDIR was not rewritten by the time fsync of the mount root returned (\`rm ${ADDED[idx]}\`)"
}
for ((idx = 0; idx < N_DEL; idx++)); do rotate "$idx" del_native del_mount; done
# The same adds and deletes inside one process (open + write + close of each file; unlink +
# fsync of the root), so that starting `cp` and `rm` (about 5 ms each here) is not counted.
log "5b'/5c'. $N_ADD more adds and $N_DEL deletes, each inside one process"
mapfile -t ADD2_FILES < <(find "$W/new2" -mindepth 2 -type f | sort)
ian=() iam=() idn=() idm=()
while read -r what vals; do
    read -r -a v <<<"$vals"
    case $what in
    an) ian=("${v[@]}") ;; am) iam=("${v[@]}") ;; dn) idn=("${v[@]}") ;; dm) idm=("${v[@]}") ;;
    esac
done < <(python3 - "$MNT" "$ADDDIR" "$ADDFS" "$N_DEL" "${ADD2_FILES[@]}" <<'PY'
import os, sys, time
mnt, plain, backing, ndel, files = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
data = [open(f, "rb").read() for f in files]
def on_medium():
    out = set()
    for d, subs, fs in os.walk(backing):
        subs[:] = [s for s in subs if s != "DICOMFS.TMP"]
        out |= {os.path.relpath(os.path.join(d, f), backing) for f in fs if f != "DICOMDIR"}
    return out
def us(f):
    t = time.perf_counter(); f(); return int((time.perf_counter() - t) * 1e6)
def add(dst, d):
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644); os.write(fd, d); os.close(fd)
def rm(path, root):
    os.unlink(path); fd = os.open(root, os.O_RDONLY); os.fsync(fd); os.close(fd)
before = on_medium()
r = {"an": [], "am": [], "dn": [], "dm": []}
for i, d in enumerate(data):
    jobs = [("an", f"{plain}/y_{i}.dcm"), ("am", f"{mnt}/y_{i}.dcm")]
    for k, dst in (jobs if i % 2 == 0 else jobs[::-1]):
        r[k].append(us(lambda: add(dst, d)))
added = sorted(on_medium() - before)
assert len(added) == len(data), f"{len(added)} new files on the medium after {len(data)} adds"
for i in range(ndel):
    jobs = [("dn", f"{plain}/y_{i}.dcm", plain), ("dm", f"{mnt}/{added[i]}", mnt)]
    for k, path, root in (jobs if i % 2 == 0 else jobs[::-1]):
        r[k].append(us(lambda: rm(path, root)))
    assert not os.path.exists(os.path.join(backing, added[i])), added[i]
for k, v in r.items():
    print(k, *v)
PY
)
((${#iam[@]} == N_ADD && ${#idm[@]} == N_DEL)) || check_fail "the in-process adds and deletes did not all run"
bench_umount_rw "$MNT"
n=$(count_instances "$ADDFS")
[[ $n == $((META_INST + 2 * (${#ADDED[@]} - N_DEL))) ]] ||
    check_fail "after 2 x ${#ADDED[@]} adds and 2 x $N_DEL deletes and umount, the DICOMDIR references $n instances, not $META_INST + 2 x (${#ADDED[@]} - $N_DEL)"
if [[ -e $ADDFS/DICOMFS.TMP ]]; then
    NOTES+=("After the adds and deletes and a clean umount, \`$ADDFS/DICOMFS.TMP\` was still there.")
    log "warning: $ADDFS/DICOMFS.TMP left after a clean umount"
fi
rm -rf "$ADDFS" "$ADDDIR"

# dcmmkdir +A: append one file (placed under a File ID path first) to a copy of the same DICOMDIR.
dk=()
if [[ $HAVE_DCMMKDIR == 1 ]]; then
    DKDIR=$W/w-dcmtk-add
    log "5b. dcmmkdir +A of one file to a copy of the $RECORDS-record DICOMDIR, $DCMTK_REPS reps"
    for ((k = 0; k < DCMTK_REPS; k++)); do
        fid=ADDED/I$(printf %07d $((k + 1)))
        rm -rf "$DKDIR"
        mkdir -p "$DKDIR/ADDED"
        cp "$META/DICOMDIR" "$DKDIR/"
        cp "${ADD_FILES[k % N_ADD]}" "$DKDIR/$fid"
        sync
        timeit sh -c 'cd "$1" && exec dcmmkdir +A +id . +D DICOMDIR "$2" >>"$3" 2>&1' sh "$DKDIR" "$fid" "$W/dcmmkdir.log"
        dk+=("$T_US")
        n=$(count_instances "$DKDIR")
        [[ $n == $((META_INST + 1)) ]] || check_fail "after \`dcmmkdir +A\`, the DICOMDIR references $n instances, not $((META_INST + 1)) (see $W/dcmmkdir.log)"
    done
    rm -rf "$DKDIR"
fi

# pydicom: FileSet(DICOMDIR), add(FILE), write(), on the smaller File-set with files, once.
PY_CELL="—" PY_RATIO="—" PY_RECORDS=""
if [[ $HAVE_PYDICOM == 1 ]]; then
    PYFS=$W/w-pydicom
    PY_RECORDS=$(sed -n 's/.* \([0-9]*\) records.*/\1/p' "$W/pyfs.demo.txt")
    PY_INST=$(count_instances "$W/pyfs")
    log "5b. pydicom FileSet load + add + write on $PY_RECORDS records, once (stopped after $PY_TIMEOUT s)"
    rm -rf "$PYFS"
    cp -r "$W/pyfs" "$PYFS"
    sync
    PY_RC=0
    py_add() {
        timeout "$PY_TIMEOUT" python3 -c '
import sys
from pydicom.fileset import FileSet
fs = FileSet(sys.argv[1])
fs.add(sys.argv[2])
fs.write()
print(len(fs))
' "$PYFS/DICOMDIR" "${ADD_FILES[0]}" >"$W/pydicom.out" 2>"$W/pydicom.err" || PY_RC=$?
    }
    timeit py_add
    if [[ $PY_RC == 124 ]]; then
        PY_CELL="> $PY_TIMEOUT s"
        PY_RATIO="> $(xratio "$((PY_TIMEOUT * 1000000))" "$(median "${am[@]}")")x"
        log "pydicom: stopped after $PY_TIMEOUT s"
    elif [[ $PY_RC != 0 ]]; then
        die "pydicom FileSet add failed with exit status $PY_RC (see $W/pydicom.err)"
    else
        [[ $(tail -n 1 "$W/pydicom.out") == $((PY_INST + 1)) ]] ||
            check_fail "pydicom's File-set holds $(tail -n 1 "$W/pydicom.out") instances after the add, not $((PY_INST + 1))"
        PY_CELL="$(secs "$T_US") s"
        PY_RATIO="$(xratio "$T_US" "$(median "${am[@]}")")x"
        log "pydicom: $(secs "$T_US") s"
    fi
    rm -rf "$PYFS"
fi

lat_row "Add 1 instance of $ADD_KIB KiB (\`cp FILE MNT/x.dcm\`) to a File-set of $RECORDS records, source in the page cache; native: \`cp\` into a directory" msf ms 5000 "< 5 ms" "${an[@]}" -- "${am[@]}"
if [[ $HAVE_DCMMKDIR == 1 ]]; then
    lat_row "… reference: \`dcmmkdir +A\` of one file to a copy of the same DICOMDIR" msf ms "" "" "${dk[@]}" -- "${am[@]}"
fi
if [[ $HAVE_PYDICOM == 1 ]]; then
    row "… reference: pydicom \`FileSet\` load + \`add\` + \`write\`, File-set of $PY_RECORDS records (with files), once" "$PY_CELL" "$(msf "$(median "${am[@]}")") ms (at $RECORDS records)" "$PY_RATIO" ""
fi
lat_row "Delete 1 instance (\`rm\` + fsync of the mount root) at $RECORDS records; native: \`rm\` + fsync of the directory" msf ms 100000 "< 100 ms" "${dn[@]}" -- "${dm[@]}"
lat_row "Add 1 instance of $ADD_KIB KiB at $RECORDS records inside one process (open + write + close); native: the same into a directory" msf ms 5000 "< 5 ms" "${ian[@]}" -- "${iam[@]}"
lat_row "Delete 1 instance at $RECORDS records inside one process (unlink + fsync of the mount root); native: the same in a directory" msf ms 100000 "< 100 ms" "${idn[@]}" -- "${idm[@]}"

# --- 5d. rebuild a DICOMDIR for the files vs dcmmkdir +r ---
log "5d. dicomfs rebuild vs dcmmkdir +r over $NSRC files, $REPS reps"
rbc=() rbw=() dkc=() dkw=()
rb_check() { # WHO
    local n
    n=$(count_instances "$RB")
    [[ $n == "$NSRC" ]] || check_fail "the DICOMDIR written by $1 references $n instances, not $NSRC"
}
rb_dicomfs_run() { "$BIN" rebuild "$RB" >>"$W/rebuild.log" 2>&1; }
rb_dcmtk_run() { (cd "$RB" && dcmmkdir +r +id . +D DICOMDIR >>"$W/dcmmkdir.log" 2>&1); }
rb_dicomfs() {
    rm -f "$RB"/DICOMDIR*
    drop_caches
    timeit rb_dicomfs_run; rbc+=("$T_US")
    rb_check "dicomfs rebuild"
    rm -f "$RB"/DICOMDIR*
    sync
    timeit rb_dicomfs_run; rbw+=("$T_US")
    rb_check "dicomfs rebuild"
}
rb_dcmtk() {
    rm -f "$RB"/DICOMDIR*
    drop_caches
    timeit rb_dcmtk_run; dkc+=("$T_US")
    rb_check "dcmmkdir +r"
    rm -f "$RB"/DICOMDIR*
    sync
    timeit rb_dcmtk_run; dkw+=("$T_US")
    rb_check "dcmmkdir +r"
}
if [[ $HAVE_DCMMKDIR == 1 ]]; then
    for ((i = 0; i < REPS; i++)); do rotate "$i" rb_dicomfs rb_dcmtk; done
else
    for ((i = 0; i < REPS; i++)); do rb_dicomfs; done
fi
lat_row "\`dicomfs rebuild\` of $NSRC files (no DICOMDIR) vs \`dcmmkdir +r +id . +D DICOMDIR\`, cold" secs s "" "" "${dkc[@]}" -- "${rbc[@]}"
lat_row "… same, warm" secs s "" "" "${dkw[@]}" -- "${rbw[@]}"
rm -rf "$RB"
TABLE=ROWS

if [[ ${BENCH_FAT:-1} != 0 ]]; then fat_section; fi

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
    echo
    echo "Copy-in and delete: read-write \`dicomfs mount\` (the default) against a directory on the same file system (native) or DCMTK / pydicom (reference), in the same run. Median of $REPS for \`cp -r\` and rebuild, of $N_ADD adds, $N_DEL deletes and $DCMTK_REPS \`dcmmkdir +A\` runs, with the range in parentheses. The ratio is dicomfs's speed over the native or reference speed (above 1: dicomfs is faster)."
    echo
    echo "| Benchmark | Native / reference | dicomfs | Ratio dicomfs/reference | Target |"
    echo "|---|---:|---:|---:|---|"
    printf '%s\n' "${CROWS[@]}"
    if ((${#NOTES[@]} > 0)); then
        echo
        printf -- '- %s\n' "${NOTES[@]}"
    fi
    if ((${#FROWS[@]} > 0)); then
        echo
        fat_report
    fi
} | tee "$W/results.md"
log "report also written to $W/results.md"
if [[ $CHECK_FAILED == 1 ]]; then
    log "some checks failed (listed under the last table)"
    exit 1
fi

//! dicomfs as a filesystem driver: the mount(2) call that makes a `fuse.dicomfs` mount, the
//! `mount.fuse.dicomfs` / `umount.fuse.dicomfs` helpers that mount(8) and umount(8) run
//! (dispatched on argv[0]), unmounting on a signal, and the lock that keeps a SOURCE to one
//! writer.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The filesystem type in /proc/mounts and fstab.
pub const FSTYPE: &str = "fuse.dicomfs";

/// What the program was called as.
#[derive(Debug, PartialEq, Eq)]
pub enum Personality {
    Dicomfs,
    /// `mount.fuse.dicomfs` or `mount.dicomfs`, run by mount(8).
    MountHelper,
    /// `umount.fuse.dicomfs` or `umount.dicomfs`, run by umount(8).
    UmountHelper,
}

pub fn personality(argv0: &OsStr) -> Personality {
    let name = Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    match name.as_str() {
        "mount.fuse.dicomfs" | "mount.dicomfs" | "mount.fuse3.dicomfs" => Personality::MountHelper,
        "umount.fuse.dicomfs" | "umount.dicomfs" | "umount.fuse3.dicomfs" => {
            Personality::UmountHelper
        }
        _ => Personality::Dicomfs,
    }
}

/// mount(8) runs `mount.fuse.dicomfs SOURCE DIR [-sfnv] [-N ns] [-o options] [-t type]`; this
/// gives the equivalent `dicomfs mount -o options SOURCE DIR` arguments (after the program
/// name), or `None` for `-f` (a fake mount: do nothing).
pub fn helper_args(args: &[OsString]) -> Result<Option<Vec<OsString>>, String> {
    let mut pos = Vec::new();
    let mut opts: Vec<OsString> = Vec::new();
    let mut fake = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "-o" {
            opts.push(it.next().ok_or("-o needs a value")?.clone());
        } else if let Some(o) = s.strip_prefix("-o") {
            opts.push(o.into());
        } else if s == "-t" || s == "-N" {
            // The type is ours; mount namespaces are not supported.
            let v = it.next().ok_or(format!("{s} needs a value"))?;
            if s == "-N" {
                return Err(format!(
                    "-N {}: mount namespaces are not supported",
                    v.to_string_lossy()
                ));
            }
        } else if s.len() > 1 && s.starts_with('-') {
            for c in s[1..].chars() {
                match c {
                    'f' => fake = true,
                    // sloppy, no mtab, verbose: nothing to do differently.
                    's' | 'n' | 'v' => {}
                    _ => return Err(format!("unknown helper flag -{c}")),
                }
            }
        } else {
            pos.push(a.clone());
        }
    }
    let [source, dir] = <[OsString; 2]>::try_from(pos)
        .map_err(|p| format!("expected SOURCE and DIR, got {} arguments", p.len()))?;
    if fake {
        return Ok(None);
    }
    let mut out: Vec<OsString> = vec!["mount".into()];
    for o in opts {
        out.push("-o".into());
        out.push(o);
    }
    out.push(source);
    out.push(dir);
    Ok(Some(out))
}

/// Flags for mount(2) from the generic mount options of fstab and mount(8) (`nosuid`, `noexec`,
/// ...). FUSE mounts are nosuid and nodev unless `suid` / `dev` say otherwise.
#[derive(Clone, Copy, Debug)]
pub struct MsFlags(pub libc::c_ulong);

impl Default for MsFlags {
    fn default() -> Self {
        MsFlags(libc::MS_NOSUID | libc::MS_NODEV)
    }
}

impl MsFlags {
    /// Apply one generic option; false if `o` is not one.
    pub fn apply(&mut self, o: &str) -> bool {
        let (set, clear) = match o {
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "noatime" => (libc::MS_NOATIME, libc::MS_RELATIME | libc::MS_STRICTATIME),
            "relatime" => (libc::MS_RELATIME, libc::MS_NOATIME | libc::MS_STRICTATIME),
            "strictatime" => (libc::MS_STRICTATIME, libc::MS_NOATIME | libc::MS_RELATIME),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "lazytime" => (libc::MS_LAZYTIME, 0),
            "nolazytime" => (0, libc::MS_LAZYTIME),
            _ => return false,
        };
        self.0 = (self.0 | set) & !clear;
        true
    }
}

/// Options of fstab and mount(8) that are for mount(8) itself (or for other programs): accepted
/// and ignored.
pub fn is_userspace_option(o: &str) -> bool {
    matches!(
        o,
        "defaults"
            | "auto"
            | "noauto"
            | "nofail"
            | "user"
            | "nouser"
            | "users"
            | "owner"
            | "group"
            | "_netdev"
            | "loud"
            | "silent"
    ) || o.starts_with("x-")
        || o.starts_with("comment=")
        || o.starts_with("user=")
}

fn cstr(p: &[u8]) -> io::Result<CString> {
    CString::new(p).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// Mount a FUSE filesystem of type `fuse.dicomfs` on `mountpoint` ourselves (needs
/// CAP_SYS_ADMIN), returning the /dev/fuse descriptor the session reads.
pub fn mount_fuse(
    source: &str,
    mountpoint: &Path,
    read_only: bool,
    allow_other: bool,
    flags: MsFlags,
) -> io::Result<OwnedFd> {
    let meta = std::fs::metadata(mountpoint)?;
    if !meta.is_dir() {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    let dev = cstr(b"/dev/fuse")?;
    // SAFETY: dev is a valid C string; the returned fd is checked below.
    let fd = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid}",
        fd.as_raw_fd()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let mut ms = flags.0;
    if read_only {
        ms |= libc::MS_RDONLY;
    }
    let src = cstr(source.as_bytes())?;
    let target = cstr(mountpoint.as_os_str().as_bytes())?;
    let fstype = cstr(FSTYPE.as_bytes())?;
    let data = cstr(data.as_bytes())?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            ms,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// How an unmount went.
#[derive(Debug, PartialEq, Eq)]
pub enum Unmounted {
    /// Gone.
    Clean,
    /// Files were open on it: it was detached (`umount -l`), and ends when they are closed.
    Detached,
}

fn umount2(mp: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = cstr(mp.as_os_str().as_bytes())?;
    // SAFETY: c is a valid C string.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fusermount_u(mp: &Path, lazy: bool) -> io::Result<()> {
    let st = std::process::Command::new("fusermount3")
        .arg(if lazy { "-uz" } else { "-u" })
        .arg(mp)
        .stderr(std::process::Stdio::null())
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::EBUSY))
    }
}

/// Unmount `mp`; if it is busy, detach it. Without privileges, through `fusermount3 -u`.
pub fn unmount(mp: &Path) -> io::Result<Unmounted> {
    match umount2(mp, 0) {
        Ok(()) => Ok(Unmounted::Clean),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            umount2(mp, libc::MNT_DETACH).map(|_| Unmounted::Detached)
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => match fusermount_u(mp, false) {
            Ok(()) => Ok(Unmounted::Clean),
            Err(_) => fusermount_u(mp, true).map(|_| Unmounted::Detached),
        },
        Err(e) => Err(e),
    }
}

/// The FUSE connection number of the mount on `mp` (its directory under
/// /sys/fs/fuse/connections: the kernel's device number), from mountinfo, so that nothing
/// asks the daemon.
pub fn connection_of(mp: &Path) -> Option<u64> {
    let m = mounts().into_iter().rev().find(|m| m.mountpoint == mp)?;
    Some((m.dev.0 << 20) | m.dev.1)
}

/// Abort a FUSE connection (every request fails, the session ends). Needs the fusectl
/// filesystem on /sys/fs/fuse/connections.
pub fn abort_connection(conn: u64) -> io::Result<()> {
    std::fs::write(format!("/sys/fs/fuse/connections/{conn}/abort"), "1")
}

/// libmount's table of user-space mount options. umount(8) finds the type of an absolute
/// mount point with statfs(2), which says only "fuse", unless the mount has an entry here;
/// with one, it reads mountinfo (type fuse.dicomfs) and runs umount.fuse.dicomfs.
const UTAB: &str = "/run/mount/utab";

fn mangle(s: &str) -> String {
    s.replace('\\', "\\134")
        .replace(' ', "\\040")
        .replace('\t', "\\011")
        .replace('\n', "\\012")
}

/// Run `f` on utab's lines under libmount's lock, writing back what it returns.
fn with_utab(f: impl FnOnce(Vec<String>) -> Vec<String>) -> io::Result<()> {
    std::fs::create_dir_all("/run/mount")?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{UTAB}.lock"))?;
    // SAFETY: lock is an open file.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let text = std::fs::read_to_string(UTAB).unwrap_or_default();
    let lines = f(text.lines().map(str::to_string).collect());
    let tmp = format!("{UTAB}.dicomfs.{}", std::process::id());
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    std::fs::write(&tmp, out)?;
    std::fs::rename(&tmp, UTAB)
}

/// Record the mount on `mp` in utab (so that `umount MP` runs umount.fuse.dicomfs); returns its
/// mount ID, to remove the entry with [`utab_remove`].
pub fn utab_add(mp: &Path) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let (id, src) = text
        .lines()
        .rev()
        .find_map(|l| {
            let m = parse_mountinfo(l).pop()?;
            (m.mountpoint == mp && m.fstype == FSTYPE)
                .then(|| Some((l.split(' ').next()?.parse::<u64>().ok()?, m.source)))?
        })
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in mountinfo"))?;
    let line = format!(
        "ID={id} SRC={} TARGET={} ROOT=/ OPTS=uhelper=dicomfs",
        mangle(&src),
        mangle(&mp.to_string_lossy())
    );
    let prefix = format!("ID={id} ");
    with_utab(|mut lines| {
        lines.retain(|l| !l.starts_with(&prefix));
        lines.push(line);
        lines
    })?;
    Ok(id)
}

/// Remove the utab entry of mount `id`.
pub fn utab_remove(id: u64) {
    let prefix = format!("ID={id} ");
    let _ = with_utab(|mut lines| {
        lines.retain(|l| !l.starts_with(&prefix));
        lines
    });
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountInfo {
    /// major, minor
    pub dev: (u64, u64),
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
    pub read_only: bool,
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(" - ")?;
            let a: Vec<&str> = a.split(' ').collect();
            let b: Vec<&str> = b.split(' ').collect();
            let (major, minor) = a.get(2)?.split_once(':')?;
            Some(MountInfo {
                dev: (major.parse().ok()?, minor.parse().ok()?),
                mountpoint: PathBuf::from(unescape(a.get(4)?)),
                read_only: a.get(5)?.split(',').any(|o| o == "ro"),
                fstype: b.first()?.to_string(),
                source: unescape(b.get(1)?),
            })
        })
        .collect()
}

pub fn mounts() -> Vec<MountInfo> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// The absolute spelling of SOURCE, as a mount's source.
pub fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Take the lock that keeps SOURCE to one writable mount or command: exclusive for a writer,
/// shared for a read-only mount. Held until the returned file is closed (at exit).
pub fn lock_source(source: &Path, exclusive: bool) -> Result<File, String> {
    let f = File::open(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: f is an open file.
    if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(f);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        // A filesystem without flock: nothing to protect with.
        return Ok(f);
    }
    let abs = absolute(source);
    let on = mounts()
        .into_iter()
        .filter(|m| m.fstype.starts_with("fuse") && Path::new(&m.source) == abs)
        .map(|m| m.mountpoint.display().to_string())
        .collect::<Vec<_>>();
    Err(if on.is_empty() {
        format!(
            "{}: in use by another dicomfs (a mount or a rebuild, init or check --repair); \
             not opening it twice",
            source.display()
        )
    } else {
        format!(
            "{}: already mounted on {}; unmount it first (a File-set has one writer at a time)",
            source.display(),
            on.join(", ")
        )
    })
}

/// Wait until nobody holds SOURCE's lock (the daemon of a mount has exited), up to `limit`.
pub fn wait_unlocked(source: &File, limit: Duration) -> bool {
    let t = Instant::now();
    loop {
        // SAFETY: source is an open file.
        if unsafe { libc::flock(source.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            // SAFETY: as above.
            unsafe { libc::flock(source.as_raw_fd(), libc::LOCK_UN) };
            return true;
        }
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `umount.fuse.dicomfs DIR [-flnrv] [-N ns] [-t type]`, run by umount(8): unmount, then wait
/// for the daemon to have written everything and exited, so that the medium is final when
/// umount returns.
pub fn umount_helper(args: &[OsString]) -> ExitCode {
    let mut dir = None;
    let (mut lazy, mut force, mut verbose) = (false, false, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "-t" || s == "-N" {
            it.next();
        } else if s.len() > 1 && s.starts_with('-') {
            for c in s[1..].chars() {
                match c {
                    'l' => lazy = true,
                    'f' => force = true,
                    'v' => verbose = true,
                    _ => {}
                }
            }
        } else {
            dir = Some(PathBuf::from(a));
        }
    }
    let Some(dir) = dir else {
        eprintln!("umount.fuse.dicomfs: usage: umount.fuse.dicomfs DIR [-flnrv]");
        return ExitCode::from(1);
    };
    // Do not stat into the mount (a dead daemon answers ENOTCONN): match the path as given,
    // made absolute against the working directory.
    let abs = if dir.is_absolute() {
        dir.clone()
    } else {
        std::env::current_dir()
            .map(|c| c.join(&dir))
            .unwrap_or(dir.clone())
    };
    let entry = mounts()
        .into_iter()
        .rev()
        .find(|m| m.mountpoint == abs || m.mountpoint == absolute(&dir));
    // The daemon of a writable mount holds the lock on SOURCE until it has finished.
    let source = entry
        .as_ref()
        .filter(|m| !m.read_only && !lazy)
        .and_then(|m| File::open(&m.source).ok());
    let flags = if lazy { libc::MNT_DETACH } else { 0 } | if force { libc::MNT_FORCE } else { 0 };
    let target = entry.as_ref().map(|m| m.mountpoint.clone()).unwrap_or(abs);
    if let Err(e) = umount2(&target, flags) {
        let e = if e.raw_os_error() == Some(libc::EPERM) {
            fusermount_u(&target, lazy).map_err(|_| e)
        } else {
            Err(e)
        };
        if let Err(e) = e {
            eprintln!("umount: {}: {e}", target.display());
            return ExitCode::from(32);
        }
    }
    if let Some(src) = source {
        if verbose {
            eprintln!(
                "umount: {}: waiting for dicomfs to finish",
                target.display()
            );
        }
        if !wait_unlocked(&src, Duration::from_secs(60)) {
            eprintln!(
                "umount: {}: unmounted, but dicomfs is still writing to the medium after 60 s",
                target.display()
            );
        }
    }
    if verbose {
        eprintln!("umount: {} unmounted", target.display());
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn helper_arguments() {
        assert_eq!(
            personality(OsStr::new("/sbin/mount.fuse.dicomfs")),
            Personality::MountHelper
        );
        assert_eq!(personality(OsStr::new("dicomfs")), Personality::Dicomfs);
        assert_eq!(
            helper_args(&os(&[
                "/src",
                "/mnt",
                "-n",
                "-o",
                "ro,view=dcm",
                "-t",
                "fuse.dicomfs"
            ]))
            .unwrap()
            .unwrap(),
            os(&["mount", "-o", "ro,view=dcm", "/src", "/mnt"])
        );
        assert_eq!(helper_args(&os(&["/src", "/mnt", "-fv"])).unwrap(), None);
        assert!(helper_args(&os(&["/src"])).is_err());
        assert!(helper_args(&os(&["/src", "/mnt", "-x"])).is_err());
    }

    #[test]
    fn mountinfo() {
        let t = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.dicomfs /src/x\\040y rw,user_id=0\n\
                 37 35 98:0 / /mnt/c ro,nosuid - ext4 /dev/sda1 ro\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mountpoint, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].source, "/src/x y");
        assert_eq!(m[0].fstype, "fuse.dicomfs");
        assert_eq!(m[0].dev, (98, 0));
        assert!(!m[0].read_only);
        assert!(m[1].read_only);
    }

    #[test]
    fn flags() {
        let mut f = MsFlags::default();
        assert!(f.apply("noexec"));
        assert!(f.apply("suid"));
        assert!(!f.apply("view=dcm"));
        assert_eq!(f.0, libc::MS_NODEV | libc::MS_NOEXEC);
        assert!(is_userspace_option("noauto"));
        assert!(is_userspace_option("x-systemd.automount"));
        assert!(!is_userspace_option("ro"));
    }
}

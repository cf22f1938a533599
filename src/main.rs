//! The `dicomfs` command: mount a File-set, list it, check it, make a demo one.

mod info;
#[path = "log.rs"]
mod logsink;
mod mount;
mod progress;

use clap::{Parser, Subcommand};
use dicomfs::dicomdir::Severity;
use dicomfs::fileset::FileSet;
use dicomfs::fsu::{Live, Profile};
use dicomfs::fuse::FuseFs;
use dicomfs::vfs::{self, Options, Vfs, View};
use dicomfs::{synth, Error};
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "dicomfs",
    version,
    about = "Mount a DICOM File-set (DICOMDIR + PS3.10 files) as a folder"
)]
struct Cli {
    /// On a disk or image with a partition table: use partition N (1-based) instead of the
    /// first FAT partition.
    #[arg(long, global = true, value_name = "N")]
    partition: Option<u32>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount the File-set in SOURCE (a directory with a DICOMDIR) on MOUNTPOINT.
    Mount {
        /// Directory holding the File-set (DICOMDIR at its root).
        source: PathBuf,
        /// Where to mount it.
        mountpoint: PathBuf,
        /// Stay attached to the terminal (log to stderr) instead of running in the background.
        #[arg(short, long)]
        foreground: bool,
        /// What the mount shows: native (the medium as it is), dcm (patient/study/series/N.dcm
        /// at the root) or both (native, with the dcm view under by-patient/).
        #[arg(long, default_value = "native")]
        view: View,
        /// Also answer lookups in another case (viewers that ask for lowercase names).
        #[arg(long)]
        case_insensitive: bool,
        /// Let other users see the mount (needs user_allow_other for non-root users).
        #[arg(long)]
        allow_other: bool,
        /// Serve reads from the daemon instead of FUSE passthrough.
        #[arg(long)]
        no_passthrough: bool,
        /// Log to this file when in the background (default: syslog).
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// Mount read-only (the default is read-write when the medium can be written).
        #[arg(short = 'r', long)]
        read_only: bool,
        /// Make a new, empty File-set first if SOURCE has no DICOMDIR.
        #[arg(long)]
        create: bool,
        /// Which transfer syntaxes copied-in instances may have: STD-GEN-USB-JPEG,
        /// STD-GEN-USB-J2K (and -SD-, -CF-, -MMC-), STD-GEN-CD, any, or default (the JPEG and
        /// J2K profiles together).
        #[arg(long, default_value = "default")]
        profile: Profile,
        /// Mount options, comma-separated: ro, rw, view=native|dcm|both, case_insensitive,
        /// allow_other, no_passthrough, log_file=PATH, create, profile=NAME, partition=N,
        /// foreground; fstab's noauto, nofail, user, ... are accepted; nosuid, noexec, noatime,
        /// ... go to mount(2).
        #[arg(short = 'o', value_delimiter = ',')]
        options: Vec<String>,
    },
    /// Create a new, empty File-set in SOURCE (a directory): a DICOMDIR with no records and a new
    /// File-set UID. Refuses to touch an existing DICOMDIR.
    Init {
        source: PathBuf,
        /// File-set ID (0004,1130): up to 16 characters of A-Z, 0-9, _ and space.
        #[arg(long, default_value = "")]
        fileset_id: String,
    },
    /// Write a new DICOMDIR for the instance files in SOURCE (its DICOMDIR missing or broken),
    /// listing each file that could not be taken. Keeps the File-set ID and UID if it can.
    Rebuild { source: PathBuf },
    /// List the patient / study / series / instance tree of the DICOMDIR in SOURCE.
    Ls { source: PathBuf },
    /// Describe the File-set in SOURCE: File-set ID and UID, medium and free space, counts by
    /// patient, study, series and modality, transfer syntaxes, and the PS3.11 profiles it
    /// conforms to (naming what breaks the others). Exit 0, or 8 if SOURCE cannot be read.
    Info { source: PathBuf },
    /// Check the File-set in SOURCE. Exit 0 clean, 4 errors found, 8 could not run.
    Check {
        source: PathBuf,
        /// Repair what a crash or pulled medium left: drop records of missing files, take in
        /// files nothing references, clear unfinished copies. Then check.
        #[arg(long)]
        repair: bool,
        /// Also print warnings.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Write a synthetic demo File-set (several patients, MR, CT, SR, PDF) into DIR.
    Demo {
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        patients: usize,
        #[arg(long, default_value_t = 2)]
        studies: usize,
        #[arg(long, default_value_t = 2)]
        series: usize,
        #[arg(long, default_value_t = 5)]
        instances: usize,
        #[arg(long, default_value_t = 64)]
        rows: u16,
        #[arg(long, default_value_t = 64)]
        cols: u16,
        /// Leave out the SR and PDF series.
        #[arg(long)]
        no_documents: bool,
        /// Write only the DICOMDIR, not the instance files.
        #[arg(long)]
        no_files: bool,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

const EXIT_ERRORS: u8 = 4;
const EXIT_COULD_NOT_RUN: u8 = 8;

/// Which partition of a partitioned disk or image to use (`--partition`, `-o partition=`).
static PARTITION: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The medium in SOURCE: a host directory, or a FAT block device or image file, opened for
/// writing if `writable`.
fn open_medium(source: &Path, writable: bool) -> Result<Arc<dyn fsimpl::Medium>, Error> {
    open_medium_how(source, writable, false)
}

/// [`open_medium`], also for writing a medium that was not cleanly unmounted (`allow_dirty`).
fn open_medium_how(
    source: &Path,
    writable: bool,
    allow_dirty: bool,
) -> Result<Arc<dyn fsimpl::Medium>, Error> {
    let how = fsimpl::SourceOptions {
        partition: match PARTITION.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        },
        writable,
        allow_dirty,
    };
    fsimpl::open_source(source, &how).map_err(|e| Error::medium(source.display().to_string(), e))
}

fn open_fileset(source: &Path) -> Result<FileSet, Error> {
    FileSet::open(open_medium(source, false)?)
}

/// The medium of a command that writes (init, rebuild, check --repair), with SOURCE locked
/// against a mount or another such command; closed (`Medium::close`) when dropped.
struct Writing {
    medium: Arc<dyn fsimpl::Medium>,
    _lock: std::fs::File,
}

impl Writing {
    fn open(source: &Path) -> Result<Writing, String> {
        Writing::open_how(source, false)
    }

    /// With `allow_dirty`, also a medium that was not cleanly unmounted (for repair).
    fn open_how(source: &Path, allow_dirty: bool) -> Result<Writing, String> {
        let lock = mount::lock_source(source, true)?;
        let medium = open_medium_how(source, true, allow_dirty).map_err(|e| e.to_string())?;
        Ok(Writing {
            medium,
            _lock: lock,
        })
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if let Err(e) = self.medium.close() {
            eprintln!("dicomfs: {}: {e}", self.medium.describe());
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let argv0 = argv.first().cloned().unwrap_or_default();
    // The arguments after the program name, as `dicomfs` takes them.
    let args: Vec<OsString> = match mount::personality(&argv0) {
        mount::Personality::Dicomfs => argv.iter().skip(1).cloned().collect(),
        mount::Personality::UmountHelper => return mount::umount_helper(&argv[1..]),
        mount::Personality::MountHelper => match mount::helper_args(&argv[1..]) {
            Ok(Some(a)) => a,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}: {e}", argv0.to_string_lossy());
                return ExitCode::from(1);
            }
        },
    };
    let cli = Cli::parse_from(std::iter::once(OsString::from("dicomfs")).chain(args.clone()));
    PARTITION.store(
        cli.partition.unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );
    match cli.cmd {
        Cmd::Mount {
            source,
            mountpoint,
            foreground,
            mut view,
            mut case_insensitive,
            mut allow_other,
            mut no_passthrough,
            mut log_file,
            mut read_only,
            mut create,
            mut profile,
            options,
        } => {
            let mut foreground = foreground;
            let mut ms = mount::MsFlags::default();
            for o in options.iter().filter(|o| !o.is_empty()) {
                if mount::is_userspace_option(o) || ms.apply(o) {
                    continue;
                }
                let (k, v) = o.split_once('=').unwrap_or((o, ""));
                match (k, v) {
                    ("ro", _) => read_only = true,
                    ("rw", _) => read_only = false,
                    ("create", _) => create = true,
                    ("profile", v) => match v.parse() {
                        Ok(p) => profile = p,
                        Err(e) => return usage(&e),
                    },
                    ("foreground", _) => foreground = true,
                    ("view", v) => match v.parse() {
                        Ok(x) => view = x,
                        Err(e) => return usage(&e),
                    },
                    ("case_insensitive", _) => case_insensitive = true,
                    ("allow_other", _) => allow_other = true,
                    ("no_passthrough", _) => no_passthrough = true,
                    ("log_file", f) => log_file = Some(f.into()),
                    ("partition", v) => match v.parse::<u32>() {
                        Ok(n) if n > 0 => PARTITION.store(n, std::sync::atomic::Ordering::Relaxed),
                        _ => return usage(&format!("partition={v:?}: expected a number from 1")),
                    },
                    _ => return usage(&format!("unknown mount option {o:?}")),
                }
            }
            let m = MountArgs {
                source,
                mountpoint,
                opts: Options {
                    view,
                    case_insensitive,
                },
                allow_other,
                passthrough: !no_passthrough,
                read_only,
                create,
                profile,
                ms,
            };
            if foreground {
                logsink::init(match &log_file {
                    Some(f) => logsink::Sink::File(f),
                    None => logsink::Sink::Stderr,
                });
                mount_foreground(&m, None)
            } else if let Ok(fd) = std::env::var("DICOMFS_READY_FD") {
                logsink::init(match &log_file {
                    Some(f) => logsink::Sink::File(f),
                    None => logsink::Sink::Syslog,
                });
                let fd: RawFd = fd.parse().unwrap_or(-1);
                mount_foreground(&m, Some(fd))
            } else {
                mount_background(&args, &m.source)
            }
        }
        Cmd::Init { source, fileset_id } => {
            logsink::init(logsink::Sink::Stderr);
            let w = match Writing::open(&source) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("dicomfs: {e}");
                    return ExitCode::from(1);
                }
            };
            let uid = synth::fresh_uid();
            match dicomfs::fileset::create(&*w.medium, &fileset_id, &uid) {
                Ok(()) => {
                    println!(
                        "{}: new File-set {fileset_id:?}, UID {uid}",
                        source.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dicomfs: {e}");
                    ExitCode::from(if matches!(e, Error::Usage(_)) { 2 } else { 1 })
                }
            }
        }
        Cmd::Rebuild { source } => {
            logsink::init(logsink::Sink::Stderr);
            let w = match Writing::open(&source) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("dicomfs: {e}");
                    return ExitCode::from(EXIT_COULD_NOT_RUN);
                }
            };
            let t = std::time::Instant::now();
            let bar = parking_lot::Mutex::new(progress::Progress::new(
                format!("rebuilding {}", source.display()),
                "files",
            ));
            let r = dicomfs::rebuild::rebuild(&w.medium, &|n, total| bar.lock().update(n, total));
            bar.lock().finish();
            match r {
                Ok(r) => {
                    for line in &r.refused {
                        println!("not taken: {line}");
                    }
                    println!(
                        "{}: new DICOMDIR with {} instances, {} records in {:.2?}; {} files not taken",
                        source.display(),
                        r.instances,
                        r.records,
                        t.elapsed(),
                        r.refused.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dicomfs: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Ls { source } => {
            logsink::init(logsink::Sink::Stderr);
            ls(&source)
        }
        Cmd::Info { source } => {
            logsink::init(logsink::Sink::Stderr);
            match open_fileset(&source) {
                Ok(fs) => {
                    print!("{}", info::info(&source, &fs));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dicomfs: {e}");
                    ExitCode::from(EXIT_COULD_NOT_RUN)
                }
            }
        }
        Cmd::Check {
            source,
            verbose,
            repair,
        } => {
            logsink::init(logsink::Sink::Stderr);
            if repair {
                if let Err(code) = do_repair(&source) {
                    return code;
                }
            }
            check(&source, verbose)
        }
        Cmd::Demo {
            dir,
            patients,
            studies,
            series,
            instances,
            rows,
            cols,
            no_documents,
            no_files,
            seed,
        } => {
            logsink::init(logsink::Sink::Stderr);
            if dir.join("DICOMDIR").exists() {
                eprintln!(
                    "dicomfs: {}: already holds a DICOMDIR; not overwriting it",
                    dir.display()
                );
                return ExitCode::from(1);
            }
            let spec = synth::Spec {
                patients,
                studies,
                series,
                instances,
                rows,
                cols,
                seed,
                documents: !no_documents,
                files: !no_files,
                ..Default::default()
            };
            match synth::generate(&dir, &spec) {
                Ok(g) => {
                    println!(
                        "{}: demo File-set with {} instances, {} records, DICOMDIR {} bytes",
                        dir.display(),
                        g.instances,
                        g.records,
                        g.dicomdir_bytes
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dicomfs: {}: {e}", dir.display());
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn usage(m: &str) -> ExitCode {
    eprintln!("dicomfs: {m}");
    ExitCode::from(2)
}

struct MountArgs {
    source: PathBuf,
    mountpoint: PathBuf,
    opts: Options,
    allow_other: bool,
    passthrough: bool,
    read_only: bool,
    create: bool,
    profile: Profile,
    /// Flags for mount(2) (nosuid, nodev, noexec, ...).
    ms: mount::MsFlags,
}

/// Re-run ourselves detached with `args`, with a pipe on which the child reports its progress
/// (`P phase`) and then says whether the mount is live (`OK`, or `ERR message`).
fn mount_background(args: &[OsString], source: &Path) -> ExitCode {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        eprintln!("dicomfs: pipe: {}", std::io::Error::last_os_error());
        return ExitCode::from(1);
    }
    let (rd, wr) = (fds[0], fds[1]);
    // SAFETY: rd is the pipe's read end that we own.
    unsafe { libc::fcntl(rd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("dicomfs: cannot find my own executable: {e}");
            return ExitCode::from(1);
        }
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args)
        .env("DICOMFS_READY_FD", wr.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // The daemon logs to --log-file or syslog (see logsink), never to our terminal.
    cmd.stderr(std::process::Stdio::null());
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn();
    // SAFETY: wr is ours; the child has its own copy.
    unsafe { libc::close(wr) };
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dicomfs: cannot start the daemon: {e}");
            return ExitCode::from(1);
        }
    };
    // SAFETY: rd is an open fd we own; File takes ownership.
    let pipe = std::io::BufReader::new(unsafe { std::fs::File::from_raw_fd(rd) });
    let mut ticker = progress::Ticker::start(format!("mounting {}", source.display()));
    let mut err = String::new();
    for line in pipe.lines() {
        let Ok(line) = line else { break };
        if let Some(p) = line.strip_prefix("P ") {
            ticker.set(p);
        } else if line.starts_with("OK") {
            return ExitCode::SUCCESS;
        } else if let Some(e) = line.strip_prefix("ERR ") {
            err = e.to_string();
        }
    }
    ticker.stop();
    let _ = child.wait();
    eprintln!(
        "dicomfs: {}",
        if err.is_empty() {
            "the daemon exited before the mount was live"
        } else {
            &err
        }
    );
    ExitCode::from(1)
}

/// Closes the medium of a mount when the daemon ends, however it ends (`Medium::close`: on FAT,
/// metadata written and the dirty bit cleared), after the File-set's own closing.
struct CloseMedium(Option<Arc<dyn fsimpl::Medium>>);

impl Drop for CloseMedium {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            match m.close() {
                Ok(()) => log::debug!("{}: closed", m.describe()),
                Err(e) => log::error!("{}: closing the medium: {e}", m.describe()),
            }
        }
    }
}

fn mount_foreground(m: &MountArgs, ready: Option<RawFd>) -> ExitCode {
    // SAFETY: the fd was handed to us by our parent for this purpose.
    let ready = ready
        .filter(|&fd| fd >= 0)
        .map(|fd| unsafe { std::fs::File::from_raw_fd(fd) });
    let ready = parking_lot::Mutex::new(ready);
    let fail = |msg: String| {
        log::error!("{msg}");
        match &mut *ready.lock() {
            Some(f) => {
                let _ = writeln!(f, "ERR {msg}");
            }
            None => eprintln!("dicomfs: {msg}"),
        }
        ExitCode::from(1)
    };
    let mut ticker = progress::Ticker::start(format!("mounting {}", m.source.display()));
    let phase = |p: &str| match &mut *ready.lock() {
        Some(f) => {
            let _ = writeln!(f, "P {p}");
        }
        None => ticker.set(p),
    };
    // One writer per SOURCE, for the life of this process: the lock goes when the process
    // exits, after the medium is closed (umount.fuse.dicomfs waits for it).
    match mount::lock_source(&m.source, !m.read_only) {
        Ok(l) => std::mem::forget(l),
        Err(e) => return fail(e),
    }
    phase("opening the medium");
    let (medium, opened_writable) = match open_medium(&m.source, !m.read_only) {
        Ok(x) => (x, !m.read_only),
        Err(e) if !m.read_only && matches!(e.errno(), libc::EROFS | libc::EACCES | libc::EPERM) => {
            log::warn!("{e}; mounting read-only");
            match open_medium(&m.source, false) {
                Ok(x) => (x, false),
                Err(e) => return fail(e.to_string()),
            }
        }
        Err(e) => return fail(e.to_string()),
    };
    let _close = CloseMedium(opened_writable.then(|| medium.clone()));
    if m.create
        && !m.read_only
        && medium.stat("DICOMDIR").is_err()
        && medium.stat("dicomdir").is_err()
    {
        let uid = synth::fresh_uid();
        if let Err(e) = dicomfs::fileset::create(&*medium, "", &uid) {
            return fail(e.to_string());
        }
        log::info!("{}: new File-set, UID {uid}", m.source.display());
    }
    phase("reading the DICOMDIR");
    let fs = match FileSet::open(medium.clone()) {
        Ok(f) => f,
        Err(e) => return fail(e.to_string()),
    };
    for f in fs
        .dir
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .take(20)
    {
        log::warn!("{}: DICOMDIR: {}", m.source.display(), f.message);
    }
    let t = std::time::Instant::now();
    let mut writable = opened_writable;
    if writable && fs.spelling == dicomfs::fileset::Spelling::Lower {
        log::warn!(
            "{}: File IDs are spelled in lowercase on this medium; mounting read-only",
            m.source.display()
        );
        writable = false;
        if let Err(e) = medium.close() {
            log::warn!("{}: {e}", m.source.display());
        }
    }
    if writable {
        // Can the medium be written at all (a CD, a read-only directory)?
        // An 8.3 name, which any medium can hold.
        let probe = "DICOMFS.PRB";
        match medium.mkdir(probe).and_then(|_| medium.rmdir(probe)) {
            Ok(()) => {}
            Err(e) => {
                log::warn!(
                    "{}: cannot be written ({e}); mounting read-only",
                    m.source.display()
                );
                writable = false;
                if let Err(e) = medium.close() {
                    log::warn!("{}: {e}", m.source.display());
                }
            }
        }
    }
    phase(&format!("indexing {} records", fs.dir.records.len()));
    let live = match Live::open(fs, writable, m.profile.clone()) {
        Ok(l) => Arc::new(l),
        Err(e) => return fail(e.to_string()),
    };
    let vfs = Vfs::with_live(live, m.opts.clone());
    log::info!(
        "{}: {} records, {} files referenced; views built in {:.0?}",
        m.source.display(),
        vfs.records,
        vfs.instances,
        t.elapsed()
    );
    phase("mounting");
    let mut cfg = fuser::Config::default();
    let fsname = mount::absolute(&m.source).display().to_string();
    cfg.mount_options = vec![
        fuser::MountOption::FSName(fsname.clone()),
        fuser::MountOption::Subtype("dicomfs".into()),
        if writable {
            fuser::MountOption::RW
        } else {
            fuser::MountOption::RO
        },
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    if m.allow_other {
        cfg.acl = fuser::SessionACL::All;
    }
    cfg.n_threads = Some(4);
    cfg.clone_fd = true;
    // Block the termination signals in every thread; one thread waits for them and unmounts.
    // SAFETY: plain signal-mask manipulation with a locally owned set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let mp = mount::absolute(&m.mountpoint);
    let fs = FuseFs::new(vfs, m.passthrough);
    // As root, mount(2) here, so the mount's type is fuse.dicomfs (umount runs
    // umount.fuse.dicomfs, which waits for us); otherwise fusermount3 mounts it.
    // SAFETY: geteuid cannot fail.
    let session = if unsafe { libc::geteuid() } == 0 {
        match mount::mount_fuse(&fsname, &mp, !writable, m.allow_other, m.ms) {
            Ok(fd) => {
                let acl = if m.allow_other {
                    fuser::SessionACL::All
                } else {
                    fuser::SessionACL::Owner
                };
                let s = fuser::Session::from_fd(fs, fd, acl, cfg);
                if s.is_err() {
                    let _ = mount::unmount(&mp);
                }
                s
            }
            Err(e) => Err(e),
        }
    } else {
        fuser::Session::new(fs, &mp, &cfg)
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot mount on {}: {e}", m.mountpoint.display())),
    };
    // So that `umount MP` finds our type and runs umount.fuse.dicomfs (which waits for us).
    let _utab = UtabEntry(if unsafe { libc::geteuid() } == 0 {
        mount::utab_add(&mp)
            .map_err(|e| log::debug!("{}: no utab entry: {e}", mp.display()))
            .ok()
    } else {
        None
    });
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended2 = ended.clone();
    let mp2 = mp.clone();
    std::thread::spawn(move || on_signals(set, &mp2, &ended2));
    ticker.stop();
    log::info!("{} mounted on {}", m.source.display(), mp.display());
    if let Some(mut f) = ready.lock().take() {
        let _ = writeln!(f, "OK");
    }
    let r = session.run();
    ended.store(true, std::sync::atomic::Ordering::Release);
    match r {
        Ok(()) => {
            log::info!("{} unmounted", mp.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{}: session ended: {e}", mp.display());
            ExitCode::from(1)
        }
    }
}

/// Our line in libmount's utab, removed when the daemon ends.
struct UtabEntry(Option<u64>);

impl Drop for UtabEntry {
    fn drop(&mut self) {
        if let Some(id) = self.0 {
            mount::utab_remove(id);
        }
    }
}

/// How long a signal waits for files still open on a busy mount before aborting it.
const SIGNAL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGINT, SIGTERM and SIGHUP unmount. A busy mount is detached and ends when its open files
/// are closed; if they are not closed within [`SIGNAL_GRACE`] (or at a second signal), the
/// FUSE connection is aborted. Either way the session ends and the File-set is closed.
fn on_signals(set: libc::sigset_t, mp: &Path, ended: &std::sync::atomic::AtomicBool) {
    let conn = mount::connection_of(mp);
    let abort = || match conn.map(mount::abort_connection) {
        Some(Ok(())) => log::warn!("{}: aborted the FUSE connection", mp.display()),
        Some(Err(e)) => log::warn!(
            "{}: cannot abort the FUSE connection ({e}); waiting for the files open on it",
            mp.display()
        ),
        None => {}
    };
    let mut signals = 0;
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: set is a valid signal set; sig is an out-parameter.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        signals += 1;
        if signals > 1 {
            log::info!("signal {sig} again: aborting {}", mp.display());
            abort();
            continue;
        }
        log::info!("signal {sig}: unmounting {}", mp.display());
        match mount::unmount(mp) {
            Ok(mount::Unmounted::Clean) => {}
            Ok(mount::Unmounted::Detached) => {
                log::info!(
                    "{}: busy; detached, ending when its open files are closed",
                    mp.display()
                );
                let t = std::time::Instant::now();
                while !ended.load(std::sync::atomic::Ordering::Acquire) {
                    if t.elapsed() > SIGNAL_GRACE {
                        abort();
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
            Err(e) => log::error!("unmount {}: {e}", mp.display()),
        }
    }
}

fn do_repair(source: &Path) -> Result<(), ExitCode> {
    let w = match Writing::open_how(source, true) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("dicomfs: {e}");
            return Err(ExitCode::from(EXIT_COULD_NOT_RUN));
        }
    };
    match w.medium.repair_medium() {
        Ok(lines) => {
            for line in &lines {
                println!("repaired: {line}");
            }
        }
        Err(e) => {
            eprintln!("dicomfs: repair: {}: {e}", w.medium.describe());
            return Err(ExitCode::from(EXIT_COULD_NOT_RUN));
        }
    }
    let mut ticker = progress::Ticker::start(format!("repairing {}", source.display()));
    ticker.set("reading the medium");
    let r = dicomfs::fsu::repair(&w.medium, &Profile::default());
    ticker.stop();
    match r {
        Ok(report) => {
            for line in &report {
                println!("repaired: {line}");
            }
            if report.is_empty() {
                println!("{}: nothing to repair", source.display());
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("dicomfs: repair: {e}");
            Err(ExitCode::from(EXIT_COULD_NOT_RUN))
        }
    }
}

fn ls(source: &Path) -> ExitCode {
    let fs = match open_fileset(source) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("dicomfs: {e}");
            return ExitCode::from(1);
        }
    };
    let d = &fs.dir;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut stack: Vec<(u32, usize)> = d.roots.iter().rev().map(|&r| (r, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        let r = &d.records[i as usize];
        if !r.in_use {
            continue;
        }
        let pad = "  ".repeat(depth);
        let line = match r.file_id.as_deref() {
            Some(f) => format!("{pad}{}  {}  {}", vfs::leaf_name(r), r.rtype, f),
            None => format!("{pad}{}", vfs::dir_name(d, r)),
        };
        if writeln!(out, "{line}").is_err() {
            return ExitCode::SUCCESS; // closed pipe (| head)
        }
        stack.extend(r.children.iter().rev().map(|&c| (c, depth + 1)));
    }
    for f in d.errors() {
        eprintln!("dicomfs: {}: DICOMDIR: {}", source.display(), f.message);
    }
    ExitCode::SUCCESS
}

fn check(source: &Path, verbose: bool) -> ExitCode {
    if !source.exists() {
        eprintln!(
            "dicomfs: {}: no such directory, device or image",
            source.display()
        );
        return ExitCode::from(EXIT_COULD_NOT_RUN);
    }
    let fs = match open_fileset(source) {
        Ok(f) => f,
        Err(e @ Error::Malformed { .. }) => {
            println!("error: {e}");
            return ExitCode::from(EXIT_ERRORS);
        }
        Err(e) => {
            eprintln!("dicomfs: {e}");
            return ExitCode::from(EXIT_COULD_NOT_RUN);
        }
    };
    let mut bar = progress::Progress::new(format!("checking {}", source.display()), "records");
    let findings = fs.check(|n, t| bar.update(n, t));
    bar.finish();
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    for f in &findings {
        if verbose || f.severity == Severity::Error {
            println!("{f}");
        }
    }
    let refs = fs
        .dir
        .records
        .iter()
        .filter(|r| r.file_id.is_some())
        .count();
    println!(
        "{}: {} records, {} files referenced: {errors} errors, {warnings} warnings",
        source.display(),
        fs.dir.records.len(),
        refs
    );
    if errors > 0 {
        ExitCode::from(EXIT_ERRORS)
    } else {
        ExitCode::SUCCESS
    }
}

//! The `dicomfs` command: mount a File-set, list it, check it, make a demo one.

use clap::{Parser, Subcommand};
use dicomfs::dicomdir::Severity;
use dicomfs::fileset::FileSet;
use dicomfs::fsu::{Live, Profile};
use dicomfs::fuse::FuseFs;
use dicomfs::vfs::{self, Options, Vfs, View};
use dicomfs::{synth, Error};
use std::io::{Read, Write};
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
        /// allow_other, no_passthrough, log_file=PATH, create, profile=NAME.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            for o in options.iter().filter(|o| !o.is_empty()) {
                let (k, v) = o.split_once('=').unwrap_or((o, ""));
                match (k, v) {
                    ("ro", _) => read_only = true,
                    ("rw", _) => read_only = false,
                    ("create", _) => create = true,
                    ("profile", v) => match v.parse() {
                        Ok(p) => profile = p,
                        Err(e) => return usage(&e),
                    },
                    ("noauto", _) | ("nofail", _) | ("user", _) | ("users", _) | ("_netdev", _) => {
                    }
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
            };
            if foreground {
                init_log(None, false);
                mount_foreground(&m, None)
            } else if let Ok(fd) = std::env::var("DICOMFS_READY_FD") {
                init_log(log_file.as_deref(), true);
                let fd: RawFd = fd.parse().unwrap_or(-1);
                mount_foreground(&m, Some(fd))
            } else {
                mount_background()
            }
        }
        Cmd::Init { source, fileset_id } => {
            init_log(None, false);
            let m = match open_medium(&source, true) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("dicomfs: {e}");
                    return ExitCode::from(1);
                }
            };
            let uid = synth::fresh_uid();
            let made = dicomfs::fileset::create(&*m, &fileset_id, &uid)
                .and_then(|_| m.close().map_err(|e| Error::medium(m.describe(), e)));
            match made {
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
            init_log(None, false);
            let m = match open_medium(&source, true) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("dicomfs: {e}");
                    return ExitCode::from(EXIT_COULD_NOT_RUN);
                }
            };
            let t = std::time::Instant::now();
            let built = dicomfs::rebuild::rebuild(&m, &|_, _| {}).and_then(|r| {
                m.close()
                    .map(|_| r)
                    .map_err(|e| Error::medium(m.describe(), e))
            });
            match built {
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
            init_log(None, false);
            ls(&source)
        }
        Cmd::Check {
            source,
            verbose,
            repair,
        } => {
            init_log(None, false);
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
            init_log(None, false);
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
}

/// Messages go to syslog through /dev/log (RFC 3164 framing), one datagram per record.
struct Syslog(std::os::unix::net::UnixDatagram);

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let msg = String::from_utf8_lossy(buf);
        for line in msg.lines().filter(|l| !l.is_empty()) {
            let pri = if line.contains("ERROR") {
                11
            } else if line.contains("WARN") {
                12
            } else {
                14
            };
            let _ = self
                .0
                .send(format!("<{pri}>dicomfs[{}]: {line}", std::process::id()).as_bytes());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_log(file: Option<&Path>, background: bool) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if background {
        let target: Option<Box<dyn Write + Send>> = match file {
            Some(f) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .ok()
                .map(|f| Box::new(f) as Box<dyn Write + Send>),
            None => std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| s.connect("/dev/log").map(|_| s))
                .ok()
                .map(|s| Box::new(Syslog(s)) as Box<dyn Write + Send>),
        };
        match target {
            Some(t) => {
                b.target(env_logger::Target::Pipe(t));
            }
            None => {
                b.filter_level(log::LevelFilter::Off);
            }
        }
    }
    let _ = b.try_init();
}

/// Re-run ourselves detached, with a pipe on which the child says when the mount is live.
fn mount_background() -> ExitCode {
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
    cmd.args(std::env::args_os().skip(1))
        .env("DICOMFS_READY_FD", wr.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // The daemon logs to --log-file or syslog (see init_log), never to our terminal.
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
    let mut pipe = unsafe { std::fs::File::from_raw_fd(rd) };
    let mut msg = String::new();
    let _ = pipe.read_to_string(&mut msg);
    if msg.starts_with("OK") {
        return ExitCode::SUCCESS;
    }
    let _ = child.wait();
    let msg = msg.trim().strip_prefix("ERR ").unwrap_or(msg.trim());
    eprintln!(
        "dicomfs: {}",
        if msg.is_empty() {
            "the daemon exited before the mount was live"
        } else {
            msg
        }
    );
    ExitCode::from(1)
}

fn mount_foreground(m: &MountArgs, ready: Option<RawFd>) -> ExitCode {
    // SAFETY: the fd was handed to us by our parent for this purpose.
    let mut ready = ready
        .filter(|&fd| fd >= 0)
        .map(|fd| unsafe { std::fs::File::from_raw_fd(fd) });
    let fail = |ready: &mut Option<std::fs::File>, msg: String| {
        log::error!("{msg}");
        match ready {
            Some(f) => {
                let _ = writeln!(f, "ERR {msg}");
            }
            None => eprintln!("dicomfs: {msg}"),
        }
        ExitCode::from(1)
    };
    let medium = match open_medium(&m.source, !m.read_only) {
        Ok(x) => x,
        Err(e) if !m.read_only && matches!(e.errno(), libc::EROFS | libc::EACCES | libc::EPERM) => {
            log::warn!("{e}; mounting read-only");
            match open_medium(&m.source, false) {
                Ok(x) => x,
                Err(e) => return fail(&mut ready, e.to_string()),
            }
        }
        Err(e) => return fail(&mut ready, e.to_string()),
    };
    if m.create
        && !m.read_only
        && medium.stat("DICOMDIR").is_err()
        && medium.stat("dicomdir").is_err()
    {
        let uid = synth::fresh_uid();
        if let Err(e) = dicomfs::fileset::create(&*medium, "", &uid) {
            return fail(&mut ready, e.to_string());
        }
        log::info!("{}: new File-set, UID {uid}", m.source.display());
    }
    let fs = match FileSet::open(medium.clone()) {
        Ok(f) => f,
        Err(e) => return fail(&mut ready, e.to_string()),
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
    let mut writable = !m.read_only;
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
    let live = match Live::open(fs, writable, m.profile.clone()) {
        Ok(l) => Arc::new(l),
        Err(e) => return fail(&mut ready, e.to_string()),
    };
    let vfs = Vfs::with_live(live, m.opts.clone());
    log::info!(
        "{}: {} records, {} files referenced; views built in {:.0?}",
        m.source.display(),
        vfs.records,
        vfs.instances,
        t.elapsed()
    );
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        fuser::MountOption::FSName(m.source.display().to_string()),
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
    let mut session =
        match fuser::Session::new(FuseFs::new(vfs, m.passthrough), &m.mountpoint, &cfg) {
            Ok(s) => s,
            Err(e) => {
                return fail(
                    &mut ready,
                    format!("cannot mount on {}: {e}", m.mountpoint.display()),
                )
            }
        };
    let mut unmounter = session.unmount_callable();
    let mp = m.mountpoint.clone();
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: set is a valid signal set; sig is an out-parameter.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            log::info!("signal {sig}: unmounting {}", mp.display());
            if let Err(e) = unmounter.unmount() {
                log::error!("unmount {}: {e}", mp.display());
            }
        }
    });
    log::info!(
        "{} mounted on {}",
        m.source.display(),
        m.mountpoint.display()
    );
    if let Some(mut f) = ready.take() {
        let _ = writeln!(f, "OK");
    }
    match session.run() {
        Ok(()) => {
            log::info!("{} unmounted", m.mountpoint.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{}: session ended: {e}", m.mountpoint.display());
            ExitCode::from(1)
        }
    }
}

fn do_repair(source: &Path) -> Result<(), ExitCode> {
    let m = match open_medium_how(source, true, true) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("dicomfs: {e}");
            return Err(ExitCode::from(EXIT_COULD_NOT_RUN));
        }
    };
    match m.repair_medium() {
        Ok(lines) => {
            for line in &lines {
                println!("repaired: {line}");
            }
        }
        Err(e) => {
            eprintln!("dicomfs: repair: {}: {e}", m.describe());
            return Err(ExitCode::from(EXIT_COULD_NOT_RUN));
        }
    }
    let result = dicomfs::fsu::repair(&m, &Profile::default());
    if let Err(e) = m.close() {
        eprintln!("dicomfs: repair: {}: {e}", m.describe());
        return Err(ExitCode::from(EXIT_COULD_NOT_RUN));
    }
    match result {
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
    let findings = fs.check(|_, _| {});
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

//! Where log lines go: stderr in the foreground, `--log-file` or syslog in the background.
//! Levels come from `RUST_LOG` (default `info`: one line per instance added, refused or
//! deleted); syslog gets RFC 3164 datagrams on /dev/log, without a dependency.

use std::io::Write;
use std::path::Path;

/// The default filter: dicomfs at info, the FUSE library only when something is wrong.
pub const DEFAULT_FILTER: &str = "info,fuser=warn";

/// Where syslog listens (`DICOMFS_SYSLOG_SOCKET` overrides it, for tests).
fn syslog_socket() -> String {
    std::env::var("DICOMFS_SYSLOG_SOCKET").unwrap_or_else(|_| "/dev/log".into())
}

/// Each record is one datagram to the syslog socket.
struct Syslog(std::os::unix::net::UnixDatagram);

impl Write for Syslog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let msg = buf.strip_suffix(b"\n").unwrap_or(buf);
        if !msg.is_empty() {
            let _ = self.0.send(msg);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The syslog priority (facility daemon = 3) of a level.
fn priority(l: log::Level) -> u8 {
    3 * 8
        + match l {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            log::Level::Debug | log::Level::Trace => 7,
        }
}

/// Where the log of this process goes.
pub enum Sink<'a> {
    Stderr,
    File(&'a Path),
    Syslog,
}

/// Set up logging. A log file that cannot be opened, or a missing syslog socket, falls back to
/// stderr (which a background daemon has on /dev/null) with a warning.
pub fn init(sink: Sink) {
    let mut b =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(DEFAULT_FILTER));
    let mut warn = None;
    match sink {
        Sink::Stderr => {}
        Sink::File(f) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(f)
        {
            Ok(file) => {
                b.target(env_logger::Target::Pipe(Box::new(file)));
            }
            Err(e) => warn = Some(format!("log file {}: {e}; logging to stderr", f.display())),
        },
        Sink::Syslog => {
            let path = syslog_socket();
            match std::os::unix::net::UnixDatagram::unbound()
                .and_then(|s| s.connect(&path).map(|_| s))
            {
                Ok(s) => {
                    let pid = std::process::id();
                    b.format(move |buf, r| {
                        writeln!(
                            buf,
                            "<{}>dicomfs[{pid}]: {}: {}",
                            priority(r.level()),
                            r.level(),
                            r.args()
                        )
                    });
                    b.target(env_logger::Target::Pipe(Box::new(Syslog(s))));
                }
                Err(e) => warn = Some(format!("syslog {path}: {e}; logging to stderr")),
            }
        }
    }
    let _ = b.try_init();
    if let Some(w) = warn {
        log::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn priorities() {
        assert_eq!(super::priority(log::Level::Error), 27);
        assert_eq!(super::priority(log::Level::Info), 30);
    }
}

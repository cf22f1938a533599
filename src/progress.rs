//! A progress bar on stderr for long commands (check, rebuild, info, the index at mount):
//! count, rate and time left, redrawn at most 10 times a second, and nothing at all when
//! stderr is not a terminal.

use std::io::Write;
use std::time::{Duration, Instant};

/// Whether stderr is a terminal (and `DICOMFS_PROGRESS` does not say `0`).
pub fn on_terminal() -> bool {
    if std::env::var("DICOMFS_PROGRESS").is_ok_and(|v| v == "0") {
        return false;
    }
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(2) == 1 }
}

pub struct Progress {
    what: String,
    unit: &'static str,
    start: Instant,
    last: Option<Instant>,
    enabled: bool,
    drawn: bool,
}

impl Progress {
    /// A bar for `what` (e.g. "checking /media/usb"), counting `unit`s.
    pub fn new(what: impl Into<String>, unit: &'static str) -> Progress {
        Progress {
            what: what.into(),
            unit,
            start: Instant::now(),
            last: None,
            enabled: on_terminal(),
            drawn: false,
        }
    }

    /// `done` of `total` (0: unknown) are done.
    pub fn update(&mut self, done: usize, total: usize) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
            && done < total
        {
            return;
        }
        self.last = Some(now);
        let line = line(
            &self.what,
            self.unit,
            done as u64,
            total as u64,
            self.start.elapsed(),
            width(),
        );
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r{line}\x1b[K");
        let _ = e.flush();
        self.drawn = true;
    }

    /// Remove the bar (the command's own output follows).
    pub fn finish(&mut self) {
        if self.drawn {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[K");
            let _ = e.flush();
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A status line for work without a count (the index at mount): `what: phase  0:03`, drawn by
/// a thread twice a second once the work has taken more than half a second, on a terminal only.
pub struct Ticker {
    state: std::sync::Arc<parking_lot::Mutex<(String, bool)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    pub fn start(what: impl Into<String>) -> Ticker {
        let state = std::sync::Arc::new(parking_lot::Mutex::new((String::new(), false)));
        if !on_terminal() {
            return Ticker {
                state,
                thread: None,
            };
        }
        let what = what.into();
        let s = state.clone();
        let start = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut drawn = false;
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let (phase, stop) = s.lock().clone();
                if stop {
                    break;
                }
                if start.elapsed() < Duration::from_millis(500) {
                    continue;
                }
                let line = format!("{what}: {phase}  {}", clock(start.elapsed()));
                let line: String = line.chars().take(width().saturating_sub(1)).collect();
                let mut e = std::io::stderr().lock();
                let _ = write!(e, "\r{line}\x1b[K");
                let _ = e.flush();
                drawn = true;
            }
            if drawn {
                let mut e = std::io::stderr().lock();
                let _ = write!(e, "\r\x1b[K");
                let _ = e.flush();
            }
        });
        Ticker {
            state,
            thread: Some(thread),
        }
    }

    /// What is being done now.
    pub fn set(&self, phase: impl Into<String>) {
        self.state.lock().0 = phase.into();
    }

    /// Clear the line and stop.
    pub fn stop(&mut self) {
        self.state.lock().1 = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The terminal's width from `COLUMNS` or the tty, 80 otherwise.
fn width() -> usize {
    // SAFETY: TIOCGWINSZ fills a winsize struct we own.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(2, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
        return ws.ws_col as usize;
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(80)
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// One line of the bar: `what [#####.....] 1200/5000 files  800/s  0:04 left`, cut to `cols`.
pub fn line(
    what: &str,
    unit: &str,
    done: u64,
    total: u64,
    elapsed: Duration,
    cols: usize,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = done as f64 / secs;
    let tail = if total > 0 {
        let left = if done >= total {
            "done".to_string()
        } else if rate > 0.0 {
            format!(
                "{} left",
                clock(Duration::from_secs_f64((total - done) as f64 / rate))
            )
        } else {
            "--:-- left".to_string()
        };
        format!(" {done}/{total} {unit}  {rate:.0}/s  {left}")
    } else {
        format!(" {done} {unit}  {rate:.0}/s  {}", clock(elapsed))
    };
    let room = cols.saturating_sub(what.chars().count() + tail.chars().count() + 4);
    let bar = if total > 0 && room >= 10 {
        let n = room.min(40);
        let full = ((done.min(total) as f64 / total as f64) * n as f64) as usize;
        format!(" [{}{}]", "#".repeat(full), ".".repeat(n - full))
    } else {
        String::new()
    };
    let s = format!("{what}{bar}{tail}");
    s.chars().take(cols.saturating_sub(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_line() {
        let l = line("checking", "files", 50, 100, Duration::from_secs(5), 80);
        assert!(l.starts_with("checking ["), "{l}");
        assert!(l.contains("50/100 files"), "{l}");
        assert!(l.contains("10/s"), "{l}");
        assert!(l.contains("0:05 left"), "{l}");
        assert!(l.chars().count() < 80);
        let full = line("x", "files", 100, 100, Duration::from_secs(1), 80);
        assert!(
            full.contains("done") && full.contains('#') && !full.contains('.'),
            "{full}"
        );
        let unknown = line("indexing", "records", 7, 0, Duration::from_secs(65), 80);
        assert!(
            unknown.contains("7 records") && unknown.contains("1:05"),
            "{unknown}"
        );
        assert!(
            line("a long label", "files", 1, 2, Duration::from_secs(1), 20)
                .chars()
                .count()
                < 20
        );
    }
}

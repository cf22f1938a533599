//! The delete journal: what an in-place delete is about to write to the DICOMDIR, and which
//! files it then removes, made durable before the first byte of the DICOMDIR changes.
//!
//! An in-place delete (see `Live::commit`) changes the DICOMDIR in a few places that no single
//! write covers: the offset that pointed at the deleted record, the length of the item that
//! absorbs the record's bytes, and the padding element's header. A crash between those writes
//! would leave a DICOMDIR that does not parse, so each delete first writes this journal to
//! `DICOMFS.TMP/JOURNAL` and syncs it. [`replay`] (run by `repair` before it reads the
//! DICOMDIR) applies a complete journal again (every patch is an absolute value, so applying
//! twice is harmless), removes its files, and discards a torn one (the DICOMDIR was not touched
//! before the journal was durable).
//!
//! Layout, little endian: the magic; the DICOMDIR's medium path and length; the patches, each
//! its position, length, old bytes and new bytes; the files to remove; an FNV-1a 64 checksum of
//! everything before it.

use fsimpl::Medium;
use std::io;

const MAGIC: &[u8; 16] = b"DICOMFS-JOURNAL1";
/// Where the journal lives: in the staging directory, whose presence at open starts a repair.
pub const NAME: &str = "JOURNAL";
/// A journal larger than this is not one dicomfs wrote.
const MAX: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub pos: u32,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Journal {
    /// The DICOMDIR's medium path.
    pub dicomdir: String,
    /// Its length when the journal was written (an in-place delete does not change it).
    pub len: u32,
    pub patches: Vec<Patch>,
    /// Medium paths of the files to remove once the patches are durable.
    pub files: Vec<String>,
}

fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl Journal {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.patches.len() * 32);
        out.extend_from_slice(MAGIC);
        put_bytes(&mut out, self.dicomdir.as_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&(self.patches.len() as u32).to_le_bytes());
        for p in &self.patches {
            out.extend_from_slice(&p.pos.to_le_bytes());
            put_bytes(&mut out, &p.old);
            put_bytes(&mut out, &p.new);
        }
        out.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        for f in &self.files {
            put_bytes(&mut out, f.as_bytes());
        }
        let h = fnv1a(&out);
        out.extend_from_slice(&h.to_le_bytes());
        out
    }

    /// Decode a journal; `None` if it is torn, foreign or damaged. Never allocates more than
    /// the buffer holds.
    pub fn decode(buf: &[u8]) -> Option<Journal> {
        let body_len = buf.len().checked_sub(8)?;
        let (body, sum) = buf.split_at(body_len);
        if fnv1a(body) != u64::from_le_bytes(sum.try_into().ok()?) {
            return None;
        }
        let mut r = Cursor { b: body, pos: 0 };
        if r.take(16)? != MAGIC {
            return None;
        }
        let dicomdir = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let len = r.u32()?;
        let n = r.u32()?;
        let mut patches = Vec::new();
        for _ in 0..n {
            let pos = r.u32()?;
            let old = r.bytes()?.to_vec();
            let new = r.bytes()?.to_vec();
            if old.len() != new.len() {
                return None;
            }
            patches.push(Patch { pos, old, new });
        }
        let n = r.u32()?;
        let mut files = Vec::new();
        for _ in 0..n {
            files.push(String::from_utf8(r.bytes()?.to_vec()).ok()?);
        }
        (r.pos == body.len()).then_some(Journal {
            dicomdir,
            len,
            patches,
            files,
        })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// The journal's medium path.
pub fn path() -> String {
    format!("{}/{NAME}", super::STAGING)
}

/// Write the journal and make it durable.
pub fn write(m: &dyn Medium, j: &Journal) -> io::Result<()> {
    let p = path();
    let _ = m.remove(&p);
    m.create(&p)?;
    let r = m
        .write_at(&p, 0, &j.encode())
        .and_then(|_| m.sync(Some(&p)));
    if r.is_err() {
        let _ = m.remove(&p);
    }
    r
}

/// What [`replay`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    /// No journal.
    None,
    /// A complete journal: its patches are on the DICOMDIR and its files are gone.
    Applied { patches: usize, files: Vec<String> },
    /// A torn or stale journal (the DICOMDIR was not changed by it): removed.
    Discarded(String),
}

/// Finish an in-place delete that a crash interrupted (see the module comment). Returns the
/// files removed, so the caller can tidy their directories.
pub fn replay(m: &dyn Medium) -> io::Result<Replayed> {
    let p = path();
    let size = match m.stat(&p) {
        Ok(s) => s.size,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Replayed::None),
        Err(e) => return Err(e),
    };
    let discard = |why: String| -> io::Result<Replayed> {
        m.remove(&p)?;
        Ok(Replayed::Discarded(why))
    };
    if size > MAX {
        return discard(format!("{size} bytes, not a journal dicomfs wrote"));
    }
    let mut buf = vec![0u8; size as usize];
    let n = m.read_at(&p, 0, &mut buf)?;
    buf.truncate(n);
    let Some(j) = Journal::decode(&buf) else {
        return discard("torn: the delete it describes had not started".into());
    };
    let dd = match m.stat(&j.dicomdir) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return discard(format!("{} is gone", j.dicomdir))
        }
        Err(e) => return Err(e),
    };
    if dd.size != j.len as u64 {
        return discard(format!(
            "{} changed since ({} bytes, the journal says {})",
            j.dicomdir, dd.size, j.len
        ));
    }
    // Each place holds the old or the new bytes, or the DICOMDIR has moved on since.
    for pt in &j.patches {
        let mut cur = vec![0u8; pt.new.len()];
        let n = m.read_at(&j.dicomdir, pt.pos as u64, &mut cur)?;
        if n != cur.len() || (cur != pt.old && cur != pt.new) {
            return discard(format!("{} changed since at byte {}", j.dicomdir, pt.pos));
        }
    }
    for pt in &j.patches {
        m.write_at(&j.dicomdir, pt.pos as u64, &pt.new)?;
    }
    m.sync(Some(&j.dicomdir))?;
    let mut removed = Vec::new();
    for f in &j.files {
        match m.remove(f) {
            Ok(()) => removed.push(f.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    m.remove(&p)?;
    Ok(Replayed::Applied {
        patches: j.patches.len(),
        files: removed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Journal {
        Journal {
            dicomdir: "DICOMDIR".into(),
            len: 1234,
            patches: vec![
                Patch {
                    pos: 10,
                    old: vec![1, 2, 3, 4],
                    new: vec![5, 6, 7, 8],
                },
                Patch {
                    pos: 400,
                    old: vec![0; 12],
                    new: vec![9; 12],
                },
            ],
            files: vec!["P00001/S0001/E0001/I00001".into()],
        }
    }

    #[test]
    fn round_trip_and_every_torn_prefix_is_refused() {
        let j = sample();
        let b = j.encode();
        assert_eq!(Journal::decode(&b), Some(j));
        for n in 0..b.len() {
            assert_eq!(Journal::decode(&b[..n]), None, "prefix of {n} bytes");
        }
        for k in 0..b.len() {
            let mut c = b.clone();
            c[k] ^= 0x40;
            assert_eq!(Journal::decode(&c), None, "byte {k} flipped");
        }
    }
}

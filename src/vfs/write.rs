//! The write side of the views (File-set Updater by copying): create, write, close (ingest),
//! mkdir, unlink (M-DELETE), rmdir, rename and setattr. What each does on each kind of node is
//! in SEMANTICS.md.

use super::*;
use crate::dicomdir::file_id_problem;
use crate::fsu::Ingested;
use std::io;

/// Where a new name is created.
enum Place {
    /// A native directory, shown at this path; `strict` ones (made before this session, or by
    /// File ID assignment) only take File ID components.
    Native { shown: String, strict: bool },
    /// The alternate view, or a copy-in folder: any name, a File ID is assigned.
    Free,
}

/// Operating-system clutter that is dropped silently.
pub fn is_clutter(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let clutter =
        |n: &str| n == ".ds_store" || n.starts_with("._") || n == "thumbs.db" || n == "desktop.ini";
    // rsync's temporary name for NAME is .NAME.XXXXXX (NAME itself when it starts with a dot).
    let rsync_tmp = lower
        .rsplit_once('.')
        .filter(|(n, suffix)| suffix.len() == 6 && n.starts_with('.'))
        .map(|(n, _)| n);
    clutter(&lower) || rsync_tmp.is_some_and(|n| clutter(n) || clutter(&n[1..]))
}

#[cfg(test)]
#[test]
fn clutter_names() {
    for n in [
        ".DS_Store",
        "._IMG1",
        "Thumbs.db",
        "desktop.ini",
        ".DS_Store.9ZA4zT",
        "..DS_Store.abcdef",
        ".Thumbs.db.Xy12Ab",
    ] {
        assert!(is_clutter(n), "{n}");
    }
    for n in ["IMG1", "a.dcm", ".a.dcm.Xy12Ab", "DS_Store"] {
        assert!(!is_clutter(n), "{n}");
    }
}

/// rsync writes NAME as .NAME.XXXXXX and renames it when done: the File ID name it stands for.
fn rsync_final_name(name: &str) -> &str {
    name.strip_prefix('.')
        .and_then(|n| n.rsplit_once('.'))
        .filter(|(n, x)| x.len() == 6 && file_id_problem(n).is_none())
        .map(|(n, _)| n)
        .unwrap_or(name)
}

fn errno(path: &str, errno: i32, reason: impl Into<String>) -> Error {
    Error::rejected(path, errno, reason)
}

/// A copy failed (`err`, whose errno it keeps answering with `why`): its staged bytes at
/// `staged` go, and every later write, truncate and the close fail the same way.
fn fail_copy(
    medium: &dyn fsimpl::Medium,
    s: &mut Staged,
    staged: &str,
    err: Error,
    why: String,
) -> Error {
    let _ = medium.remove(staged);
    s.staged = None;
    s.dropped = Some(String::new());
    s.failed = Some((err.errno(), why));
    err
}

/// The refusal of a copy that already failed, again (logged at debug: it was reported once).
fn again(path: &str, errno: i32, reason: &str) -> Error {
    Error::Again {
        path: path.into(),
        reason: reason.into(),
        errno,
    }
}

fn depth(shown: &str) -> usize {
    if shown.is_empty() {
        0
    } else {
        shown.split('/').count()
    }
}

impl Vfs {
    fn need_writable(&self, what: &str) -> Result<()> {
        if self.live.writable {
            Ok(())
        } else {
            Err(Error::ReadOnly { path: what.into() })
        }
    }

    fn place(&self, parent: u64) -> Result<Place> {
        let nodes = self.nodes.read();
        let node = nodes.get(parent)?;
        match &node.data {
            Data::Native { shown, .. } if node.kind == Kind::Dir => Ok(Place::Native {
                shown: shown.to_string(),
                strict: !shown.is_empty() && !nodes.user_dirs.contains(&parent),
            }),
            Data::Virtual { .. } | Data::StagingDir { .. } => Ok(Place::Free),
            _ => Err(Error::medium(
                format!("inode {parent}"),
                io::Error::from_raw_os_error(libc::ENOTDIR),
            )),
        }
    }

    fn add_overlay(&self, parent: u64, name: &str, node: Node) -> u64 {
        let mut nodes = self.nodes.write();
        let ino = nodes.add(node);
        let old = nodes
            .overlay
            .entry(parent)
            .or_default()
            .insert(name.into(), ino);
        if let Some(old) = old {
            self.forget_overlay_node(&mut nodes, old);
        }
        ino
    }

    /// A replaced or removed overlay node: drop its staged bytes.
    fn forget_overlay_node(&self, nodes: &mut Nodes, ino: u64) {
        if let Ok(n) = nodes.get_mut(ino) {
            if let Data::Staged(Staged {
                staged: Some(p), ..
            }) = &n.data
            {
                let _ = self.live.medium.remove(p);
            }
            n.data = Data::Ghost {
                target: None,
                size: 0,
                mtime: SystemTime::now(),
            };
        }
    }

    /// The File ID a staged file asks for by its place and name (M-WRITE with a File ID).
    fn wanted_file_id(&self, parent: u64, name: &str) -> Option<String> {
        let name = rsync_final_name(name);
        match self.place(parent).ok()? {
            Place::Native { shown, .. } => {
                let fid = if shown.is_empty() {
                    name.to_string()
                } else {
                    format!("{}\\{name}", shown.replace('/', "\\"))
                };
                (file_id_problem(&fid).is_none() && name != DICOMDIR).then_some(fid)
            }
            Place::Free => None,
        }
    }

    /// Create a file to copy in. Returns its attributes.
    pub fn create(&self, parent: u64, name: &str) -> Result<Attr> {
        self.need_writable(name)?;
        if let Ok(i) = self.find(parent, name) {
            // A name copied in before may be copied in again; anything else exists.
            let ghost = matches!(
                self.nodes.read().get(i).map(|n| &n.data),
                Ok(Data::Ghost { .. })
            );
            if !ghost {
                return Err(errno(name, libc::EEXIST, "already exists"));
            }
        }
        let place = self.place(parent)?;
        let mut dropped = None;
        if is_clutter(name) {
            dropped = Some(format!("{name}: operating-system clutter, dropped"));
        } else if name.eq_ignore_ascii_case(DICOMDIR) {
            dropped = Some(format!(
                "{name}: a DICOMDIR copied in is dropped (dicomfs keeps the File-set's own)"
            ));
        } else if let Place::Native { shown, strict } = &place {
            let fid_ok = file_id_problem(rsync_final_name(name)).is_none() && depth(shown) < 8;
            if *strict && !fid_ok {
                let why = file_id_problem(name)
                    .unwrap_or_else(|| "a File ID has at most 8 components".into());
                return Err(errno(
                    &fsimpl::join(shown, name),
                    libc::EINVAL,
                    format!(
                        "not a File ID here ({why}); copy files to the mount's root or into a new folder, and dicomfs gives them File IDs"
                    ),
                ));
            }
        }
        let staged = match dropped {
            Some(_) => None,
            None => Some(self.live.stage()?),
        };
        let now = SystemTime::now();
        let ino = self.add_overlay(
            parent,
            name,
            Node {
                kind: Kind::File,
                data: Data::Staged(Staged {
                    parent,
                    name: name.into(),
                    staged,
                    dropped,
                    failed: None,
                    size: 0,
                    mtime: now,
                }),
            },
        );
        self.getattr(ino)
    }

    /// Open an existing file for writing. A name copied in before (a ghost) is copied in again
    /// when truncated; the DICOMDIR and instance files are immutable (EPERM).
    pub fn open_write(&self, ino: u64, truncate: bool) -> Result<()> {
        self.need_writable(&format!("inode {ino}"))?;
        let mut nodes = self.nodes.write();
        let node = nodes.get_mut(ino)?;
        match &mut node.data {
            Data::Staged(s) => {
                if truncate {
                    if let Some(p) = &s.staged {
                        self.live
                            .medium
                            .truncate(p, 0)
                            .map_err(|e| Error::medium(p.clone(), e))?;
                    }
                    s.size = 0;
                }
                Ok(())
            }
            Data::Ghost { .. } if truncate => {
                // Find where it lives to copy in again under the same name.
                let (parent, name) = nodes.overlay_entry(ino).ok_or(Error::NotFound {
                    path: format!("inode {ino}"),
                })?;
                drop(nodes);
                let dropped = is_clutter(&name).then(|| format!("{name}: clutter, dropped"));
                let staged = match dropped {
                    Some(_) => None,
                    None => Some(self.live.stage()?),
                };
                let mut nodes = self.nodes.write();
                nodes.get_mut(ino)?.data = Data::Staged(Staged {
                    parent,
                    name,
                    staged,
                    dropped,
                    failed: None,
                    size: 0,
                    mtime: SystemTime::now(),
                });
                Ok(())
            }
            Data::Ghost { .. } => {
                let name = nodes
                    .overlay_entry(ino)
                    .map(|(_, n)| n.to_string())
                    .unwrap_or_else(|| format!("inode {ino}"));
                Err(errno(
                    &name,
                    libc::EPERM,
                    "a copied-in instance cannot be modified; copy it again (truncating) or delete it",
                ))
            }
            Data::Native { shown, .. } => Err(errno(
                shown,
                libc::EPERM,
                if &**shown == DICOMDIR {
                    "the DICOMDIR is kept by dicomfs and cannot be written"
                } else {
                    "instance files are immutable: delete the file and copy the new one in"
                },
            )),
            _ => Err(Error::medium(
                format!("inode {ino}"),
                io::Error::from_raw_os_error(libc::EISDIR),
            )),
        }
    }

    /// Write to a file being copied in. The first bytes are checked for the Part-10 `DICM`
    /// prefix so a file that is not DICOM fails at once.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let mut nodes = self.nodes.write();
        let node = nodes.get_mut(ino)?;
        let Data::Staged(s) = &mut node.data else {
            return Err(errno(
                &format!("inode {ino}"),
                libc::EPERM,
                "only files being copied in can be written",
            ));
        };
        if let Some((no, why)) = &s.failed {
            return Err(again(&s.name, *no, why));
        }
        let end = offset + data.len() as u64;
        if let Some(p) = s.staged.clone() {
            if offset <= 128 && end >= 132 && s.dropped.is_none() {
                let k = (128 - offset) as usize;
                if &data[k..k + 4] != b"DICM" {
                    let why = "not a DICOM Part-10 file (no DICM at byte 128); nothing was stored";
                    let err = errno(&s.name, libc::EINVAL, why);
                    return Err(fail_copy(&*self.live.medium, s, &p, err, why.into()));
                }
            }
            if let Err(e) = self.live.medium.write_at(&p, offset, data) {
                // Nothing of a copy that failed is kept (ENOSPC: the medium is full).
                let err = Error::medium(s.name.to_string(), e);
                let why = format!("an earlier write failed: {err}");
                return Err(fail_copy(&*self.live.medium, s, &p, err, why));
            }
        }
        s.size = s.size.max(end);
        s.mtime = SystemTime::now();
        Ok(data.len())
    }

    /// A file being copied in was closed: ingest it (M-WRITE). Errors come back to close().
    pub fn flush(&self, ino: u64) -> Result<()> {
        let (parent, name, staged, dropped, mtime) = {
            let mut nodes = self.nodes.write();
            let node = nodes.get_mut(ino)?;
            let Data::Staged(s) = &node.data else {
                return Ok(());
            };
            if let Some((no, why)) = &s.failed {
                // close() of a copy whose write failed fails too: nothing was stored.
                let e = again(&s.name, *no, why);
                node.data = Data::Ghost {
                    target: None,
                    size: 0,
                    mtime: SystemTime::now(),
                };
                return Err(e);
            }
            let out = (
                s.parent,
                s.name.clone(),
                s.staged.clone(),
                s.dropped.clone(),
                s.mtime,
            );
            // Mark it as taken, so a second close of a duplicate descriptor does nothing.
            node.data = Data::Ghost {
                target: None,
                size: s.size,
                mtime: s.mtime,
            };
            out
        };
        let Some(staged) = staged else {
            match dropped.as_deref() {
                Some("") | None => {}
                Some(why) => log::info!("{why}"),
            }
            return Ok(());
        };
        let want = self.wanted_file_id(parent, &name);
        let r = self.live.ingest(&staged, &name, want.as_deref());
        let fid = match r {
            Ok(Ingested::Added(fid)) => {
                log::info!("{name}: added as {fid}");
                Some(fid)
            }
            Ok(Ingested::Same(fid)) => {
                log::info!("{name}: already on the medium as {fid} with the same bytes");
                Some(fid)
            }
            Ok(Ingested::Dropped(why)) => {
                log::info!("{name}: {why}");
                None
            }
            Err(e) => {
                // (Logged by whoever answers the close.) The name goes away: nothing stored.
                let mut nodes = self.nodes.write();
                if let Some(m) = nodes.overlay.get_mut(&parent) {
                    if m.get(&*name) == Some(&ino) {
                        m.remove(&*name);
                    }
                }
                return Err(e);
            }
        };
        self.refresh();
        let mut nodes = self.nodes.write();
        let target = fid.and_then(|f| nodes.by_path.get(f.replace('\\', "/").as_str()).copied());
        let size = match target.map(|t| nodes.get(t).map(|n| &n.data)) {
            Some(Ok(Data::Native { path, .. })) => {
                self.live.medium.stat(path).map(|s| s.size).unwrap_or(0)
            }
            _ => 0,
        };
        if let Ok(n) = nodes.get_mut(ino) {
            n.data = Data::Ghost {
                target,
                size,
                mtime,
            };
        }
        // The parent's native listing gets the new file from `Vfs::refresh` (`Changes::added`).
        Ok(())
    }

    /// Make a directory. A File ID component in a native directory makes a directory on the
    /// medium; any other name (where allowed) makes a copy-in folder.
    pub fn mkdir(&self, parent: u64, name: &str) -> Result<Attr> {
        self.need_writable(name)?;
        if self.find(parent, name).is_ok() {
            return Err(errno(name, libc::EEXIST, "already exists"));
        }
        match self.place(parent)? {
            Place::Native { shown, strict } => {
                let fid_ok = file_id_problem(name).is_none() && depth(&shown) < 7;
                if fid_ok {
                    let path = fsimpl::join(&shown, name);
                    self.live
                        .medium
                        .mkdir(&path)
                        .map_err(|e| Error::medium(path.clone(), e))?;
                    let mut nodes = self.nodes.write();
                    let ino = nodes.native(&path, &path, Kind::Dir);
                    nodes.user_dirs.insert(ino);
                    if let Ok(Node {
                        data: Data::Native { listing, .. },
                        ..
                    }) = nodes.get_mut(parent)
                    {
                        *listing = None;
                    }
                    drop(nodes);
                    return self.getattr(ino);
                }
                if strict {
                    return Err(errno(
                        &fsimpl::join(&shown, name),
                        libc::EINVAL,
                        "not a File ID directory name here (1-8 of A-Z 0-9 _, at most 7 levels); copy folders to the mount's root instead",
                    ));
                }
            }
            Place::Free => {}
        }
        let ino = self.add_overlay(
            parent,
            name,
            Node {
                kind: Kind::Dir,
                data: Data::StagingDir {
                    mtime: SystemTime::now(),
                },
            },
        );
        self.getattr(ino)
    }

    fn invalidate(&self, nodes: &mut Nodes, ino: u64) {
        if let Ok(Node {
            data: Data::Native { listing, stat, .. },
            ..
        }) = nodes.get_mut(ino)
        {
            *listing = None;
            *stat = None;
        }
    }

    /// Remove a name (M-DELETE for an instance, by its native or `.dcm` name).
    pub fn unlink(&self, parent: u64, name: &str) -> Result<()> {
        self.need_writable(name)?;
        let ino = self.find(parent, name)?;
        let mut nodes = self.nodes.write();
        if nodes
            .overlay
            .get(&parent)
            .and_then(|m| m.get(name))
            .is_some_and(|&i| i == ino)
        {
            if let Some(m) = nodes.overlay.get_mut(&parent) {
                m.remove(name);
            }
            self.forget_overlay_node(&mut nodes, ino);
            return Ok(());
        }
        let node = nodes.get(ino)?;
        let (path, shown) = match &node.data {
            Data::Native { path, shown, .. } if node.kind == Kind::File => {
                (path.to_string(), shown.to_string())
            }
            _ => {
                return Err(Error::medium(
                    name,
                    io::Error::from_raw_os_error(libc::EISDIR),
                ))
            }
        };
        if shown == DICOMDIR {
            return Err(errno(
                DICOMDIR,
                libc::EPERM,
                "the DICOMDIR is kept by dicomfs and cannot be deleted",
            ));
        }
        drop(nodes);
        let fid = shown.replace('/', "\\");
        match self.live.delete(&fid) {
            Ok(()) => log::info!("{fid}: deleted"),
            Err(Error::NotFound { .. }) => {
                // A file no record references: remove it as it is.
                self.live
                    .medium
                    .remove(&path)
                    .map_err(|e| Error::medium(path.clone(), e))?;
            }
            Err(e) => return Err(e),
        }
        let mut nodes = self.nodes.write();
        let up = shown.rsplit_once('/').map(|x| x.0).unwrap_or("");
        if let Some(&p) = nodes.by_path.get(up) {
            self.invalidate(&mut nodes, p);
        }
        self.invalidate(&mut nodes, ino);
        Ok(())
    }

    /// Remove a directory. A native one first has its pending deletes written.
    pub fn rmdir(&self, parent: u64, name: &str) -> Result<()> {
        self.need_writable(name)?;
        let ino = match self.find(parent, name) {
            Ok(i) => i,
            Err(e) => {
                // A directory goes away with its last instance (alternate view) or when the
                // deletes in it are written (native view).
                let gone = self.nodes.read().gone.contains(&(parent, name.into()));
                return if gone { Ok(()) } else { Err(e) };
            }
        };
        let data_kind = {
            let nodes = self.nodes.read();
            let n = nodes.get(ino)?;
            if n.kind != Kind::Dir {
                return Err(Error::medium(
                    name,
                    io::Error::from_raw_os_error(libc::ENOTDIR),
                ));
            }
            match &n.data {
                Data::StagingDir { .. } => 0,
                Data::Native { path, .. } => {
                    if path.is_empty() {
                        return Err(errno(name, libc::EBUSY, "the root"));
                    }
                    1
                }
                _ => 2,
            }
        };
        match data_kind {
            0 => {
                let mut nodes = self.nodes.write();
                if nodes.visible(ino, 0) && nodes.overlay.get(&ino).is_some_and(|m| !m.is_empty()) {
                    return Err(Error::medium(
                        name,
                        io::Error::from_raw_os_error(libc::ENOTEMPTY),
                    ));
                }
                if let Some(m) = nodes.overlay.remove(&ino) {
                    for (_, c) in m {
                        self.forget_overlay_node(&mut nodes, c);
                    }
                }
                if let Some(m) = nodes.overlay.get_mut(&parent) {
                    m.remove(name);
                }
                Ok(())
            }
            1 => {
                self.live.commit()?;
                let path = self.file_dir_path(ino)?;
                let r = match self.live.medium.rmdir(&path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(Error::medium(path, e)),
                };
                let mut nodes = self.nodes.write();
                self.invalidate(&mut nodes, parent);
                nodes.user_dirs.remove(&ino);
                nodes.overlay.remove(&ino);
                r
            }
            _ => {
                let empty = self.readdir(ino)?.is_empty();
                if empty {
                    Ok(())
                } else {
                    Err(Error::medium(
                        name,
                        io::Error::from_raw_os_error(libc::ENOTEMPTY),
                    ))
                }
            }
        }
    }

    fn file_dir_path(&self, ino: u64) -> Result<String> {
        let nodes = self.nodes.read();
        match &nodes.get(ino)?.data {
            Data::Native { path, .. } => Ok(path.to_string()),
            _ => Err(Error::NotFound {
                path: format!("inode {ino}"),
            }),
        }
    }

    /// Rename. Names being copied in (and their folders) move freely; File IDs never change.
    pub fn rename(&self, parent: u64, name: &str, newparent: u64, newname: &str) -> Result<()> {
        self.need_writable(name)?;
        let ino = self.find(parent, name)?;
        let nodes = self.nodes.read();
        let is_overlay = nodes
            .overlay
            .get(&parent)
            .and_then(|m| m.get(name))
            .is_some_and(|&i| i == ino);
        if !is_overlay {
            return Err(errno(
                name,
                libc::EPERM,
                "File IDs never change once assigned (PS3.10 8.5); copy and delete instead",
            ));
        }
        drop(nodes);
        // Onto an existing real entry: a ghost or a dropped file just goes away.
        let onto_real = self.listing(newparent)?.and_then(|l| l.get(newname, false));
        let mut nodes = self.nodes.write();
        if let Some(m) = nodes.overlay.get_mut(&parent) {
            m.remove(name);
        }
        if let Some(real) = onto_real {
            let staged = matches!(nodes.get(ino)?.data, Data::Staged(_));
            if staged {
                nodes
                    .overlay
                    .entry(parent)
                    .or_default()
                    .insert(name.into(), ino);
                return Err(errno(newname, libc::EEXIST, "exists"));
            }
            // The kernel now takes the new name for this inode until it looks it up again:
            // let the inode stand for the real file (rsync renames onto File IDs it wrote, and
            // onto the DICOMDIR of a File-set it copies).
            if let Ok(Node {
                data: Data::Ghost { target, .. },
                ..
            }) = nodes.get_mut(ino)
            {
                *target = Some(real);
            }
            return Ok(());
        }
        let old = nodes
            .overlay
            .entry(newparent)
            .or_default()
            .insert(newname.into(), ino);
        if let Some(old) = old.filter(|&o| o != ino) {
            self.forget_overlay_node(&mut nodes, old);
        }
        if let Ok(Node {
            data: Data::Staged(s),
            ..
        }) = nodes.get_mut(ino)
        {
            s.parent = newparent;
            s.name = newname.into();
        }
        Ok(())
    }

    /// Change size or times. Files being copied in take both; names copied in and folders
    /// keep the times they are given; the DICOMDIR and instances refuse a size change and
    /// ignore the rest (rsync sets times on directories it did not make).
    pub fn setattr(&self, ino: u64, size: Option<u64>, mtime: Option<SystemTime>) -> Result<Attr> {
        {
            let mut nodes = self.nodes.write();
            let node = nodes.get_mut(ino)?;
            match &mut node.data {
                Data::Staged(s) => {
                    if let Some((no, why)) = &s.failed {
                        if size.is_some() {
                            return Err(again(&s.name, *no, why));
                        }
                    }
                    if let Some(n) = size {
                        if let Some(p) = s.staged.clone() {
                            if let Err(e) = self.live.medium.truncate(&p, n) {
                                // Like a failed write: nothing of the copy is kept.
                                let err = Error::medium(s.name.to_string(), e);
                                let why = format!("an earlier truncate failed: {err}");
                                return Err(fail_copy(&*self.live.medium, s, &p, err, why));
                            }
                        }
                        s.size = n;
                    }
                    if let Some(t) = mtime {
                        s.mtime = t;
                    }
                }
                Data::Ghost {
                    size: gs, mtime: m, ..
                } => {
                    if size.is_some_and(|n| n != *gs) {
                        return Err(errno(
                            &format!("inode {ino}"),
                            libc::EPERM,
                            "a copied-in instance cannot be modified",
                        ));
                    }
                    if let Some(t) = mtime {
                        *m = t;
                    }
                }
                Data::StagingDir { mtime: m } => {
                    if let Some(t) = mtime {
                        *m = t;
                    }
                }
                Data::Native { shown, .. } if size.is_some() && node.kind == Kind::File => {
                    let shown = shown.to_string();
                    drop(nodes);
                    let cur = self.getattr(ino)?.size;
                    if size != Some(cur) {
                        return Err(errno(
                            &shown,
                            libc::EPERM,
                            "the DICOMDIR and instance files cannot be truncated",
                        ));
                    }
                }
                _ => {}
            }
        }
        self.getattr(ino)
    }

    /// Make everything written so far durable (fsync, sync, unmount).
    pub fn sync(&self) -> Result<()> {
        self.live.sync()
    }
}

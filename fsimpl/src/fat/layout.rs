//! The on-disk layout of a FAT volume: the boot sector (BPB), the allocation table, and
//! 32-byte directory entries. Pure encoding and decoding; no I/O.

use std::io;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// FAT12, FAT16 or FAT32: decided by the count of data clusters (Microsoft's FAT spec).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

/// End of chain, as kept in memory (any value >= the kind's EOC minimum reads as this).
pub const EOC: u32 = 0x0FFF_FFFF;
/// A bad cluster, as kept in memory.
pub const BAD: u32 = 0x0FFF_FFF7;

/// Where everything is, from the boot sector.
#[derive(Clone, Debug)]
pub struct Geometry {
    pub kind: Kind,
    pub bytes_per_sector: u32,
    pub cluster_size: u32,
    pub reserved_sectors: u32,
    pub fats: u32,
    /// Bytes of one FAT.
    pub fat_bytes: u64,
    /// Bytes of the FAT that hold entries (whole sectors): what is read and kept in memory.
    pub fat_used: u64,
    /// Byte offset of the FAT in use (the first unless mirroring is off).
    pub fat_offset: u64,
    /// Byte offsets of every FAT copy written to.
    pub fat_copies: Vec<u64>,
    /// FAT12/16: the fixed root directory region (offset, bytes). FAT32: (0, 0).
    pub root_region: (u64, u64),
    /// FAT32: the first cluster of the root directory.
    pub root_cluster: u32,
    /// Byte offset of cluster 2.
    pub data_offset: u64,
    /// Number of data clusters: valid cluster numbers are 2 ..= clusters + 1.
    pub clusters: u32,
    /// FAT32: byte offset of the FSInfo sector.
    pub fsinfo: Option<u64>,
    /// Offset in the boot sector of the byte whose bit 0 is the dirty flag.
    pub dirty_byte: usize,
    /// Offset in the boot sector of the 11-byte volume label.
    pub label_at: usize,
}

impl Geometry {
    pub fn parse(b: &[u8], dev_len: u64) -> io::Result<Geometry> {
        if b.len() < 512 {
            return Err(invalid("boot sector shorter than 512 bytes".into()));
        }
        let u16at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u32;
        let u32at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let bps = u16at(11);
        let spc = b[13] as u32;
        let reserved = u16at(14);
        let fats = b[16] as u32;
        let root_entries = u16at(17);
        let total = match u16at(19) {
            0 => u32at(32),
            n => n,
        } as u64;
        let fat_sectors = match u16at(22) {
            0 => u32at(36),
            n => n,
        } as u64;
        if !matches!(bps, 512 | 1024 | 2048 | 4096) || spc == 0 || !spc.is_power_of_two() {
            return Err(invalid(format!(
                "boot sector: {bps} bytes per sector, {spc} sectors per cluster"
            )));
        }
        if reserved == 0 || fats == 0 || fats > 4 || fat_sectors == 0 || total == 0 {
            return Err(invalid(format!(
                "boot sector: {reserved} reserved sectors, {fats} FATs of {fat_sectors} sectors, {total} sectors"
            )));
        }
        let bps64 = bps as u64;
        let root_bytes = root_entries as u64 * 32;
        let root_sectors = root_bytes.div_ceil(bps64);
        let meta = reserved as u64 + fats as u64 * fat_sectors + root_sectors;
        if meta >= total {
            return Err(invalid("boot sector: no room for data clusters".into()));
        }
        let clusters64 = (total - meta) / spc as u64;
        let kind = if clusters64 < 4085 {
            Kind::Fat12
        } else if clusters64 < 65525 {
            Kind::Fat16
        } else {
            Kind::Fat32
        };
        if kind == Kind::Fat32 && root_entries != 0 {
            return Err(invalid(
                "FAT32 boot sector with a fixed root directory".into(),
            ));
        }
        if kind != Kind::Fat32 && root_entries == 0 {
            return Err(invalid(
                "FAT12/16 boot sector without root directory entries".into(),
            ));
        }
        let clusters = clusters64.min(0x0FFF_FFF5) as u32;
        let fat_bytes = fat_sectors * bps64;
        let need = match kind {
            Kind::Fat12 => (clusters as u64 + 2) * 3 / 2 + 1,
            Kind::Fat16 => (clusters as u64 + 2) * 2,
            Kind::Fat32 => (clusters as u64 + 2) * 4,
        };
        if fat_bytes < need {
            return Err(invalid(format!(
                "FAT of {fat_bytes} bytes is too small for {clusters} clusters"
            )));
        }
        if total * bps64 > dev_len {
            return Err(invalid(format!(
                "the volume claims {} bytes but the device has {dev_len}",
                total * bps64
            )));
        }
        let fat0 = reserved as u64 * bps64;
        let (fat_offset, fat_copies) = if kind == Kind::Fat32 && u16at(40) & 0x80 != 0 {
            // Mirroring off: only the active FAT is used.
            let active = (u16at(40) & 0x0F).min(fats - 1) as u64;
            let o = fat0 + active * fat_bytes;
            (o, vec![o])
        } else {
            (
                fat0,
                (0..fats as u64).map(|i| fat0 + i * fat_bytes).collect(),
            )
        };
        let root_offset = fat0 + fats as u64 * fat_bytes;
        let data_offset = root_offset + root_sectors * bps64;
        let (root_region, root_cluster, fsinfo) = if kind == Kind::Fat32 {
            let rc = u32at(44);
            if rc < 2 || rc > clusters + 1 {
                return Err(invalid(format!("FAT32 root cluster {rc} out of range")));
            }
            let fsi = u16at(48);
            let fsinfo =
                (fsi != 0 && fsi != 0xFFFF && fsi < reserved).then_some(fsi as u64 * bps64);
            ((0, 0), rc, fsinfo)
        } else {
            ((root_offset, root_bytes), 0, None)
        };
        Ok(Geometry {
            kind,
            bytes_per_sector: bps,
            cluster_size: bps * spc,
            reserved_sectors: reserved,
            fats,
            fat_bytes,
            fat_used: need.div_ceil(bps64) * bps64,
            fat_offset,
            fat_copies,
            root_region,
            root_cluster,
            data_offset,
            clusters,
            fsinfo,
            dirty_byte: if kind == Kind::Fat32 { 0x41 } else { 0x25 },
            label_at: if kind == Kind::Fat32 { 0x47 } else { 0x2B },
        })
    }

    /// Byte offset of a data cluster.
    pub fn cluster_offset(&self, c: u32) -> u64 {
        self.data_offset + (c as u64 - 2) * self.cluster_size as u64
    }

    pub fn valid_cluster(&self, c: u32) -> bool {
        c >= 2 && c <= self.clusters + 1
    }

    /// Read entry `n` of a FAT image, normalized (EOC and BAD as the constants above).
    pub fn get(&self, fat: &[u8], n: u32) -> u32 {
        let v = match self.kind {
            Kind::Fat12 => {
                let o = n as usize + n as usize / 2;
                let w = u16::from_le_bytes([fat[o], fat[o + 1]]) as u32;
                if n & 1 == 0 {
                    w & 0xFFF
                } else {
                    w >> 4
                }
            }
            Kind::Fat16 => {
                let o = n as usize * 2;
                u16::from_le_bytes([fat[o], fat[o + 1]]) as u32
            }
            Kind::Fat32 => {
                let o = n as usize * 4;
                u32::from_le_bytes([fat[o], fat[o + 1], fat[o + 2], fat[o + 3]]) & 0x0FFF_FFFF
            }
        };
        let (bad, eoc) = match self.kind {
            Kind::Fat12 => (0xFF7, 0xFF8),
            Kind::Fat16 => (0xFFF7, 0xFFF8),
            Kind::Fat32 => (0x0FFF_FFF7, 0x0FFF_FFF8),
        };
        if v >= eoc {
            EOC
        } else if v == bad {
            BAD
        } else {
            v
        }
    }

    /// Write entry `n` into a FAT image; returns the byte range touched.
    pub fn set(&self, fat: &mut [u8], n: u32, v: u32) -> (usize, usize) {
        match self.kind {
            Kind::Fat12 => {
                let v = if v == EOC {
                    0xFFF
                } else if v == BAD {
                    0xFF7
                } else {
                    v & 0xFFF
                };
                let o = n as usize + n as usize / 2;
                let mut w = u16::from_le_bytes([fat[o], fat[o + 1]]);
                if n & 1 == 0 {
                    w = (w & 0xF000) | v as u16;
                } else {
                    w = (w & 0x000F) | ((v as u16) << 4);
                }
                fat[o..o + 2].copy_from_slice(&w.to_le_bytes());
                (o, o + 2)
            }
            Kind::Fat16 => {
                let v = if v == EOC {
                    0xFFFF
                } else if v == BAD {
                    0xFFF7
                } else {
                    v & 0xFFFF
                };
                let o = n as usize * 2;
                fat[o..o + 2].copy_from_slice(&(v as u16).to_le_bytes());
                (o, o + 2)
            }
            Kind::Fat32 => {
                let o = n as usize * 4;
                let old = u32::from_le_bytes([fat[o], fat[o + 1], fat[o + 2], fat[o + 3]]);
                let v = (old & 0xF000_0000) | (v & 0x0FFF_FFFF);
                fat[o..o + 4].copy_from_slice(&v.to_le_bytes());
                (o, o + 4)
            }
        }
    }

    /// The "clean shutdown" bit of FAT[1] (FAT16/32; Windows reads it).
    pub fn clean_bit(&self) -> Option<u32> {
        match self.kind {
            Kind::Fat12 => None,
            Kind::Fat16 => Some(0x8000),
            Kind::Fat32 => Some(0x0800_0000),
        }
    }
}

pub const ATTR_READ_ONLY: u8 = 0x01;
pub const ATTR_HIDDEN: u8 = 0x02;
pub const ATTR_SYSTEM: u8 = 0x04;
pub const ATTR_VOLUME: u8 = 0x08;
pub const ATTR_DIR: u8 = 0x10;
pub const ATTR_ARCHIVE: u8 = 0x20;
pub const ATTR_LFN: u8 = 0x0F;

/// A decoded 32-byte short directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub short: [u8; 11],
    pub attr: u8,
    pub nt_case: u8,
    pub ctime_tenth: u8,
    pub ctime: u16,
    pub cdate: u16,
    pub adate: u16,
    pub first: u32,
    pub mtime: u16,
    pub mdate: u16,
    pub size: u32,
}

impl Entry {
    pub fn decode(e: &[u8]) -> Entry {
        let u16at = |o: usize| u16::from_le_bytes([e[o], e[o + 1]]);
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[0..11]);
        if short[0] == 0x05 {
            short[0] = 0xE5;
        }
        Entry {
            short,
            attr: e[11],
            nt_case: e[12],
            ctime_tenth: e[13],
            ctime: u16at(14),
            cdate: u16at(16),
            adate: u16at(18),
            first: ((u16at(20) as u32) << 16) | u16at(26) as u32,
            mtime: u16at(22),
            mdate: u16at(24),
            size: u32::from_le_bytes([e[28], e[29], e[30], e[31]]),
        }
    }

    pub fn encode(&self, fat32: bool) -> [u8; 32] {
        let mut e = [0u8; 32];
        e[0..11].copy_from_slice(&self.short);
        if e[0] == 0xE5 {
            e[0] = 0x05;
        }
        e[11] = self.attr;
        e[12] = self.nt_case;
        e[13] = self.ctime_tenth;
        e[14..16].copy_from_slice(&self.ctime.to_le_bytes());
        e[16..18].copy_from_slice(&self.cdate.to_le_bytes());
        e[18..20].copy_from_slice(&self.adate.to_le_bytes());
        let hi = if fat32 { (self.first >> 16) as u16 } else { 0 };
        e[20..22].copy_from_slice(&hi.to_le_bytes());
        e[22..24].copy_from_slice(&self.mtime.to_le_bytes());
        e[24..26].copy_from_slice(&self.mdate.to_le_bytes());
        e[26..28].copy_from_slice(&(self.first as u16).to_le_bytes());
        e[28..32].copy_from_slice(&self.size.to_le_bytes());
        e
    }

    /// The short name as shown: `NAME.EXT`, with the NT lowercase bits applied if `nt`.
    pub fn display(&self, nt: bool) -> String {
        let conv = |bytes: &[u8], lower: bool| -> String {
            let s: String = bytes
                .iter()
                .map(|&b| if b < 0x80 { b as char } else { cp437(b) })
                .collect::<String>()
                .trim_end_matches(' ')
                .to_string();
            if lower {
                s.to_ascii_lowercase()
            } else {
                s
            }
        };
        let base = conv(&self.short[0..8], nt && self.nt_case & 0x08 != 0);
        let ext = conv(&self.short[8..11], nt && self.nt_case & 0x10 != 0);
        if ext.is_empty() {
            base
        } else {
            format!("{base}.{ext}")
        }
    }
}

/// Code page 437 upper half, for short names written by DOS-era tools.
fn cp437(b: u8) -> char {
    const HI: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";
    HI.chars().nth(b as usize - 0x80).unwrap_or('_')
}

/// The 11-byte short name for `name` if it is one dicomfs may create: 1-8 characters of
/// `A-Z 0-9 _ -` and optionally `.` and 1-3 more. Lowercase or longer names are refused, so
/// no long-name entry is ever needed.
pub fn short_name(name: &str) -> Option<[u8; 11]> {
    let ok = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    let (base, ext) = match name.split_once('.') {
        Some((b, e)) => {
            if !ok(e, 3) {
                return None;
            }
            (b, e)
        }
        None => (name, ""),
    };
    if !ok(base, 8) {
        return None;
    }
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base.as_bytes());
    out[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Some(out)
}

/// Checksum of a short name, as carried by its long-name entries.
pub fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |s, &b| {
        ((s & 1) << 7).wrapping_add(s >> 1).wrapping_add(b)
    })
}

/// The UCS-2 characters of one long-name entry (13 of them, 0x0000/0xFFFF padding included).
pub fn lfn_chars(e: &[u8]) -> [u16; 13] {
    let mut out = [0u16; 13];
    let offs = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
    for (i, &o) in offs.iter().enumerate() {
        out[i] = u16::from_le_bytes([e[o], e[o + 1]]);
    }
    out
}

/// FAT date and time (UTC) for a system time.
pub fn fat_time(t: std::time::SystemTime) -> (u16, u16, u8) {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil(days);
    if y < 1980 {
        return (0, (1 << 5) | 1, 0);
    }
    let y = y.min(2107);
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time =
        (((rem / 3600) as u16) << 11) | ((((rem / 60) % 60) as u16) << 5) | ((rem % 60) / 2) as u16;
    (time, date, ((rem % 2) * 100) as u8)
}

/// A system time for a FAT date and time (UTC); a zero date is the epoch.
pub fn sys_time(date: u16, time: u16) -> std::time::SystemTime {
    if date == 0 {
        return std::time::UNIX_EPOCH;
    }
    let y = 1980 + (date >> 9) as i64;
    let m = ((date >> 5) & 0x0F).clamp(1, 12) as i64;
    let d = (date & 0x1F).max(1) as i64;
    let days = days_from_civil(y, m, d);
    let secs = days * 86400
        + ((time >> 11) as i64) * 3600
        + (((time >> 5) & 0x3F) as i64) * 60
        + ((time & 0x1F) as i64) * 2;
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64)
}

// Howard Hinnant's civil-from-days and days-from-civil.
fn civil(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(&short_name("DICOMDIR").unwrap(), b"DICOMDIR   ");
        assert_eq!(&short_name("DICOMFS.TMP").unwrap(), b"DICOMFS TMP");
        assert!(short_name("dicomdir").is_none());
        assert!(short_name("TOOLONGNAME").is_none());
        assert!(short_name("A.BCDE").is_none());
        assert!(short_name("").is_none());
        let e = Entry {
            short: *b"README  TXT",
            attr: ATTR_ARCHIVE,
            nt_case: 0x18,
            ctime_tenth: 0,
            ctime: 0,
            cdate: 0,
            adate: 0,
            first: 0x0012_3456,
            mtime: 0,
            mdate: 0,
            size: 7,
        };
        assert_eq!(e.display(false), "README.TXT");
        assert_eq!(e.display(true), "readme.txt");
        assert_eq!(Entry::decode(&e.encode(true)), e);
    }

    #[test]
    fn times() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let (time, date, _) = fat_time(t);
        assert_eq!(sys_time(date, time), t);
    }
}

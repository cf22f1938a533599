//! Text decoding by Specific Character Set (0008,0005), PS3.5 6.1.
//!
//! ISO_IR 192 (UTF-8), ISO_IR 100 (Latin-1) and the default repertoire are exact. Other single-byte
//! sets are decoded as Latin-1 and ISO 2022 escape sequences are dropped, so names stay readable
//! even when a byte or two comes out wrong; nothing here fails.

/// Decode `bytes` (already trimmed) as text in the character set named by `charset` (the value of
/// Specific Character Set, possibly multi-valued with `\`).
pub fn decode_text(bytes: &[u8], charset: &str) -> String {
    let first = charset.split('\\').next().unwrap_or("").trim();
    let term = charset
        .split('\\')
        .find(|t| !t.trim().is_empty())
        .unwrap_or("")
        .trim();
    if term == "ISO_IR 192" || first == "ISO_IR 192" {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    if bytes.is_ascii() && !bytes.contains(&0x1B) {
        // The common case: nothing to map.
        return String::from_utf8_lossy(bytes).into_owned();
    }
    if term == "GB18030" || term == "GBK" {
        // Not mapped: keep the ASCII, mark the rest.
        return bytes
            .iter()
            .map(|&b| if b.is_ascii() { b as char } else { '\u{FFFD}' })
            .collect();
    }
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == 0x1B {
            // ISO 2022 escape: ESC followed by intermediate bytes (0x20-0x2F) and a final byte.
            i += 1;
            while i < bytes.len() && (0x20..=0x2F).contains(&bytes[i]) {
                i += 1;
            }
            i += 1;
            continue;
        }
        out.push(b as char); // Latin-1: byte value == code point
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin1_and_utf8() {
        assert_eq!(decode_text(b"M\xfcller", "ISO_IR 100"), "Müller");
        assert_eq!(decode_text("Müller".as_bytes(), "ISO_IR 192"), "Müller");
        assert_eq!(decode_text(b"Smith", ""), "Smith");
        assert_eq!(decode_text(b"\x1b(BYamada", "\\ISO 2022 IR 87"), "Yamada");
    }
}

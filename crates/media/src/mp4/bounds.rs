//! A bounds pass over a `moov` or `moof` box tree before mp4-atom decodes it.
//!
//! mp4-atom trusts some entry counts when it allocates (a fuzzed `sgpd` claiming 16 M
//! entries in 10 bytes made it allocate gigabytes). This pass, hand-written because it
//! must run before any decoder allocates, checks with headers and counts only that every
//! child box fits its parent and that every table's entry count fits the bytes carrying
//! it, so decoding is bounded by the box's size.

/// Containers whose children are boxes.
const CONTAINERS: [&[u8; 4]; 13] = [
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex", b"moof", b"traf",
    b"udta", b"mfra", b"sinf",
];

/// Why a box tree was refused.
pub(super) type BoundsError = String;

/// Checks the box at the start of `data` (a whole `moov`/`moof` box) and its subtree.
pub(super) fn check(data: &[u8]) -> Result<(), BoundsError> {
    check_boxes(data, 0)
}

fn be32(d: &[u8], at: usize) -> Option<u32> {
    d.get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn check_boxes(data: &[u8], depth: usize) -> Result<(), BoundsError> {
    if depth > 16 {
        return Err("boxes nested too deeply".into());
    }
    let mut off = 0usize;
    while off < data.len() {
        let rest = &data[off..];
        if rest.len() < 8 {
            // Trailing padding shorter than a header is tolerated, as mp4-atom does.
            return Ok(());
        }
        let size32 = be32(rest, 0).unwrap_or(0);
        let kind: [u8; 4] = [rest[4], rest[5], rest[6], rest[7]];
        let (size, header) = match size32 {
            0 => (rest.len(), 8),
            1 => {
                let big = rest
                    .get(8..16)
                    .map(|b| u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .ok_or("truncated largesize")?;
                (usize::try_from(big).unwrap_or(usize::MAX), 16)
            }
            n => (n as usize, 8),
        };
        let name = String::from_utf8_lossy(&kind).into_owned();
        if size < header || size > rest.len() {
            return Err(format!(
                "box {name:?} of {size} bytes does not fit its parent ({} bytes left)",
                rest.len()
            ));
        }
        let body = &rest[header..size];
        if CONTAINERS.iter().any(|c| **c == kind) {
            check_boxes(body, depth + 1)?;
        } else {
            check_table(&kind, body).map_err(|e| format!("box {name:?}: {e}"))?;
        }
        off += size;
    }
    Ok(())
}

/// Entry count × smallest entry size must fit the table's payload.
fn check_table(kind: &[u8; 4], body: &[u8]) -> Result<(), BoundsError> {
    let version = body.first().copied().unwrap_or(0);
    let flags = be32(body, 0).unwrap_or(0) & 0x00ff_ffff;
    // (offset of the count, bytes per entry at least, offset of the first entry)
    let (count_at, entry, first) = match kind {
        b"stts" | b"ctts" => (4, 8, 8),
        b"stsc" => (4, 12, 8),
        b"stco" | b"stss" | b"stps" => (4, 4, 8),
        b"co64" => (4, 8, 8),
        b"stsz" => {
            // Entries follow only when there is no constant sample size.
            let constant = be32(body, 4).unwrap_or(0);
            (8, if constant == 0 { 4 } else { 0 }, 12)
        }
        b"elst" => (4, if version == 1 { 20 } else { 12 }, 8),
        b"sbgp" => {
            if version == 1 {
                (12, 8, 16)
            } else {
                (8, 8, 12)
            }
        }
        b"sgpd" => match version {
            0 => (8, 1, 12),
            _ => {
                let default_length = be32(body, 8).unwrap_or(0) as usize;
                let per_entry = if default_length == 0 {
                    4
                } else {
                    default_length
                };
                let count_at = if version >= 2 { 16 } else { 12 };
                (count_at, per_entry, count_at + 4)
            }
        },
        b"stsd" | b"dref" => (4, 8, 8),
        b"trun" => {
            let per_sample = [0x100u32, 0x200, 0x400, 0x800]
                .iter()
                .filter(|f| flags & **f != 0)
                .count()
                * 4;
            let first = 8 + if flags & 1 != 0 { 4 } else { 0 } + if flags & 4 != 0 { 4 } else { 0 };
            (4, per_sample, first)
        }
        _ => return Ok(()),
    };
    let Some(count) = be32(body, count_at) else {
        return Err("truncated before its entry count".into());
    };
    let payload = body.len().saturating_sub(first);
    let needed = (count as usize).saturating_mul(entry);
    if needed > payload {
        return Err(format!(
            "{count} entries need at least {needed} bytes, the box has {payload}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn sane_tables_pass_and_lying_counts_fail() {
        let stts = bx(b"stts", &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 4, 0]);
        let moov = bx(
            b"moov",
            &bx(b"trak", &bx(b"mdia", &bx(b"minf", &bx(b"stbl", &stts)))),
        );
        assert!(check(&moov).is_ok());
        // The fuzzed case: sgpd v1 claiming 16 M entries in 10 bytes.
        let sgpd = bx(
            b"sgpd",
            &[
                1, 0, 0, 0, b'r', b'o', b'l', b'l', 0, 0, 0, 2, 1, 0, 0, 0, 0, 0,
            ],
        );
        let moov = bx(b"moov", &bx(b"stbl", &sgpd));
        let e = check(&moov).unwrap_err();
        assert!(e.contains("sgpd") && e.contains("16777216"), "{e}");
        // A child larger than its parent.
        let mut bad = bx(b"stbl", &stts);
        bad.truncate(bad.len() - 4);
        let moov = bx(b"moov", &bad);
        assert!(check(&moov).is_err());
        // stsz with a constant size needs no entries.
        let stsz = bx(b"stsz", &[0, 0, 0, 0, 0, 0, 4, 0, 0, 0xff, 0xff, 0xff]);
        assert!(check(&bx(b"stbl", &stsz)).is_ok());
        let stsz = bx(b"stsz", &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]);
        assert!(check(&bx(b"stbl", &stsz)).is_err());
    }
}

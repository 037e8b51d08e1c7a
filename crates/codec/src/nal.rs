//! Length-prefixed NAL unit framing (ISO/IEC 14496-15 sample format).

use crate::cursor::Cursor;

/// Splits a sample of length-prefixed NAL units (`length_size` is 1..=4 bytes) into the NAL units.
/// Zero-length units are skipped; a truncated length or unit is an error.
pub(crate) fn split_length_prefixed(
    data: &[u8],
    length_size: usize,
) -> Result<Vec<&[u8]>, &'static str> {
    let mut cur = Cursor::new(data);
    let mut nals = Vec::new();
    while !cur.remaining().is_empty() {
        let len = cur
            .uint(length_size)
            .ok_or("truncated NAL unit length field")?;
        let len = usize::try_from(len).map_err(|_| "NAL unit length too large")?;
        let nal = cur
            .take(len)
            .ok_or("NAL unit runs past the end of the sample")?;
        if !nal.is_empty() {
            nals.push(nal);
        }
    }
    Ok(nals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_rejects_truncation() {
        let data = [0, 0, 0, 2, 0x65, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0x41];
        assert_eq!(
            split_length_prefixed(&data, 4).unwrap(),
            vec![&[0x65, 1][..], &[0x41][..]]
        );
        assert!(split_length_prefixed(&[0, 0, 0, 3, 1], 4).is_err());
        assert!(split_length_prefixed(&[0, 0], 4).is_err());
        assert_eq!(split_length_prefixed(&[1, 9], 1).unwrap(), vec![&[9][..]]);
    }
}

//! `$`-interleaved binary frames (RFC 2326 §10.12).

use bytes::{BufMut, BytesMut};

/// Largest payload an interleaved frame can carry.
pub const MAX_PAYLOAD: usize = u16::MAX as usize;

/// The payload does not fit in an interleaved frame.
#[derive(thiserror::Error, Debug, Clone, Copy, PartialEq, Eq)]
#[error("interleaved payload of {len} bytes exceeds {MAX_PAYLOAD}")]
pub struct FrameTooLarge {
    /// Length of the rejected payload.
    pub len: usize,
}

/// The 4-byte `$` header for an interleaved frame.
pub fn header(channel: u8, len: u16) -> [u8; 4] {
    let [hi, lo] = len.to_be_bytes();
    [b'$', channel, hi, lo]
}

/// Appends a complete interleaved frame (header and payload) to `out`.
pub fn encode(channel: u8, payload: &[u8], out: &mut BytesMut) -> Result<(), FrameTooLarge> {
    let len = u16::try_from(payload.len()).map_err(|_| FrameTooLarge { len: payload.len() })?;
    out.reserve(4 + payload.len());
    out.put_slice(&header(channel, len));
    out.put_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout() {
        assert_eq!(header(1, 0x0203), [b'$', 1, 2, 3]);
    }

    #[test]
    fn encode_limits() {
        let mut out = BytesMut::new();
        assert_eq!(encode(7, b"ab", &mut out), Ok(()));
        assert_eq!(&out[..], b"$\x07\x00\x02ab");
        let big = vec![0u8; MAX_PAYLOAD];
        assert_eq!(encode(0, &big, &mut out), Ok(()));
        let too_big = vec![0u8; MAX_PAYLOAD + 1];
        assert_eq!(
            encode(0, &too_big, &mut out),
            Err(FrameTooLarge {
                len: MAX_PAYLOAD + 1
            })
        );
    }
}

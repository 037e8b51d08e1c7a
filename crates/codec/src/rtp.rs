//! RTP packet assembly: fixed 12-byte headers, sequence numbering, all-or-nothing emission.

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the fixed RTP header this crate writes (no CSRCs, no extension).
pub(crate) const HEADER_LEN: usize = 12;

/// One packet being built: header space followed by its payload.
struct Pending {
    buf: BytesMut,
    timestamp: u32,
    marker: bool,
}

/// Packets of one sample, staged so that a sample that turns out malformed emits nothing and consumes no
/// sequence numbers.
#[derive(Default)]
pub(crate) struct Staging {
    packets: Vec<Pending>,
}

impl Staging {
    /// Stages a packet whose payload is the concatenation of `parts`.
    pub(crate) fn push(&mut self, timestamp: u32, marker: bool, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
        buf.put_bytes(0, HEADER_LEN);
        for part in parts {
            buf.extend_from_slice(part);
        }
        self.packets.push(Pending {
            buf,
            timestamp,
            marker,
        });
    }

    /// Sets the marker bit on the last staged packet, if any.
    pub(crate) fn mark_last(&mut self) {
        if let Some(last) = self.packets.last_mut() {
            last.marker = true;
        }
    }

    /// Number of staged packets.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.packets.len()
    }
}

/// Writes RTP headers with a fixed payload type and SSRC and an incrementing, wrapping sequence number.
#[derive(Debug, Clone)]
pub(crate) struct Sequencer {
    payload_type: u8,
    ssrc: u32,
    next_sequence: u16,
}

impl Sequencer {
    /// A sequencer whose first packet gets `initial_sequence`.
    pub(crate) fn new(payload_type: u8, ssrc: u32, initial_sequence: u16) -> Self {
        Sequencer {
            payload_type: payload_type & 0x7f,
            ssrc,
            next_sequence: initial_sequence,
        }
    }

    /// Sequence number the next packet will get.
    pub(crate) fn next_sequence(&self) -> u16 {
        self.next_sequence
    }

    /// Writes the headers of the staged packets and appends them to `out`.
    pub(crate) fn commit(&mut self, staging: Staging, out: &mut Vec<Bytes>) {
        out.reserve(staging.packets.len());
        for mut p in staging.packets {
            let mut header = [0u8; HEADER_LEN];
            header[0] = 0x80;
            header[1] = (u8::from(p.marker) << 7) | self.payload_type;
            header[2..4].copy_from_slice(&self.next_sequence.to_be_bytes());
            header[4..8].copy_from_slice(&p.timestamp.to_be_bytes());
            header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
            if let Some(space) = p.buf.get_mut(..HEADER_LEN) {
                space.copy_from_slice(&header);
            }
            self.next_sequence = self.next_sequence.wrapping_add(1);
            out.push(p.buf.freeze());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_headers_and_wraps() {
        let mut seq = Sequencer::new(96, 0x1234_5678, 0xffff);
        let mut st = Staging::default();
        st.push(1000, false, &[&[1, 2], &[3]]);
        st.push(1000, false, &[&[4]]);
        st.mark_last();
        assert_eq!(st.len(), 2);
        let mut out = Vec::new();
        seq.commit(st, &mut out);
        assert_eq!(
            &out[0][..],
            &[0x80, 96, 0xff, 0xff, 0, 0, 0x03, 0xe8, 0x12, 0x34, 0x56, 0x78, 1, 2, 3]
        );
        assert_eq!(&out[1][..4], &[0x80, 0x80 | 96, 0, 0]);
        assert_eq!(seq.next_sequence(), 1);
    }
}

//! VP8 frames from RTP (RFC 7741), for WebRTC delivery of VP8 sources (a browser's WHIP
//! publication): the payload descriptor stripped, a frame's packets joined from the one
//! that starts partition 0 to the marker. Packets are untrusted: a malformed one, or a
//! sequence gap, drops the frame at hand, and the frames after it until a keyframe (they
//! would refer to what was lost).

/// Largest VP8 frame assembled.
const MAX_FRAME: usize = 4 << 20;

/// A VP8 frame assembler.
#[derive(Debug, Default)]
pub struct Vp8Assembler {
    frame: Vec<u8>,
    timestamp: Option<u32>,
    /// The frame at hand started properly and lost nothing.
    intact: bool,
    /// Frames are dropped until the next keyframe.
    broken: bool,
    last_seq: Option<u16>,
}

/// The VP8 payload after the payload descriptor, and whether it starts partition 0.
fn strip_descriptor(p: &[u8]) -> Option<(&[u8], bool)> {
    let b0 = *p.first()?;
    let start = b0 & 0x10 != 0 && b0 & 0x0f == 0;
    let mut at = 1;
    if b0 & 0x80 != 0 {
        let x = *p.get(at)?;
        at += 1;
        if x & 0x80 != 0 {
            let pid = *p.get(at)?;
            at += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            at += 1;
        }
        if x & 0x30 != 0 {
            at += 1;
        }
    }
    Some((p.get(at..)?, start))
}

impl Vp8Assembler {
    /// Feeds one packet's RTP payload (`seq`, `timestamp`, `marker` from its header): a
    /// complete frame and whether it is a keyframe, when this packet ends one.
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Option<(Vec<u8>, bool)> {
        let gap = self.last_seq.is_some_and(|l| seq != l.wrapping_add(1));
        self.last_seq = Some(seq);
        if gap {
            self.intact = false;
            self.broken = true;
        }
        let Some((data, start)) = strip_descriptor(payload) else {
            self.intact = false;
            self.broken = true;
            return None;
        };
        if start {
            self.frame.clear();
            self.timestamp = Some(timestamp);
            self.intact = true;
        } else if self.timestamp != Some(timestamp) {
            self.intact = false;
        }
        if !self.intact || self.frame.len() + data.len() > MAX_FRAME {
            self.intact = false;
            return None;
        }
        self.frame.extend_from_slice(data);
        if !marker {
            return None;
        }
        self.intact = false;
        let frame = std::mem::take(&mut self.frame);
        // The frame tag's first bit: 0 for a keyframe.
        let key = frame.first().is_some_and(|b| b & 1 == 0);
        if key {
            self.broken = false;
        }
        if self.broken {
            return None;
        }
        Some((frame, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_join_their_packets_and_resume_at_a_keyframe() {
        let mut a = Vp8Assembler::default();
        // Extended descriptor with a 2-byte picture id, start of partition 0; keyframe tag.
        assert_eq!(
            a.push(1, 100, false, &[0x90, 0x80, 0x81, 0x23, 0x10, 0xaa]),
            None
        );
        assert_eq!(
            a.push(2, 100, true, &[0x80, 0x80, 0x81, 0x23, 0xbb]),
            Some((vec![0x10, 0xaa, 0xbb], true))
        );
        // A P-frame (tag bit 1) in one packet, minimal descriptor.
        assert_eq!(
            a.push(3, 200, true, &[0x10, 0x31, 0x01]),
            Some((vec![0x31, 0x01], false))
        );
        // Packet 4 lost: the next P-frame is dropped, the next keyframe passes.
        assert_eq!(a.push(5, 300, true, &[0x10, 0x31, 0x02]), None);
        assert_eq!(
            a.push(6, 400, true, &[0x10, 0x30, 0x03]),
            Some((vec![0x30, 0x03], true))
        );
        // Truncated descriptors never panic.
        assert_eq!(a.push(7, 500, true, &[0x80]), None);
        assert_eq!(a.push(8, 500, true, &[]), None);
    }
}

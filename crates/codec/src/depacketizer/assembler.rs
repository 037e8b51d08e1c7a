//! Access unit assembly shared by the H.264 and H.265 depacketizers: length-prefixed NAL units, fragment
//! reassembly, boundaries at the marker bit or a timestamp change, loss tracking.

use bytes::{BufMut, BytesMut};

use super::{AccessUnit, MAX_ACCESS_UNIT};

/// The access unit being assembled.
#[derive(Debug, Clone, Default)]
pub(super) struct Assembler {
    /// RTP timestamp of the access unit in progress (set by the first packet after the last one ended).
    timestamp: Option<u32>,
    /// Length-prefixed NAL units so far.
    data: BytesMut,
    /// Whether a NAL unit so far makes this a random access point.
    keyframe: bool,
    /// Packets were lost inside or just before the access unit in progress.
    loss: bool,
    /// The NAL unit being reassembled from fragments (its reconstructed header first).
    fragment: Option<BytesMut>,
}

impl Assembler {
    /// Starts processing a packet: records a sequence gap (dropping a partial fragment) and ends the
    /// access unit in progress if the timestamp changed.
    pub(super) fn begin(&mut self, timestamp: u32, gap: bool, out: &mut Vec<AccessUnit>) {
        if gap {
            self.loss = true;
            self.fragment = None;
        }
        if self.timestamp.is_some_and(|t| t != timestamp) {
            if self.fragment.take().is_some() {
                self.loss = true;
            }
            self.emit(out);
            // The lost packets may as well have been the start of the new access unit.
            self.loss |= gap;
        }
        self.timestamp = Some(timestamp);
    }

    /// Ends the packet: the marker bit ends the access unit.
    pub(super) fn end(&mut self, marker: bool, out: &mut Vec<AccessUnit>) {
        if marker {
            if self.fragment.take().is_some() {
                self.loss = true;
            }
            self.emit(out);
        }
    }

    /// Marks the access unit in progress as damaged (a malformed packet was dropped).
    pub(super) fn mark_loss(&mut self) {
        self.loss = true;
        self.fragment = None;
    }

    /// Appends one complete NAL unit (empty ones are ignored).
    pub(super) fn push_nal(&mut self, nal: &[u8], keyframe: bool) {
        if nal.is_empty() {
            return;
        }
        let Ok(len) = u32::try_from(nal.len()) else {
            self.drop_oversized();
            return;
        };
        if self.data.len() + 4 + nal.len() > MAX_ACCESS_UNIT {
            self.drop_oversized();
            return;
        }
        self.data.put_u32(len);
        self.data.extend_from_slice(nal);
        self.keyframe |= keyframe;
    }

    /// Starts a fragmented NAL unit with its reconstructed header and first fragment's bytes. A fragment
    /// already in progress (its end was lost) is dropped.
    pub(super) fn start_fragment(&mut self, header: &[u8], body: &[u8]) {
        if self.fragment.is_some() {
            self.loss = true;
        }
        let mut f = BytesMut::with_capacity(header.len() + body.len() * 4);
        f.extend_from_slice(header);
        f.extend_from_slice(body);
        self.fragment = Some(f);
    }

    /// Continues the fragmented NAL unit; without a start (it was lost) the fragment is dropped. `last`
    /// completes it and returns the NAL unit's first byte (its header) for keyframe detection.
    pub(super) fn continue_fragment(&mut self, body: &[u8], last: bool) -> Option<BytesMut> {
        let Some(f) = self.fragment.as_mut() else {
            self.loss = true;
            return None;
        };
        if self.data.len() + f.len() + body.len() > MAX_ACCESS_UNIT {
            self.drop_oversized();
            return None;
        }
        f.extend_from_slice(body);
        if last {
            self.fragment.take()
        } else {
            None
        }
    }

    /// Drops the whole access unit in progress because it grew past [`MAX_ACCESS_UNIT`].
    fn drop_oversized(&mut self) {
        self.data.clear();
        self.keyframe = false;
        self.fragment = None;
        self.loss = true;
    }

    /// Emits the access unit in progress, if it has any NAL unit; the loss flag carries over otherwise.
    fn emit(&mut self, out: &mut Vec<AccessUnit>) {
        let Some(ts) = self.timestamp.take() else {
            return;
        };
        if self.data.is_empty() {
            self.keyframe = false;
            return;
        }
        out.push(AccessUnit {
            rtp_timestamp: ts,
            keyframe: self.keyframe,
            data: self.data.split().freeze(),
            loss: self.loss,
        });
        self.keyframe = false;
        self.loss = false;
    }
}

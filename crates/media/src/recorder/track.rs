//! One recorded track: its depacketizer, its timing, and the arrival-timed H.264 access
//! units held until their picture order is known.

use std::collections::VecDeque;

use sluice_codec::depacketizer::{AccessUnit, Depacketizer};
use sluice_codec::picorder::H264PicOrder;
use sluice_codec::Codec;

use super::timing::{grid_time, TrackClock, Unwrapper};
use super::Output;
use crate::archive::Frame;
use crate::mux::{Mp4Writer, MuxError};

/// Most access units held for reordering; a longer GOP is written in parts (a B-frame at a
/// part's edge may then be presented slightly out of order).
pub(crate) const MAX_GOP: usize = 1024;

/// The file's writer over memory, handing each fragment on as soon as it is cut.
pub(crate) struct Mux {
    pub(crate) writer: Mp4Writer<Vec<u8>>,
    pub(crate) ready: VecDeque<Output>,
    /// Frames mode (see [`super::Recorder::frames_mode`]): timed samples are queued here
    /// for the archive's segment writer instead of being written by `writer`.
    pub(crate) tap: Option<VecDeque<Frame>>,
}

impl Mux {
    /// Writes a sample (see [`Mp4Writer::write_sample`]) and queues the fragment it completed,
    /// if any.
    fn write(
        &mut self,
        index: usize,
        dts: u64,
        offset: i32,
        keyframe: bool,
        data: &[u8],
    ) -> Result<(), MuxError> {
        if let Some(tap) = &mut self.tap {
            let dts = i64::try_from(dts).map_err(|_| MuxError::BadSample {
                track: index,
                reason: "decode time out of range",
            })?;
            tap.push_back(Frame {
                track: index,
                dts,
                pts: dts + i64::from(offset),
                keyframe,
                data: bytes::Bytes::copy_from_slice(data),
            });
            return Ok(());
        }
        self.writer
            .write_sample(index, dts, offset, keyframe, data)?;
        let bytes = self.writer.take_output();
        if !bytes.is_empty() {
            self.ready.push_back(Output::Fragment(bytes));
        }
        Ok(())
    }
}

/// A recorded track.
pub(crate) struct Track {
    pub(crate) dep: Depacketizer,
    pub(crate) encoding: String,
    pub(crate) clock: u32,
    pub(crate) video: bool,
    /// `a=framerate` of the SDP.
    pub(crate) framerate: Option<f64>,
    /// RTP packets received.
    pub(crate) packets: u64,
    pub(crate) timing: TrackClock,
    pub(crate) unwrap: Unwrapper,
    /// The last arrival-timed frame's time (see [`grid_time`]).
    pub(crate) grid_last: Option<f64>,
    /// Arrival-timed H.264: picture order counts, to present B-frames in order.
    order: Option<H264PicOrder>,
    /// Arrival-timed H.264: the access units since the last IDR, with their decode times and
    /// picture order counts, until the next IDR tells their presentation times.
    gop: Vec<(f64, Option<i64>, AccessUnit)>,
    /// How far presentation times are behind decode times (seconds, never decreasing, so
    /// presentation times stay increasing across GOPs): the reorder delay seen so far.
    shift: f64,
    /// The last decode time written (timescale units).
    last_dts: Option<u64>,
}

impl Track {
    /// A track that nothing arrived on yet.
    pub(crate) fn new(
        dep: Depacketizer,
        encoding: String,
        video: bool,
        framerate: Option<f64>,
    ) -> Track {
        Track {
            clock: dep.clock_rate().max(1),
            dep,
            encoding,
            video,
            framerate,
            packets: 0,
            timing: TrackClock::Unseen,
            unwrap: Unwrapper::default(),
            grid_last: None,
            order: None,
            gop: Vec::new(),
            shift: 0.0,
            last_dts: None,
        }
    }

    /// The time (seconds) of the next access unit: `rtp` from its timestamp, or, for a track
    /// timed by arrival, its place on the frame grid given its `arrival`.
    pub(crate) fn time(&mut self, rtp: f64, arrival: f64) -> f64 {
        match self.timing {
            TrackClock::Arrival { frame } => {
                let t = grid_time(self.grid_last, frame, arrival);
                self.grid_last = Some(t);
                t
            }
            _ => rtp,
        }
    }

    /// Writes an access unit at `secs` (seconds from the file's start; skipped before it).
    /// RTP-timed: `secs` is its presentation time. Arrival-timed: `secs` is its decode time,
    /// and H.264 is held until the next IDR so that B-frames get presentation times in
    /// picture order (arrival order is decode order).
    pub(crate) fn emit(
        &mut self,
        w: &mut Mux,
        index: usize,
        secs: f64,
        au: AccessUnit,
    ) -> Result<(), MuxError> {
        if secs < 0.0 {
            return Ok(()); // before the file's start
        }
        let reorder =
            matches!(self.timing, TrackClock::Arrival { .. }) && self.dep.codec() == Codec::H264;
        if !reorder {
            let dts = match self.timing {
                TrackClock::Arrival { .. } => secs,
                _ => f64::NAN, // from the presentation time
            };
            return self.write_sample(w, index, dts, secs, &au);
        }
        let order = match &mut self.order {
            Some(o) => o,
            None => {
                let avcc = self.dep.params().map(|p| p.config).unwrap_or_default();
                self.order.insert(H264PicOrder::from_avcc(&avcc))
            }
        };
        let poc = order.push(&au.data);
        if au.keyframe || self.gop.len() >= MAX_GOP {
            self.flush(w, index)?;
        }
        self.gop.push((secs, poc, au));
        Ok(())
    }

    /// Writes the held access units (see [`Track::emit`]): the k-th in picture order is
    /// presented at the k-th decode time plus the reorder delay.
    pub(crate) fn flush(&mut self, w: &mut Mux, index: usize) -> Result<(), MuxError> {
        let gop = std::mem::take(&mut self.gop);
        let mut by_poc: Vec<usize> = (0..gop.len()).collect();
        if gop.iter().all(|g| g.1.is_some()) {
            by_poc.sort_by_key(|&i| (gop.get(i).and_then(|g| g.1), i));
        }
        let dts: Vec<f64> = gop.iter().map(|g| g.0).collect();
        // The k-th in picture order is presented at the k-th decode time (plus the shift),
        // which must not be before its own decode time.
        for (k, &i) in by_poc.iter().enumerate() {
            if let (Some(di), Some(dk)) = (dts.get(i), dts.get(k)) {
                self.shift = self.shift.max(di - dk);
            }
        }
        let mut pts = dts.clone();
        for (k, &i) in by_poc.iter().enumerate() {
            if let (Some(p), Some(dk)) = (pts.get_mut(i), dts.get(k)) {
                *p = dk + self.shift;
            }
        }
        for ((dts, _, au), pts) in gop.iter().zip(pts) {
            self.write_sample(w, index, *dts, pts, au)?;
        }
        Ok(())
    }

    /// Writes one sample at decode time `dts` and presentation time `pts` (seconds from the
    /// file's start); a NaN `dts` means "the presentation time" (RTP-timed tracks). Decode
    /// times are kept strictly increasing, as MP4 requires.
    fn write_sample(
        &mut self,
        w: &mut Mux,
        index: usize,
        dts: f64,
        pts: f64,
        au: &AccessUnit,
    ) -> Result<(), MuxError> {
        let clock = f64::from(self.clock);
        let pts = (pts.max(0.0) * clock).round() as u64;
        let dts = if dts.is_nan() {
            pts
        } else {
            (dts.max(0.0) * clock).round() as u64
        };
        let dts = match self.last_dts {
            Some(prev) if dts <= prev => prev + 1,
            _ => dts,
        };
        let offset = i32::try_from(pts as i64 - dts as i64).unwrap_or(0);
        self.last_dts = Some(dts);
        w.write(index, dts, offset, au.keyframe, &au.data)
    }
}

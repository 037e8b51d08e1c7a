//! When a source's packets go out: the batcher collects the packets a source pushes and
//! cuts them into batches, so that every sink gets a frame (or several) per call instead of
//! a packet.
//!
//! The rules, which every live source shares instead of its read loop deciding:
//! - A batch ends at a video frame's end: its last packet (RTP marker), or the first
//!   packet of the next frame when the marker was lost. A non-video packet ends a batch.
//! - A batch is at most [`MAX_PENDING`] packets: an unfinished frame that long goes out in
//!   parts.
//! - While the source has more input at hand than one frame ([`Batcher::hold`]), frames
//!   that end are collected and go out together when the input is used up
//!   ([`Batcher::release`]), up to the batcher's `max_batch` packets, cut at frame ends:
//!   a server that falls behind sends bigger batches instead of falling further behind.
//! - With a fan-out window ([`Batcher::set_window`]) a batch instead spans that much media
//!   from its first packet's arrival, across frames and tracks, up to `max_batch` packets.
//! - Live sources do not cut when their input runs dry (a publisher writes a frame packet
//!   by packet and the reads would split it): the packets collected go out once the input
//!   has paused for [`INPUT_PAUSE`] or the window has passed ([`Batcher::poll_timeout`],
//!   [`Batcher::handle_timeout`]). [`Batcher::flush_stale`] is the backstop for a source
//!   without a timer.
//!
//! Sans-IO: the caller passes the time in and takes the batches out with
//! [`Batcher::next_batch`] after each call, then hands them to its stream.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::packet::MediaPacket;

/// Most packets in a batch outside a hold or a window.
pub const MAX_PENDING: usize = 64;

/// How long a live source's input may pause before the packets collected so far go out
/// without waiting for the rest of their frame. Publishers write a frame's packets back
/// to back (microseconds apart), so this does not split them, but a frame that arrives in
/// two halves (ffmpeg does this at times, ~40 ms apart) no longer holds its first half.
pub const INPUT_PAUSE: Duration = Duration::from_millis(1);

/// Collects one source's packets and decides where its batches end.
///
/// Packets go in with [`Batcher::push`]; every call that may end a batch returns how many
/// batches are ready, and [`Batcher::next_batch`] takes them, oldest first. Packets leave
/// exactly once and in the order pushed.
#[derive(Debug)]
pub struct Batcher {
    /// The batches decided and not yet taken (their lengths in `cuts`), then the packets
    /// still being collected.
    packets: Vec<MediaPacket>,
    /// Lengths of the batches ready at the front of `packets`, oldest first.
    cuts: VecDeque<usize>,
    /// Packets in those batches: `packets[cut..]` is still being collected.
    cut: usize,
    /// How many collected packets end at a frame's end (only non-zero while held).
    complete: usize,
    /// Whether frames that end are held for [`Batcher::release`].
    held: bool,
    /// The fan-out window (zero: a batch per frame).
    window: Duration,
    /// The track whose frames are batched (the first video track), if any.
    video_track: Option<usize>,
    /// Most packets in a held or windowed batch.
    max_batch: usize,
    /// The latest input the source reported.
    last_input: Option<Instant>,
}

impl Batcher {
    /// A batcher cutting `video_track`'s frames (None: every packet ends a batch) into
    /// batches of at most [`MAX_PENDING`] packets, and of at most `max_batch` (at least 1)
    /// while held or with a window: what one sink call may take at once (a TCP reader's
    /// vectored write, in the server).
    pub fn new(video_track: Option<usize>, max_batch: usize) -> Batcher {
        let max_batch = max_batch.max(1);
        Batcher {
            packets: Vec::with_capacity(MAX_PENDING.min(max_batch)),
            cuts: VecDeque::with_capacity(4),
            cut: 0,
            complete: 0,
            held: false,
            window: Duration::ZERO,
            video_track,
            max_batch,
            last_input: None,
        }
    }

    /// Collects up to `window` of media (from the arrival of a batch's first packet) into
    /// one batch, across frames and tracks, instead of a batch per frame: fewer, larger
    /// sends per reader for up to `window` of added latency. Zero: a batch per frame.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// The fan-out window (zero: a batch per frame).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The track whose frames are batched.
    pub fn video_track(&self) -> Option<usize> {
        self.video_track
    }

    /// Most packets in a held or windowed batch.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Packets collected and not yet in a batch.
    pub fn len(&self) -> usize {
        self.packets.len() - self.cut
    }

    /// Whether no packet is being collected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The packets collected and not yet in a batch, oldest first.
    pub fn pending(&self) -> &[MediaPacket] {
        self.packets.get(self.cut..).unwrap_or(&[])
    }

    /// Iterates over [`Batcher::pending`].
    pub fn iter(&self) -> std::slice::Iter<'_, MediaPacket> {
        self.pending().iter()
    }

    /// Whether frames are held ([`Batcher::hold`]).
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Batches ready for [`Batcher::next_batch`].
    pub fn ready(&self) -> usize {
        self.cuts.len()
    }

    /// Takes the oldest ready batch: its packets, moved out as the iterator is used or
    /// dropped ([`std::vec::Drain::as_slice`] shows them without moving).
    pub fn next_batch(&mut self) -> Option<std::vec::Drain<'_, MediaPacket>> {
        let n = self.cuts.pop_front()?;
        self.cut -= n;
        Some(self.packets.drain(..n))
    }

    /// The source had input at `now` that completed no packet (half a frame in a read):
    /// the input-pause timer runs from here.
    pub fn note_input(&mut self, now: Instant) {
        self.last_input = Some(self.last_input.map_or(now, |t| t.max(now)));
    }

    /// Adds a packet the source received (input at `now`); returns the batches ready.
    pub fn push(&mut self, now: Instant, packet: MediaPacket) -> usize {
        self.note_input(now);
        if !self.window.is_zero() {
            // A batch spans the window from its first packet's arrival; the source's
            // timer ([`Batcher::poll_timeout`]) ends it when no packet comes to.
            let due = self.pending().first().is_some_and(|first| {
                packet
                    .received_at
                    .saturating_duration_since(first.received_at)
                    >= self.window
            });
            self.packets.push(packet);
            if due || self.len() >= self.max_batch {
                self.cut_front(usize::MAX);
            }
            return self.ready();
        }
        let is_video = Some(packet.track) == self.video_track;
        // A new frame begins: the previous one is complete even if its marker was lost.
        let new_frame = self.pending().last().is_some_and(|last| {
            last.track == packet.track && last.header.timestamp != packet.header.timestamp
        });
        if new_frame {
            self.end_frame();
        }
        let frame_ends = !is_video || packet.header.marker;
        self.packets.push(packet);
        if frame_ends {
            self.end_frame();
        }
        let cap = if self.held {
            self.max_batch
        } else {
            self.frame_cap()
        };
        if self.len() >= cap {
            // Complete frames go; an unfinished frame this long goes too, in parts.
            let n = if self.complete > 0 {
                self.complete
            } else {
                usize::MAX
            };
            self.cut_front(n);
        }
        self.ready()
    }

    /// The source has more input at hand (a read returned several frames, or more is
    /// waiting): until [`Batcher::release`], frames that end are collected (up to
    /// `max_batch` packets) instead of going out one by one. An idle source, whose reads
    /// each end within a frame or at its end, still sends each frame as soon as it is
    /// complete: the batches grow with the load, not with a fixed delay. No effect with a
    /// window, which batches anyway.
    pub fn hold(&mut self) {
        self.held = true;
    }

    /// The input at hand is used up: the complete frames collected since
    /// [`Batcher::hold`] become one batch; an unfinished frame waits for its end as usual.
    /// Returns the batches ready.
    pub fn release(&mut self) -> usize {
        self.held = false;
        if self.complete > 0 {
            let n = self.complete;
            self.cut_front(n);
        }
        // Held, an unfinished frame may have grown past the unheld cap; a window's batch
        // waits for its window.
        if self.len() >= self.frame_cap() && self.window.is_zero() {
            self.cut_front(usize::MAX);
        }
        self.ready()
    }

    /// Makes a batch of every packet collected, whatever the frames (a file source after
    /// each sample, a stream's end). Returns the batches ready.
    pub fn flush(&mut self) -> usize {
        self.cut_front(usize::MAX);
        self.ready()
    }

    /// Makes a batch of the packets collected if the first arrived at least `max_age`
    /// (or the window, if longer) before `now`: a frame without a marker bit and no next
    /// frame yet, at a source that runs no timer. Returns the batches ready.
    pub fn flush_stale(&mut self, now: Instant, max_age: Duration) -> usize {
        let max_age = max_age.max(self.window);
        let stale = self
            .pending()
            .first()
            .is_some_and(|p| now.saturating_duration_since(p.received_at) >= max_age);
        if stale {
            self.cut_front(usize::MAX);
        }
        self.ready()
    }

    /// When the packets collected so far should go out, if any, for a source whose last
    /// input was at `last_input`: once its input has paused for [`INPUT_PAUSE`] or, with a
    /// window, once the window since the batch's first packet has passed.
    pub fn flush_at(&self, last_input: Instant) -> Option<Instant> {
        let first = self.pending().first()?;
        if self.window.is_zero() {
            last_input.checked_add(INPUT_PAUSE)
        } else {
            first.received_at.checked_add(self.window)
        }
    }

    /// When [`Batcher::handle_timeout`] should be called: [`Batcher::flush_at`] the latest
    /// input pushed or noted. None while nothing is collected.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.flush_at(self.last_input?)
    }

    /// The source's timer fired at `now`: if [`Batcher::poll_timeout`] has passed, the
    /// packets collected become a batch. Returns the batches ready.
    pub fn handle_timeout(&mut self, now: Instant) -> usize {
        if self.poll_timeout().is_some_and(|t| t <= now) {
            self.cut_front(usize::MAX);
        }
        self.ready()
    }

    /// Most packets in a batch outside a hold or a window.
    fn frame_cap(&self) -> usize {
        MAX_PENDING.min(self.max_batch)
    }

    /// A frame (or a non-video packet) has just ended: it goes out, or while frames are
    /// held, it only counts as complete.
    fn end_frame(&mut self) {
        if self.held {
            self.complete = self.len();
        } else {
            self.cut_front(usize::MAX);
        }
    }

    /// Makes a batch of the first `n` packets collected (all of them if fewer).
    fn cut_front(&mut self, n: usize) {
        let n = n.min(self.len());
        if n > 0 {
            self.cuts.push_back(n);
            self.cut += n;
        }
        self.complete = self.complete.saturating_sub(n);
    }
}

impl std::ops::Index<usize> for Batcher {
    type Output = MediaPacket;

    /// The `i`th packet collected and not yet in a batch; panics past the end, as a slice.
    fn index(&self, i: usize) -> &MediaPacket {
        &self.pending()[i]
    }
}

impl<'a> IntoIterator for &'a Batcher {
    type Item = &'a MediaPacket;
    type IntoIter = std::slice::Iter<'a, MediaPacket>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_rtp::packet::RtpHeader;

    /// The held and windowed cap used by these tests (the server's is larger).
    const MAX: usize = 256;

    fn pkt(track: usize, seq: u16, ts: u32, marker: bool, at: Instant) -> MediaPacket {
        MediaPacket {
            track,
            header: RtpHeader {
                payload_type: 96 + track as u8,
                marker,
                sequence: seq,
                timestamp: ts,
                ssrc: 1 + track as u32,
                payload_offset: 12,
            },
            data: Bytes::from_static(&[0x80; 20]),
            received_at: at,
        }
    }

    /// A batcher for a video track 0 and an audio track 1, with what it emitted.
    struct Fixture {
        b: Batcher,
        out: Vec<Vec<u16>>,
        t0: Instant,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                b: Batcher::new(Some(0), MAX),
                out: Vec::new(),
                t0: Instant::now(),
            }
        }
        fn ms(&self, n: u64) -> Instant {
            self.t0 + Duration::from_millis(n)
        }
        fn take(&mut self) {
            while let Some(batch) = self.b.next_batch() {
                self.out.push(batch.map(|p| p.header.sequence).collect());
            }
        }
        fn push(&mut self, track: usize, seq: u16, ts: u32, marker: bool, at_ms: u64) {
            let at = self.ms(at_ms);
            self.b.push(at, pkt(track, seq, ts, marker, at));
            self.take();
        }
    }

    #[test]
    fn a_frame_is_one_batch_ended_by_its_marker_or_the_next_frame() {
        let mut f = Fixture::new();
        f.push(0, 1, 0, false, 0);
        f.push(0, 2, 0, false, 0);
        f.push(0, 3, 0, true, 0);
        f.push(0, 4, 3000, false, 0); // marker lost
        f.push(0, 5, 6000, false, 0);
        f.push(0, 6, 6000, false, 0);
        assert_eq!(f.out, vec![vec![1, 2, 3], vec![4]]);
        assert_eq!(f.b.len(), 2);
        f.b.flush();
        f.b.flush();
        f.take();
        assert_eq!(f.out.last(), Some(&vec![5, 6]));
        for i in 0..100u16 {
            f.push(0, 100 + i, 9000, false, 0);
        }
        assert_eq!(f.out.last().map(Vec::len), Some(MAX_PENDING));
    }

    #[test]
    fn audio_goes_alone_and_a_new_frame_and_audio_make_two_batches_at_once() {
        let mut f = Fixture::new();
        f.push(0, 1, 0, false, 0);
        // Audio ends the batch, with the unfinished frame before it.
        f.push(1, 2, 0, true, 0);
        assert_eq!(f.out, vec![vec![1, 2]]);
        f.push(0, 3, 3000, false, 0);
        // A new video frame without a marker ends the previous one: one push, one batch.
        let ready = f.b.push(f.ms(0), pkt(0, 4, 6000, true, f.ms(0)));
        assert_eq!(ready, 2, "the lost-marker frame, then the whole new one");
        f.take();
        assert_eq!(f.out[1..], [vec![3], vec![4]]);
    }

    #[test]
    fn held_frames_go_out_together_when_the_input_at_hand_is_used_up() {
        let mut f = Fixture::new();
        f.b.hold();
        f.push(0, 1, 0, false, 0);
        f.push(0, 2, 0, true, 0);
        f.push(1, 3, 0, true, 0);
        f.push(0, 4, 3000, false, 0); // marker lost
        f.push(0, 5, 6000, false, 0);
        assert!(f.out.is_empty(), "held frames wait for the release");
        f.b.release();
        f.take();
        assert_eq!(f.out, vec![vec![1, 2, 3, 4]]);
        f.push(0, 6, 6000, true, 0);
        assert_eq!(f.out.last(), Some(&vec![5, 6]));
        // A long backlog is cut at frame ends, at most MAX packets.
        f.b.hold();
        for i in 0..100u16 {
            let ts = 12000 + u32::from(i);
            f.push(0, 100 + 3 * i, ts, false, 0);
            f.push(0, 101 + 3 * i, ts, false, 0);
            f.push(0, 102 + 3 * i, ts, true, 0);
        }
        f.b.release();
        f.take();
        let sizes: Vec<usize> = f.out[2..].iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![255, 45]);
        assert!(f.b.is_empty());
    }

    #[test]
    fn a_release_sends_an_unfinished_frame_grown_past_the_unheld_cap() {
        let mut f = Fixture::new();
        f.push(0, 1, 0, true, 0);
        f.b.hold();
        f.push(1, 2, 0, true, 0);
        for i in 0..70u16 {
            f.push(0, 10 + i, 3000, false, 0);
        }
        assert_eq!(f.out, vec![vec![1]]);
        assert_eq!(f.b.release(), 2, "the complete audio, then the long frame");
        f.take();
        assert_eq!(f.out[1], vec![2]);
        assert_eq!(f.out[2].len(), 70);
    }

    #[test]
    fn the_input_pause_timer_sends_an_unfinished_frame() {
        let mut f = Fixture::new();
        assert_eq!(f.b.poll_timeout(), None, "nothing collected");
        f.push(0, 1, 0, false, 10);
        assert_eq!(f.b.poll_timeout(), Some(f.ms(10) + INPUT_PAUSE));
        // More input, even without a whole packet, moves the timer.
        f.b.note_input(f.ms(12));
        assert_eq!(f.b.poll_timeout(), Some(f.ms(12) + INPUT_PAUSE));
        // Input times never go back.
        f.b.note_input(f.ms(11));
        assert_eq!(f.b.poll_timeout(), Some(f.ms(12) + INPUT_PAUSE));
        assert_eq!(f.b.handle_timeout(f.ms(12)), 0, "too early");
        assert_eq!(f.b.handle_timeout(f.ms(13)), 1);
        f.take();
        assert_eq!(f.out, vec![vec![1]]);
        assert_eq!(f.b.poll_timeout(), None);
    }

    #[test]
    fn a_fanout_window_batches_frames_and_tracks_until_it_ends() {
        let mut f = Fixture::new();
        f.b.set_window(Duration::from_millis(40));
        f.push(0, 4, 3000, true, 10);
        f.push(1, 5, 1024, true, 20);
        f.push(0, 6, 6000, false, 43);
        f.push(0, 7, 6000, true, 43);
        assert!(f.out.is_empty(), "nothing cut inside the window");
        // The timer runs to the window's end from the first packet's arrival...
        assert_eq!(f.b.poll_timeout(), Some(f.ms(50)));
        // ... and the first packet past it ends the batch, itself included.
        f.push(0, 8, 9000, true, 51);
        assert_eq!(f.out, vec![vec![4, 5, 6, 7, 8]]);
        f.push(1, 9, 2048, true, 60);
        assert_eq!(f.b.poll_timeout(), Some(f.ms(100)));
        // The stale flush waits for the window too.
        f.b.flush_stale(f.ms(95), Duration::from_millis(20));
        f.take();
        assert_eq!(f.out.len(), 1);
        f.b.handle_timeout(f.ms(100));
        f.take();
        assert_eq!(f.out.last(), Some(&vec![9]));
        // Holding changes nothing inside a window, even past the per-frame cap.
        f.b.hold();
        for i in 0..70u16 {
            f.push(0, 20 + i, 10000 + u32::from(i), true, 150);
        }
        f.b.release();
        f.take();
        assert_eq!(f.out.len(), 2, "the window's batch waits");
        f.b.flush();
        f.take();
        // A window's batch is bounded.
        for i in 0..600u16 {
            f.push(0, 100 + i, 12000, false, 200);
        }
        assert!(f.out[3..].iter().all(|b| b.len() == MAX));
    }

    #[test]
    fn a_stale_batch_goes_out_after_its_age() {
        let mut f = Fixture::new();
        f.push(0, 1, 0, false, 0);
        assert_eq!(f.b.flush_stale(f.ms(49), Duration::from_millis(50)), 0);
        assert_eq!(f.b.flush_stale(f.ms(50), Duration::from_millis(50)), 1);
        f.take();
        assert_eq!(f.out, vec![vec![1]]);
        assert_eq!(
            f.b.flush_stale(f.ms(500), Duration::ZERO),
            0,
            "nothing left"
        );
    }

    #[test]
    fn without_video_every_packet_is_a_batch_and_batches_wait_until_taken() {
        let mut b = Batcher::new(None, 4);
        let t = Instant::now();
        for seq in 0..3 {
            b.push(t, pkt(0, seq, 0, false, t));
        }
        assert_eq!(b.ready(), 3);
        assert!(b.is_empty(), "nothing is being collected");
        let firsts: Vec<Vec<u16>> = std::iter::from_fn(|| {
            b.next_batch()
                .map(|d| d.map(|p| p.header.sequence).collect())
        })
        .collect();
        assert_eq!(firsts, vec![vec![0], vec![1], vec![2]]);
    }

    /// What a source may do to a batcher, for the property test below.
    #[derive(Debug, Clone)]
    enum Op {
        /// A packet: audio, or video continuing the frame or starting a new one, this many
        /// milliseconds after the previous input.
        Push {
            audio: bool,
            new_frame: bool,
            marker: bool,
            after_ms: u8,
        },
        /// A keyframe's worth: this many packets of a new video frame, no marker yet.
        LongFrame(u16),
        Hold,
        Release,
        Flush,
        /// The clock moves on this many milliseconds and the source's timer is handled.
        Timeout(u8),
        /// The reaper's stale flush, this many milliseconds later.
        Stale(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (any::<bool>(), any::<bool>(), proptest::bool::weighted(0.3), 0u8..3)
                .prop_map(|(audio, new_frame, marker, after_ms)| Op::Push { audio, new_frame, marker, after_ms }),
            1 => (1u16..200).prop_map(Op::LongFrame),
            1 => Just(Op::Hold),
            1 => Just(Op::Release),
            1 => Just(Op::Flush),
            1 => (0u8..60).prop_map(Op::Timeout),
            1 => (0u8..80).prop_map(Op::Stale),
        ]
    }

    /// Whether a cut may split a frame: the source or its timer asked for it.
    fn forced(op: &Op) -> bool {
        matches!(op, Op::Flush | Op::Timeout(_) | Op::Stale(_))
    }

    /// The server stream's batching as it was before the batcher (crates/server
    /// stream.rs `push_rtp`, `end_frame`, `hold_frames`, `release_frames`, `flush`,
    /// `flush_stale`, `flush_at` and `flush_locked`, delivering into `out`), ported
    /// line by line: the reference the batcher must match.
    struct Before {
        packets: Vec<MediaPacket>,
        complete: usize,
        held: bool,
        window: Duration,
        video_track: Option<usize>,
        out: Vec<Vec<u16>>,
    }

    impl Before {
        fn push_rtp(&mut self, packet: MediaPacket) {
            let window = self.window;
            if !window.is_zero() {
                let due = self.packets.first().is_some_and(|first| {
                    packet
                        .received_at
                        .saturating_duration_since(first.received_at)
                        >= window
                });
                self.packets.push(packet);
                if due || self.packets.len() >= MAX {
                    self.flush_locked(usize::MAX);
                }
                return;
            }
            let is_video = Some(packet.track) == self.video_track;
            let new_frame = self.packets.last().is_some_and(|last| {
                last.track == packet.track && last.header.timestamp != packet.header.timestamp
            });
            if new_frame {
                self.end_frame();
            }
            let frame_ends = !is_video || packet.header.marker;
            self.packets.push(packet);
            if frame_ends {
                self.end_frame();
            }
            let cap = if self.held { MAX } else { MAX_PENDING };
            if self.packets.len() >= cap {
                let n = if self.complete > 0 {
                    self.complete
                } else {
                    usize::MAX
                };
                self.flush_locked(n);
            }
        }
        fn end_frame(&mut self) {
            if self.held {
                self.complete = self.packets.len();
            } else {
                self.flush_locked(usize::MAX);
            }
        }
        fn release_frames(&mut self) {
            self.held = false;
            if self.complete > 0 {
                let n = self.complete;
                self.flush_locked(n);
            }
            if self.packets.len() >= MAX_PENDING && self.window.is_zero() {
                self.flush_locked(usize::MAX);
            }
        }
        fn flush(&mut self) {
            if !self.packets.is_empty() {
                self.flush_locked(usize::MAX);
            }
        }
        fn flush_stale(&mut self, now: Instant, max_age: Duration) {
            let max_age = max_age.max(self.window);
            let stale = self
                .packets
                .first()
                .is_some_and(|p| now.saturating_duration_since(p.received_at) >= max_age);
            if stale {
                self.flush_locked(usize::MAX);
            }
        }
        fn flush_at(&self, last_input: Instant) -> Option<Instant> {
            let first = self.packets.first()?;
            Some(if self.window.is_zero() {
                last_input + INPUT_PAUSE
            } else {
                first.received_at + self.window
            })
        }
        fn flush_locked(&mut self, n: usize) {
            let n = n.min(self.packets.len());
            self.out
                .push(self.packets.drain(..n).map(|p| p.header.sequence).collect());
            self.complete = self.complete.saturating_sub(n);
        }
    }

    /// What the differential test below does to both.
    #[derive(Debug, Clone)]
    enum Step {
        Op(Op),
        /// The fan-out window changes (the server sets it once, but any order must agree).
        Window(u8),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            12 => op().prop_map(Step::Op),
            1 => prop_oneof![Just(0u8), 1u8..60].prop_map(Step::Window),
        ]
    }

    proptest::proptest! {
        /// The batcher cuts exactly where the server's stream cut before it existed: the
        /// same batches after every step, the same packets waiting, the same flush time.
        #[test]
        fn the_batcher_cuts_exactly_where_the_stream_did(
            steps in proptest::collection::vec(step(), 1..200)
        ) {
            let mut b = Batcher::new(Some(0), MAX);
            let mut before = Before {
                packets: Vec::new(),
                complete: 0,
                held: false,
                window: Duration::ZERO,
                video_track: Some(0),
                out: Vec::new(),
            };
            let mut out: Vec<Vec<u16>> = Vec::new();
            let mut now = Instant::now();
            let (mut seq, mut video_ts, mut audio_ts) = (0u16, 0u32, 0u32);
            for step in steps {
                let both = |p: MediaPacket, b: &mut Batcher, before: &mut Before| {
                    b.push(p.received_at, p.clone());
                    before.push_rtp(p);
                };
                match step {
                    Step::Window(ms) => {
                        let w = Duration::from_millis(u64::from(ms));
                        b.set_window(w);
                        before.window = w;
                    }
                    Step::Op(Op::Push { audio, new_frame, marker, after_ms }) => {
                        now += Duration::from_millis(u64::from(after_ms));
                        let ts = if audio {
                            audio_ts += 1024;
                            audio_ts
                        } else {
                            if new_frame {
                                video_ts += 3000;
                            }
                            video_ts
                        };
                        seq += 1;
                        both(pkt(usize::from(audio), seq, ts, marker, now), &mut b, &mut before);
                    }
                    Step::Op(Op::LongFrame(n)) => {
                        video_ts += 3000;
                        for _ in 0..n {
                            seq += 1;
                            both(pkt(0, seq, video_ts, false, now), &mut b, &mut before);
                        }
                    }
                    Step::Op(Op::Hold) => {
                        b.hold();
                        before.held = true;
                    }
                    Step::Op(Op::Release) => {
                        b.release();
                        before.release_frames();
                    }
                    Step::Op(Op::Flush) => {
                        b.flush();
                        before.flush();
                    }
                    Step::Op(Op::Timeout(ms)) => {
                        // What the sources do with `flush_at`: flush once it has passed.
                        let at = now + Duration::from_millis(u64::from(ms));
                        proptest::prop_assert_eq!(b.flush_at(now), before.flush_at(now));
                        if before.flush_at(now).is_some_and(|t| t <= at) {
                            before.flush();
                        }
                        b.handle_timeout(at);
                    }
                    Step::Op(Op::Stale(ms)) => {
                        let at = now + Duration::from_millis(u64::from(ms));
                        b.flush_stale(at, Duration::from_millis(50));
                        before.flush_stale(at, Duration::from_millis(50));
                    }
                }
                while let Some(batch) = b.next_batch() {
                    out.push(batch.map(|p| p.header.sequence).collect());
                }
                proptest::prop_assert_eq!(&out, &before.out);
                let waiting: Vec<u16> = b.iter().map(|p| p.header.sequence).collect();
                let waited: Vec<u16> = before.packets.iter().map(|p| p.header.sequence).collect();
                proptest::prop_assert_eq!(waiting, waited);
                proptest::prop_assert_eq!(b.flush_at(now), before.flush_at(now));
            }
        }
    }

    proptest::proptest! {
        /// Whatever a source's pushes, holds, releases, flushes and timers: every packet
        /// is emitted once and in order; batches are never empty nor above `max_batch`;
        /// without a window a batch splits a frame only when asked to or at a size cap;
        /// outside a hold what waits is at most one unfinished video frame shorter than
        /// the cap; and the timer is monotone and fires exactly when it says.
        #[test]
        fn every_packet_once_in_order_frames_whole_timers_monotone(
            ops in proptest::collection::vec(op(), 1..200),
            window_ms in proptest::prop_oneof![3 => proptest::strategy::Just(0u64), 1 => 1u64..50],
        ) {
            let window = Duration::from_millis(window_ms);
            let mut b = Batcher::new(Some(0), MAX);
            b.set_window(window);
            let t0 = Instant::now();
            let mut now = t0;
            // (batch, the op that emitted it)
            let mut batches: Vec<(Vec<MediaPacket>, Op)> = Vec::new();
            let (mut seq, mut video_ts, mut audio_ts) = (0u16, 0u32, 0u32);
            let mut last_timeout: Option<Instant> = None;
            for op in ops {
                match op {
                    Op::Push { audio, new_frame, marker, after_ms } => {
                        now += Duration::from_millis(u64::from(after_ms));
                        let ts = if audio {
                            audio_ts += 1024;
                            audio_ts
                        } else {
                            if new_frame {
                                video_ts += 3000;
                            }
                            video_ts
                        };
                        seq += 1;
                        b.push(now, pkt(usize::from(audio), seq, ts, marker, now));
                    }
                    Op::LongFrame(n) => {
                        video_ts += 3000;
                        for _ in 0..n {
                            seq += 1;
                            b.push(now, pkt(0, seq, video_ts, false, now));
                            while let Some(batch) = b.next_batch() {
                                batches.push((batch.collect(), op.clone()));
                            }
                        }
                    }
                    Op::Hold => b.hold(),
                    Op::Release => {
                        b.release();
                    }
                    Op::Flush => {
                        b.flush();
                    }
                    Op::Timeout(ms) => {
                        now += Duration::from_millis(u64::from(ms));
                        let due = b.poll_timeout();
                        let before = b.ready();
                        b.handle_timeout(now);
                        let fired = b.ready() > before;
                        proptest::prop_assert_eq!(fired, due.is_some_and(|t| t <= now));
                        if fired {
                            proptest::prop_assert_eq!(b.poll_timeout(), None);
                        }
                    }
                    Op::Stale(ms) => {
                        b.flush_stale(now + Duration::from_millis(u64::from(ms)), Duration::from_millis(50));
                    }
                }
                while let Some(batch) = b.next_batch() {
                    batches.push((batch.collect(), op.clone()));
                }
                if let Some(t) = b.poll_timeout() {
                    proptest::prop_assert!(last_timeout.is_none_or(|l| t >= l), "the timer went back");
                    last_timeout = Some(t);
                }
                if !b.is_held() && window.is_zero() {
                    let p = b.pending();
                    proptest::prop_assert!(p.len() < MAX_PENDING, "{} waiting", p.len());
                    proptest::prop_assert!(
                        p.iter().all(|x| x.track == 0 && !x.header.marker
                            && x.header.timestamp == p[0].header.timestamp),
                        "waiting is not one unfinished video frame"
                    );
                }
            }
            b.release();
            b.flush();
            while let Some(batch) = b.next_batch() {
                batches.push((batch.collect(), Op::Flush));
            }
            proptest::prop_assert!(batches.iter().all(|(x, _)| !x.is_empty() && x.len() <= MAX));
            let all: Vec<&MediaPacket> = batches.iter().flat_map(|(x, _)| x).collect();
            let got: Vec<u16> = all.iter().map(|p| p.header.sequence).collect();
            let want: Vec<u16> = (1..=seq).collect();
            proptest::prop_assert_eq!(got, want);
            if window.is_zero() {
                // A batch whose last packet is in the middle of a video frame (the next
                // packet continues it) was asked for or hit a size cap.
                let mut at = 0;
                for (batch, op) in &batches {
                    at += batch.len();
                    let (Some(last), Some(next)) = (batch.last(), all.get(at)) else {
                        continue;
                    };
                    let splits = last.track == 0 && !last.header.marker
                        && next.track == 0 && next.header.timestamp == last.header.timestamp;
                    proptest::prop_assert!(
                        !splits || forced(op) || batch.len() >= MAX_PENDING,
                        "a frame split by {:?} in a batch of {}", op, batch.len()
                    );
                }
            }
        }
    }
}

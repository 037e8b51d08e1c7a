//! The stream model: one source feeds a per-path [`Stream`]; a handful of hub sinks
//! ([`sluice_hub::Sink`]), the path's [`ReaderGroup`] first, subscribe to it.
//!
//! A source (an RTSP publisher, a pull, a file) calls [`Stream::push_rtp`] with each packet as
//! a shared [`Bytes`](bytes::Bytes). The stream collects a frame's packets and hands the batch
//! to each of a handful of hub sinks ([`sluice_hub::Sink::on_batch`]): the same buffers (a
//! reference count, never a copy). The first is always the path's [`ReaderGroup`], behind
//! which all its RTSP readers and multicast groups sit: it plans the batch once and fans it
//! out, so that a frame reaches hundreds of readers in a few `sendmmsg` calls. A batch is flushed at a video frame's
//! last packet (RTP marker), when a new frame begins, for every non-video packet, at 64
//! packets, when the source calls [`Stream::flush`] (a file source after each sample), and by
//! the server's reaper once it is 50 ms old (a frame without a marker and no next frame yet).
//! With a fan-out window ([`Stream::set_fanout_window`], `rtsp.fanout_window`), a live stream's
//! batch instead spans up to that much media, across frames and tracks: every reader then gets
//! several frames per send, for that much added latency. Where a batch ends is decided by the
//! hub's [`Batcher`] (sans-IO, tested on a virtual clock); the stream keeps the locks, the
//! fan-out and the delivery. Live sources do not flush when their socket runs dry: publishers
//! write a frame packet by packet, and the reads would split it. But while a live source has
//! more input at hand than one frame ([`Stream::hold_frames`]), the frames that end in it are
//! collected and go out together when it is used up ([`Stream::release_frames`]): a server that
//! falls behind sends bigger batches instead of falling further behind, and an idle one still
//! sends each frame as it ends. A reader group with [`OFFLOAD_SINKS`] readers or more does not
//! deliver on its source's thread (a runtime worker, shared with other sessions' tasks): its
//! batches go to the fan-out threads ([`crate::readers::outbox`]), in order, and the source goes
//! on at once. Sinks must not block: each owns a bounded queue and decides itself what happens
//! when it is full. Adding a kind of source or sink never touches another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

#[cfg(test)]
use bytes::Bytes;
use bytes::BytesMut;
use sluice_rtp::clock::SrMapping;
use sluice_rtp::packet::{rewrite_header, RtpHeader};
use sluice_rtp::rtcp::SenderInfo;
use sluice_rtp::timeline::Timeline;

use crate::presentation::Presentation;
use crate::readers::ReaderGroup;
use sluice_hub::batcher::Batcher;
use sluice_hub::packet::Batch;
use sluice_hub::Sink as _;

pub use sluice_hub::batcher::INPUT_PAUSE;
pub use sluice_hub::packet::{EndReason, MediaPacket};

pub use crate::readers::{Reader, SinkId, OFFLOAD_SINKS};

/// Most packets collected before a flush (the batcher's per-frame cap), for the tests.
#[cfg(test)]
const MAX_PENDING: usize = sluice_hub::batcher::MAX_PENDING;

/// Most packets collected before a flush with a fan-out window: a TCP reader's batch is
/// still one vectored write (two slices per packet, [`crate::readers::media_queue::MAX_IOV`]).
const MAX_PENDING_WINDOWED: usize = crate::readers::media_queue::MAX_IOV / 2;

/// The first video track whose codec Sluice recognizes keyframes of: what the GOP cache
/// and frame batching key on.
pub(crate) fn keyframe_track(presentation: &Presentation) -> Option<(usize, sluice_codec::Codec)> {
    presentation.tracks().iter().enumerate().find_map(|(i, t)| {
        (t.media == "video")
            .then(|| sluice_codec::codec_from_encoding(&t.encoding))
            .flatten()
            .map(|c| (i, c))
    })
}

/// The batch being collected: the packets in arrival order, in the [`Batcher`] that
/// decides where batches end (frame ends, holds, the fan-out window, pauses).
#[derive(Debug)]
struct Pending {
    /// The packets and the batching decisions over them.
    packets: Batcher,
}

/// Per-track live state kept by the stream.
#[derive(Debug)]
struct TrackState {
    /// Outgoing numbering, continuous across source changes.
    timeline: Mutex<Timeline>,
    /// NTP↔RTP mapping from the source's latest Sender Report.
    sr: Mutex<Option<SrMapping>>,
}

/// The live stream of one path: its presentation, per-track state and its sinks.
pub struct Stream {
    path: String,
    presentation: Presentation,
    tracks: Vec<TrackState>,
    /// The path's readers: the first sink each batch goes to.
    readers: Arc<ReaderGroup>,
    /// The other hub sinks (recorders, web outputs), in subscription order.
    sinks: Mutex<Vec<(StreamSinkId, Arc<dyn sluice_hub::Sink>)>>,
    next_sink: AtomicU64,
    ready: AtomicBool,
    ended: AtomicBool,
    ended_notify: tokio::sync::Notify,
    version: u64,
    /// Packets pushed but not yet handed to sinks (the batch being collected).
    pending: Mutex<Pending>,
    /// The batch handed to the sinks, refilled from the batcher (kept for its allocation).
    out: Mutex<Batch>,
}

pub use sluice_hub::gop::TrackStart;

/// Identifies a hub sink's subscription to a stream, to remove it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamSinkId(u64);

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("path", &self.path)
            .field("tracks", &self.tracks.len())
            .field("ready", &self.is_ready())
            .field("ended", &self.is_ended())
            .finish()
    }
}

impl Stream {
    /// A new, not yet ready stream for `path` carrying `presentation`'s tracks.
    pub fn new(path: String, presentation: Presentation, version: u64) -> Arc<Stream> {
        let video = keyframe_track(&presentation);
        let tracks = presentation
            .tracks()
            .iter()
            .map(|t| TrackState {
                timeline: Mutex::new(Timeline::new(t.clock_rate)),
                sr: Mutex::new(None),
            })
            .collect();
        let readers = ReaderGroup::new(path.clone(), &presentation);
        Arc::new(Stream {
            path,
            presentation,
            tracks,
            readers,
            sinks: Mutex::new(Vec::new()),
            next_sink: AtomicU64::new(1),
            ready: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            ended_notify: tokio::sync::Notify::new(),
            version,
            pending: Mutex::new(Pending {
                packets: Batcher::new(video.map(|(i, _)| i), MAX_PENDING_WINDOWED),
            }),
            out: Mutex::new(Batch::with_capacity(MAX_PENDING_WINDOWED)),
        })
    }

    /// Collects up to `window` of media (from the arrival of a batch's first packet) into
    /// one batch, across frames and tracks, instead of a batch per frame: fewer, larger
    /// sends per reader for up to `window` of added latency. Zero: a batch per frame.
    /// For live sources (publishers, pulls); a file source flushes each sample itself.
    pub fn set_fanout_window(&self, window: std::time::Duration) {
        self.pending().packets.set_window(window);
    }

    /// The fan-out window (zero: a batch per frame).
    pub fn fanout_window(&self) -> std::time::Duration {
        self.pending().packets.window()
    }

    /// When a live source that last had input at `last_input` should flush the packets
    /// collected so far, if any: once its input has paused for [`INPUT_PAUSE`] or, with a
    /// fan-out window, once the window since the batch's first packet has passed.
    pub fn flush_at(&self, last_input: Instant) -> Option<Instant> {
        self.pending().packets.flush_at(last_input)
    }

    /// The source had input at `now` that completed no packet (a read that ended within
    /// one): the input-pause timer ([`Stream::poll_timeout`]) runs from here, so a frame
    /// still arriving is not cut.
    pub fn note_input(&self, now: Instant) {
        self.pending().packets.note_input(now);
    }

    /// When the live source's timer should call [`Stream::handle_timeout`]: the
    /// [`Stream::flush_at`] of its latest input (pushed or noted). None while nothing is
    /// collected, so an idle source arms no timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending().packets.poll_timeout()
    }

    /// The live source's timer fired at `now`: if [`Stream::poll_timeout`] has passed,
    /// the packets collected go to the sinks without waiting for the rest of their frame.
    pub fn handle_timeout(&self, now: Instant) {
        let mut pending = self.pending();
        pending.packets.handle_timeout(now);
        self.send_batches(&mut pending.packets);
    }

    /// The batch being collected.
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The path this stream is published on.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The announced presentation.
    pub fn presentation(&self) -> &Presentation {
        &self.presentation
    }

    /// A number that differs between successive streams on a path (the SDP version).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Marks the stream as readable (its source started sending).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether readers may DESCRIBE and PLAY it.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.is_ended()
    }

    /// Whether the stream has ended.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Completes when the stream ends.
    pub async fn ended(&self) {
        let notified = self.ended_notify.notified();
        if self.is_ended() {
            return;
        }
        notified.await;
    }

    /// The path's reader group: RTSP readers and multicast groups subscribe to it.
    pub fn readers(&self) -> &Arc<ReaderGroup> {
        &self.readers
    }

    /// Subscribes a hub sink (a recorder, a web output) besides the reader group: it gets
    /// every batch filed from now on, and the end. No GOP cache is handed over (the reader
    /// group keeps it for its readers). A sink added to an ended stream is told so at once.
    pub fn add_sink(&self, sink: Arc<dyn sluice_hub::Sink>) -> StreamSinkId {
        let id = StreamSinkId(self.next_sink.fetch_add(1, Ordering::Relaxed));
        let mut sinks = self.sinks();
        if self.is_ended() {
            drop(sinks);
            sink.on_end(EndReason::SourceGone);
        } else {
            sinks.push((id, sink));
        }
        id
    }

    /// Unsubscribes a hub sink; unknown ids are ignored. A batch being handed out may
    /// still reach it.
    pub fn remove_sink(&self, id: StreamSinkId) {
        self.sinks().retain(|(i, _)| *i != id);
    }

    /// The hub sinks besides the reader group.
    fn sinks(&self) -> MutexGuard<'_, Vec<(StreamSinkId, Arc<dyn sluice_hub::Sink>)>> {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Turns the GOP cache on (the default for streams with video) or off (private
    /// on-demand streams, or `rtsp.gop_cache = false`).
    pub fn set_gop_cache(&self, on: bool) {
        let video = if on {
            keyframe_track(&self.presentation)
        } else {
            None
        };
        self.readers.set_gop_cache(video);
    }

    /// The source changed (e.g. a pull source reconnected) but the media did not: the
    /// next packets continue the stream's numbering instead of jumping.
    pub fn handle_source_change(&self) {
        for t in &self.tracks {
            t.timeline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .handle_source_change();
        }
    }

    /// Hands one RTP packet of `track` to every sink (a shared buffer, no copies). Its
    /// numbering is first mapped onto the stream's timeline, which changes nothing until
    /// the source changes; then the header is rewritten once, here, for all sinks.
    pub fn push_rtp(&self, mut packet: MediaPacket) {
        let Some(state) = self.tracks.get(packet.track) else {
            return;
        };
        let mapped = state
            .timeline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(&packet.header, packet.received_at);
        let h = packet.header;
        if (mapped.sequence, mapped.timestamp, mapped.ssrc) != (h.sequence, h.timestamp, h.ssrc) {
            // A freshly received buffer is uniquely owned: rewrite in place, else copy once.
            let mut buf = packet
                .data
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            rewrite_header(&mut buf, mapped.sequence, mapped.timestamp, mapped.ssrc);
            packet.data = buf.freeze();
            packet.header.sequence = mapped.sequence;
            packet.header.timestamp = mapped.timestamp;
            packet.header.ssrc = mapped.ssrc;
        }
        let mut pending = self.pending();
        let now = packet.received_at;
        pending.packets.push(now, packet);
        self.send_batches(&mut pending.packets);
    }

    /// The source has more input at hand (a read returned several frames, or more is
    /// waiting): until [`Stream::release_frames`], frames that end are not handed to the
    /// sinks one by one but collected (up to 256 packets), so that a busy server sends
    /// each reader several frames per system call. An idle one, whose reads each end
    /// within a frame or at its end, still sends each frame as soon as it is complete:
    /// the batches grow with the load, not with a fixed delay. No effect with a fan-out
    /// window, which batches anyway.
    pub fn hold_frames(&self) {
        self.pending().packets.hold();
    }

    /// The source's input at hand is used up: the complete frames collected since
    /// [`Stream::hold_frames`] go to the sinks in one batch; an unfinished frame waits
    /// for its end as usual.
    pub fn release_frames(&self) {
        let mut pending = self.pending();
        pending.packets.release();
        self.send_batches(&mut pending.packets);
    }

    /// Hands the packets collected so far to the sinks (or to the fan-out threads that
    /// deliver them, see [`crate::readers::outbox`]). Sources call it when they have no more
    /// input at hand, so a batch never waits for input that is not coming.
    pub fn flush(&self) {
        let mut pending = self.pending();
        pending.packets.flush();
        self.send_batches(&mut pending.packets);
    }

    /// Flushes the batch if its first packet arrived more than `max_age` before `now`: a
    /// frame without a marker bit, with no next frame yet to end it.
    pub fn flush_stale(&self, now: Instant, max_age: std::time::Duration) {
        let mut pending = self.pending();
        pending.packets.flush_stale(now, max_age);
        self.send_batches(&mut pending.packets);
    }

    /// Hands every batch the batcher has cut to the sinks, oldest first.
    fn send_batches(&self, batcher: &mut Batcher) {
        while let Some(batch) = batcher.next_batch() {
            self.send_batch(batch);
        }
    }

    /// Hands one batch to every sink, the reader group first, as one shared [`Batch`]
    /// (the packets moved in, refilled for every batch: no allocation once warm).
    fn send_batch(&self, batch: std::vec::Drain<'_, MediaPacket>) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.extend(batch);
        self.readers.on_batch(&out);
        {
            let sinks = self.sinks();
            for (_, sink) in sinks.iter() {
                sink.on_batch(&out);
            }
        }
        out.clear();
    }

    /// Records the source's Sender Report for `track`, so sinks can emit their own SRs
    /// with the same NTP↔RTP mapping.
    pub fn handle_sender_report(&self, track: usize, info: &SenderInfo, now: Instant) {
        if let Some(state) = self.tracks.get(track) {
            let rtp_timestamp = state
                .timeline
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map_timestamp(info.rtp_timestamp);
            *state.sr.lock().unwrap_or_else(|e| e.into_inner()) = Some(SrMapping {
                ntp: info.ntp,
                rtp_timestamp,
                received_at: now,
            });
        }
    }

    /// The source's latest NTP↔RTP mapping for `track`, if it sent an SR.
    pub fn sr_mapping(&self, track: usize) -> Option<SrMapping> {
        *self
            .tracks
            .get(track)?
            .sr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The last RTP header handed to the readers on `track`.
    pub fn last_header(&self, track: usize) -> Option<RtpHeader> {
        self.readers.last_header(track)
    }

    /// Tells every reader that the source's media ended (see
    /// [`Reader::handle_end_of_stream`]).
    pub fn push_end_of_stream(&self) {
        self.flush();
        self.readers.end_of_stream();
    }

    /// Ends the stream: every sink is told (after the batches before) and dropped;
    /// `ended()` completes.
    pub fn end(&self, reason: EndReason) {
        if self.is_ended() {
            return;
        }
        self.flush();
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        self.readers.on_end(reason);
        let sinks = std::mem::take(&mut *self.sinks());
        for (_, sink) in sinks {
            sink.on_end(reason);
        }
        self.ended_notify.notify_waiters();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::readers::egress::Egress;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    pub(crate) const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";

    /// Counts the packets and ends it is handed, and notes the last packet's buffer.
    #[derive(Default)]
    pub(crate) struct Counting {
        pub(crate) packets: AtomicUsize,
        pub(crate) ends: AtomicUsize,
        pub(crate) last_ptr: Mutex<Option<usize>>,
    }
    impl Reader for Counting {
        fn handle_packet(&self, p: &MediaPacket) {
            self.packets.fetch_add(1, Ordering::SeqCst);
            *self.last_ptr.lock().unwrap() = Some(p.data.as_ptr() as usize);
        }
        fn handle_end(&self, _: EndReason) {
            self.ends.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A packet of track 0 carrying `data`.
    pub(crate) fn packet(data: &Bytes) -> MediaPacket {
        MediaPacket {
            track: 0,
            data: data.clone(),
            header: RtpHeader {
                payload_type: 96,
                marker: false,
                sequence: 1,
                timestamp: 2,
                ssrc: 3,
                payload_offset: 12,
            },
            received_at: Instant::now(),
        }
    }

    #[test]
    fn a_source_change_keeps_numbering_continuous_for_sinks() {
        let s = Stream::new(
            "p".into(),
            Presentation::from_sdp(SDP.as_bytes()).unwrap(),
            1,
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        type Seen = Vec<(u16, u32, u32, Vec<u8>)>;
        struct Rec(Arc<Mutex<Seen>>);
        impl Reader for Rec {
            fn handle_packet(&self, p: &MediaPacket) {
                let h = sluice_rtp::packet::parse_rtp(&p.data).unwrap();
                assert_eq!(
                    (h.sequence, h.timestamp, h.ssrc),
                    (p.header.sequence, p.header.timestamp, p.header.ssrc)
                );
                self.0.lock().unwrap().push((
                    h.sequence,
                    h.timestamp,
                    h.ssrc,
                    p.data[12..].to_vec(),
                ));
            }
            fn handle_end(&self, _: EndReason) {}
        }
        s.readers().add(Arc::new(Rec(seen.clone())));
        let pkt = |seq: u16, ts: u32, ssrc: u32| rtp_packet(false, seq, ts, ssrc, &[seq as u8]);
        s.push_rtp(pkt(10, 1000, 5));
        s.push_rtp(pkt(11, 4000, 5));
        s.handle_source_change();
        s.push_rtp(pkt(30_000, 77, 9));
        s.flush();
        let v = seen.lock().unwrap();
        assert_eq!(v[0].0, 10);
        assert_eq!(v[2].0, 12, "sequence continues");
        assert_eq!(v[2].2, 5, "SSRC kept");
        assert!(v[2].1.wrapping_sub(4000) > 0 && v[2].1.wrapping_sub(4000) < 90_000);
        assert_eq!(v[2].3, vec![(30_000u16) as u8], "payload untouched");
    }

    /// A sink recording each batch it is handed, as its packets' sequence numbers.
    struct Batches(Mutex<Vec<Vec<u16>>>);

    impl Reader for Batches {
        fn handle_packet(&self, _: &MediaPacket) {}
        fn handle_batch(&self, e: &mut Egress<'_>) {
            let seqs = e.packets().iter().map(|p| p.header.sequence).collect();
            self.0.lock().unwrap().push(seqs);
        }
        fn handle_end(&self, _: EndReason) {}
    }

    /// Subscribes a [`Batches`] recorder to `s`.
    fn record_batches(s: &Stream) -> Arc<Batches> {
        let b = Arc::new(Batches(Mutex::new(Vec::new())));
        s.readers().add(b.clone());
        b
    }

    /// A stream with an H.264 video track (0) and an AAC audio track (1).
    pub(crate) fn av_stream() -> Arc<Stream> {
        const AV: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
            m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
            m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n";
        Stream::new(
            "p".into(),
            Presentation::from_sdp(AV.as_bytes()).unwrap(),
            1,
        )
    }

    /// A small packet of an [`av_stream`] track, received `at`.
    fn av_packet(track: usize, seq: u16, ts: u32, marker: bool, at: Instant) -> MediaPacket {
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

    /// An RTP packet of track 0 (payload type 96), as parsed from its bytes.
    fn rtp_packet(marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> MediaPacket {
        let mut d = vec![0x80, u8::from(marker) << 7 | 96];
        d.extend_from_slice(&seq.to_be_bytes());
        d.extend_from_slice(&ts.to_be_bytes());
        d.extend_from_slice(&ssrc.to_be_bytes());
        d.extend_from_slice(payload);
        let data = Bytes::from(d);
        MediaPacket {
            track: 0,
            header: sluice_rtp::packet::parse_rtp(&data).unwrap(),
            data,
            received_at: Instant::now(),
        }
    }

    /// A whole video frame of [`av_stream`]: one H.264 NAL unit (`nal`: its header byte).
    pub(crate) fn h264_packet(seq: u16, ts: u32, nal: u8) -> MediaPacket {
        rtp_packet(true, seq, ts, 1, &[nal, 0x88])
    }

    #[test]
    fn a_fanout_window_batches_frames_and_tracks_until_it_ends() {
        let s = av_stream();
        let b = record_batches(&s);
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let pkt = av_packet;
        // Without a window: a batch per frame, and audio alone.
        assert_eq!(s.flush_at(ms(0)), None, "nothing pending");
        s.push_rtp(pkt(0, 1, 0, false, ms(0)));
        assert_eq!(s.flush_at(ms(0)), Some(ms(0) + INPUT_PAUSE));
        s.push_rtp(pkt(0, 2, 0, true, ms(0)));
        s.push_rtp(pkt(1, 3, 0, true, ms(5)));
        assert_eq!(*b.0.lock().unwrap(), vec![vec![1, 2], vec![3]]);

        s.set_fanout_window(Duration::from_millis(40));
        // Frames and audio within 40 ms of the batch's first packet stay together...
        s.push_rtp(pkt(0, 4, 3000, true, ms(10)));
        s.push_rtp(pkt(1, 5, 1024, true, ms(20)));
        s.push_rtp(pkt(0, 6, 6000, false, ms(43)));
        s.push_rtp(pkt(0, 7, 6000, true, ms(43)));
        assert_eq!(
            b.0.lock().unwrap().len(),
            2,
            "nothing flushed inside the window"
        );
        // ... the source's timer fires at the window's end...
        assert_eq!(s.flush_at(ms(45)), Some(ms(50)));
        // ... and the first packet past it ends the batch, itself included.
        s.push_rtp(pkt(0, 8, 9000, true, ms(51)));
        assert_eq!(b.0.lock().unwrap().last(), Some(&vec![4, 5, 6, 7, 8]));
        s.push_rtp(pkt(1, 9, 2048, true, ms(60)));
        assert_eq!(s.flush_at(ms(61)), Some(ms(100)));
        s.flush_stale(ms(95), Duration::from_millis(20));
        assert_eq!(
            b.0.lock().unwrap().len(),
            3,
            "the reaper waits for the window too"
        );
        s.flush();
        assert_eq!(b.0.lock().unwrap().last(), Some(&vec![9]));
        // Holding and releasing frames changes nothing inside a window, even for a
        // batch past the per-frame cap.
        s.hold_frames();
        for i in 0..70u16 {
            s.push_rtp(pkt(0, 20 + i, 10000 + u32::from(i), true, ms(150)));
        }
        s.release_frames();
        assert_eq!(b.0.lock().unwrap().len(), 4, "the window's batch waits");
        s.flush();
        // A window's batch is bounded: one vectored write per TCP reader.
        for i in 0..600u16 {
            s.push_rtp(pkt(0, 100 + i, 12000, false, ms(200)));
        }
        assert!(b.0.lock().unwrap()[5..]
            .iter()
            .all(|batch| batch.len() == MAX_PENDING_WINDOWED));
    }

    #[test]
    fn a_frame_is_one_batch_ended_by_its_marker_or_the_next_frame() {
        let s = Stream::new(
            "p".into(),
            Presentation::from_sdp(SDP.as_bytes()).unwrap(),
            1,
        );
        let b = record_batches(&s);
        let pkt = |seq: u16, ts: u32, marker: bool| {
            let data = Bytes::from_static(&[0x80; 20]);
            MediaPacket {
                track: 0,
                header: RtpHeader {
                    payload_type: 96,
                    marker,
                    sequence: seq,
                    timestamp: ts,
                    ssrc: 1,
                    payload_offset: 12,
                },
                data,
                received_at: Instant::now(),
            }
        };
        s.push_rtp(pkt(1, 0, false));
        s.push_rtp(pkt(2, 0, false));
        s.push_rtp(pkt(3, 0, true));
        s.push_rtp(pkt(4, 3000, false)); // marker lost
        s.push_rtp(pkt(5, 6000, false));
        s.push_rtp(pkt(6, 6000, false));
        assert_eq!(*b.0.lock().unwrap(), vec![vec![1, 2, 3], vec![4]]);
        s.flush();
        s.flush();
        assert_eq!(b.0.lock().unwrap().last(), Some(&vec![5, 6]));
        for i in 0..100u16 {
            s.push_rtp(pkt(100 + i, 9000, false));
        }
        assert_eq!(b.0.lock().unwrap().last().map(Vec::len), Some(MAX_PENDING));
    }

    #[test]
    fn held_frames_go_out_together_when_the_input_at_hand_is_used_up() {
        let s = av_stream();
        let b = record_batches(&s);
        let pkt = |track, seq, ts, marker| av_packet(track, seq, ts, marker, Instant::now());
        let batches = || b.0.lock().unwrap().clone();
        // Two frames, audio between them, a frame with a lost marker and half a frame
        // arrive in one read: nothing goes out until the read is used up...
        s.hold_frames();
        s.push_rtp(pkt(0, 1, 0, false));
        s.push_rtp(pkt(0, 2, 0, true));
        s.push_rtp(pkt(1, 3, 0, true));
        s.push_rtp(pkt(0, 4, 3000, false)); // marker lost
        s.push_rtp(pkt(0, 5, 6000, false));
        assert!(batches().is_empty(), "held frames wait for the release");
        // ... then the complete frames go in one batch and the unfinished one waits.
        s.release_frames();
        assert_eq!(batches(), vec![vec![1, 2, 3, 4]]);
        // Released, frames go one by one again; the unfinished one ends with its marker.
        s.push_rtp(pkt(0, 6, 6000, true));
        assert_eq!(batches().last(), Some(&vec![5, 6]));
        s.push_rtp(pkt(1, 7, 1024, true));
        assert_eq!(batches().last(), Some(&vec![7]));
        // A read that ends inside a frame sends nothing of it.
        s.hold_frames();
        s.push_rtp(pkt(0, 8, 9000, false));
        s.release_frames();
        assert_eq!(batches().len(), 3);
        assert!(s.flush_at(Instant::now()).is_some(), "the pause timer runs");
        s.flush();
        assert_eq!(batches().last(), Some(&vec![8]));
        // A long backlog is cut at 256 packets, at the last frame's end before it.
        s.hold_frames();
        for f in 0..100u16 {
            s.push_rtp(pkt(0, 100 + 3 * f, 12000 + u32::from(f), false));
            s.push_rtp(pkt(0, 101 + 3 * f, 12000 + u32::from(f), false));
            s.push_rtp(pkt(0, 102 + 3 * f, 12000 + u32::from(f), true));
        }
        s.release_frames();
        let sizes: Vec<usize> = batches()[4..].iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            vec![255, 45],
            "cut at frame ends, at most 256 packets"
        );
        // With nothing held, nothing is left behind.
        assert_eq!(s.flush_at(Instant::now()), None);
    }

    #[test]
    fn an_unfinished_frame_goes_out_when_the_source_timer_fires_after_a_pause() {
        let s = av_stream();
        let b = record_batches(&s);
        let t0 = Instant::now();
        assert_eq!(s.poll_timeout(), None, "nothing collected: no timer");
        s.push_rtp(av_packet(0, 1, 0, false, t0));
        // More of the frame is still arriving: the pause runs from the latest input.
        s.note_input(t0 + Duration::from_millis(5));
        let due = s.poll_timeout().expect("a timer for the collected packet");
        assert_eq!(due, t0 + Duration::from_millis(5) + INPUT_PAUSE);
        s.handle_timeout(t0 + Duration::from_millis(5));
        assert!(b.0.lock().unwrap().is_empty(), "not due yet");
        s.handle_timeout(due);
        assert_eq!(*b.0.lock().unwrap(), vec![vec![1]]);
        assert_eq!(s.poll_timeout(), None);
    }

    /// What a live source may do to a stream, for the property test below.
    #[derive(Debug, Clone)]
    enum Op {
        /// A packet: audio, or video continuing the frame or starting a new one.
        Push {
            audio: bool,
            new_frame: bool,
            marker: bool,
        },
        /// A keyframe's worth: this many packets of a new video frame, no marker yet.
        LongFrame(u16),
        Hold,
        Release,
        Flush,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (any::<bool>(), any::<bool>(), proptest::bool::weighted(0.3))
                .prop_map(|(audio, new_frame, marker)| Op::Push { audio, new_frame, marker }),
            1 => (1u16..200).prop_map(Op::LongFrame),
            1 => Just(Op::Hold),
            1 => Just(Op::Release),
            1 => Just(Op::Flush),
        ]
    }

    proptest::proptest! {
        /// Whatever a source's pushes, holds, releases and flushes: every packet reaches
        /// the sinks once and in order, no batch exceeds 256 packets, and outside a hold
        /// what waits is at most one unfinished video frame, shorter than 64 packets.
        #[test]
        fn held_or_not_every_packet_goes_out_once_in_order(
            ops in proptest::collection::vec(op(), 1..200)
        ) {
            let s = av_stream();
            let b = record_batches(&s);
            // At most 200 ops of at most 199 packets: sequence numbers do not wrap.
            let (mut seq, mut video_ts, mut audio_ts, mut held) = (0u16, 0u32, 0u32, false);
            let push = |track, seq, ts, marker| s.push_rtp(av_packet(track, seq, ts, marker, Instant::now()));
            for op in ops {
                match op {
                    Op::Push { audio, new_frame, marker } => {
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
                        push(usize::from(audio), seq, ts, marker);
                    }
                    Op::LongFrame(n) => {
                        video_ts += 3000;
                        for _ in 0..n {
                            seq += 1;
                            push(0, seq, video_ts, false);
                        }
                    }
                    Op::Hold => {
                        s.hold_frames();
                        held = true;
                    }
                    Op::Release => {
                        s.release_frames();
                        held = false;
                    }
                    Op::Flush => s.flush(),
                }
                if !held {
                    let pending = s.pending.lock().unwrap();
                    let p = &pending.packets;
                    proptest::prop_assert!(p.len() < MAX_PENDING, "{} waiting", p.len());
                    proptest::prop_assert!(
                        p.iter().all(|x| x.track == 0 && !x.header.marker
                            && x.header.timestamp == p[0].header.timestamp),
                        "waiting is not one unfinished video frame"
                    );
                }
            }
            s.release_frames();
            s.flush();
            let batches = b.0.lock().unwrap();
            proptest::prop_assert!(batches.iter().all(|x| !x.is_empty() && x.len() <= MAX_PENDING_WINDOWED));
            let got: Vec<u16> = batches.iter().flatten().copied().collect();
            let want: Vec<u16> = (1..=seq).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn packets_for_unknown_tracks_are_ignored() {
        let s = Stream::new(
            "p".into(),
            Presentation::from_sdp(SDP.as_bytes()).unwrap(),
            1,
        );
        let a = Arc::new(Counting::default());
        s.readers().add(a.clone());
        let mut p = packet(&Bytes::from_static(&[0x80; 12]));
        p.track = 7;
        s.push_rtp(p);
        assert_eq!(a.packets.load(Ordering::SeqCst), 0);
    }
}

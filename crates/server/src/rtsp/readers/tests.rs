//! The stream and its reader group together: batching as readers see it, GOP hand-over,
//! offloading, ends. (The stream alone is tested in `sluice_hub::stream`.)

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use sluice_hub::batcher::{INPUT_PAUSE, MAX_PENDING};
use sluice_hub::packet::{EndReason, MediaPacket};
use sluice_hub::presentation::Presentation;
use sluice_hub::stream::MAX_BATCH;
use sluice_hub::Stream;
use sluice_rtp::packet::RtpHeader;

use crate::rtsp::readers::{Reader, ReaderGroup};

/// A stream with its reader group attached before any packet, as the RTSP module's hook
/// attaches it to every stream the hub creates.
pub(crate) fn stream_with_readers(
    path: String,
    presentation: Presentation,
    version: u64,
) -> Arc<Stream> {
    let s = Stream::new(path, presentation, version);
    ReaderGroup::of(&s);
    s
}

use crate::rtsp::readers::group::Egress;
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
    let s = stream_with_readers(
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
            self.0
                .lock()
                .unwrap()
                .push((h.sequence, h.timestamp, h.ssrc, p.data[12..].to_vec()));
        }
        fn handle_end(&self, _: EndReason) {}
    }
    ReaderGroup::of(&s).add(Arc::new(Rec(seen.clone())));
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
    ReaderGroup::of(s).add(b.clone());
    b
}

/// A stream with an H.264 video track (0) and an AAC audio track (1).
pub(crate) fn av_stream() -> Arc<Stream> {
    const AV: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
        m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
        m=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n";
    stream_with_readers(
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
        .all(|batch| batch.len() == MAX_BATCH));
}

#[test]
fn a_frame_is_one_batch_ended_by_its_marker_or_the_next_frame() {
    let s = stream_with_readers(
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
                let (len, one_frame) = s.with_collected(|p| {
                    (
                        p.len(),
                        p.iter().all(|x| {
                            x.track == 0
                                && !x.header.marker
                                && x.header.timestamp == p[0].header.timestamp
                        }),
                    )
                });
                proptest::prop_assert!(len < MAX_PENDING, "{} waiting", len);
                proptest::prop_assert!(one_frame, "waiting is not one unfinished video frame");
            }
        }
        s.release_frames();
        s.flush();
        let batches = b.0.lock().unwrap();
        proptest::prop_assert!(batches.iter().all(|x| !x.is_empty() && x.len() <= MAX_BATCH));
        let got: Vec<u16> = batches.iter().flatten().copied().collect();
        let want: Vec<u16> = (1..=seq).collect();
        proptest::prop_assert_eq!(got, want);
    }
}

#[test]
fn packets_for_unknown_tracks_are_ignored() {
    let s = stream_with_readers(
        "p".into(),
        Presentation::from_sdp(SDP.as_bytes()).unwrap(),
        1,
    );
    let a = Arc::new(Counting::default());
    ReaderGroup::of(&s).add(a.clone());
    let mut p = packet(&Bytes::from_static(&[0x80; 12]));
    p.track = 7;
    s.push_rtp(p);
    assert_eq!(a.packets.load(Ordering::SeqCst), 0);
}

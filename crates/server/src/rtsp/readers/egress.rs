//! One flush of a stream's packets to its sinks: the shared view every sink gets of a
//! batch (a frame's packets, usually), and the UDP messages the sinks add to it, sent
//! together with `sendmmsg` at the end (see [`sluice_net::udp_send`]).
//!
//! The batch is planned once per flush for all readers: per track, the packets' slices
//! and their GSO runs. A UDP reader then adds one message per run (its address and a
//! pointer to the shared slices): no payload is copied, nothing is allocated per reader.
//!
//! A GSO run's packets are copied once per flush, back to back, into a buffer the caller
//! lends the plan, and every reader's message for the run is that one contiguous slice:
//! the kernel then copies each message from one place instead of walking a slice per
//! packet, which costs the sender measurably less CPU (bench/RESULTS.md).

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::rtsp::readers::media_queue::ChannelMap;
use sluice_net::media_socket::MediaSocket;

use crate::rtsp::readers::direct_budget;
use crate::rtsp::readers::latency::LatencyHistogram;
use sluice_hub::MediaPacket;
use sluice_net::udp_send::{self, Datagram, Sent};

/// A group of a track's consecutive packets sent as one UDP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Track of the packets.
    pub track: usize,
    /// Range of the plan's slices (one per packet).
    start: usize,
    /// The run's packets as one contiguous slice (index in the plan's `joined`), for a
    /// GSO run of more than one packet.
    joined: Option<usize>,
    /// Packets in the run.
    pub packets: u16,
    /// GSO segment size (the first packet's size).
    segment: u16,
    /// RTP payload bytes in the run (for Sender Report octet counts).
    pub payload_bytes: u32,
    /// SSRC of the run's packets.
    pub ssrc: u32,
}

/// The per-flush plan shared by every UDP reader.
#[derive(Debug)]
pub struct UdpPlan<'a> {
    slices: Vec<IoSlice<'a>>,
    /// One slice per GSO run of more than one packet: its packets back to back.
    joined: Vec<IoSlice<'a>>,
    /// RTP payload bytes of each slice's packet (for refunds of refused messages).
    payloads: Vec<u32>,
    runs: Vec<Run>,
}

impl<'a> UdpPlan<'a> {
    /// Plans `packets`: grouped by track (order kept within a track), split into runs.
    /// `buffer` (cleared first) receives a copy of each GSO run's packets, back to back,
    /// which the run's messages then send from.
    pub fn new(packets: &'a [MediaPacket], gso: bool, buffer: &'a mut Vec<u8>) -> UdpPlan<'a> {
        let mut slices = Vec::with_capacity(packets.len());
        let mut payloads = Vec::with_capacity(packets.len());
        let mut runs = Vec::new();
        // Byte ranges in `buffer` of the runs that get one, filled below.
        let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
        buffer.clear();
        let mut tracks: Vec<usize> = packets.iter().map(|p| p.track).collect();
        tracks.sort_unstable();
        tracks.dedup();
        let mut ranges = Vec::new();
        for track in tracks {
            let of_track: Vec<&MediaPacket> = packets.iter().filter(|p| p.track == track).collect();
            let base = slices.len();
            slices.extend(of_track.iter().map(|p| IoSlice::new(&p.data)));
            payloads.extend(of_track.iter().map(|p| p.payload_len()));
            ranges.clear();
            udp_send::runs(of_track.iter().map(|p| p.data.len()), gso, &mut ranges);
            for &(start, count, segment) in &ranges {
                let payload_bytes: u32 = payloads[base + start..base + start + count].iter().sum();
                let joined = (count > 1).then(|| {
                    let from = buffer.len();
                    for p in &of_track[start..start + count] {
                        buffer.extend_from_slice(&p.data);
                    }
                    spans.push(from..buffer.len());
                    spans.len() - 1
                });
                runs.push(Run {
                    track,
                    start: base + start,
                    joined,
                    packets: count as u16,
                    segment,
                    payload_bytes,
                    ssrc: of_track[start].header.ssrc,
                });
            }
        }
        let buffer: &'a Vec<u8> = buffer;
        let joined = spans
            .into_iter()
            .map(|span| IoSlice::new(&buffer[span]))
            .collect();
        UdpPlan {
            slices,
            joined,
            payloads,
            runs,
        }
    }

    /// The runs, grouped by track.
    pub fn runs(&self) -> &[Run] {
        &self.runs
    }
}

/// What a sink had counted for a UDP message the kernel refused whole (send buffer full,
/// destination unreachable, …), handed back so that its Sender Reports count only what
/// left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    /// Track of the message's packets.
    pub track: usize,
    /// Packets in the message.
    pub packets: u32,
    /// Their RTP payload bytes.
    pub payload_bytes: u32,
}

/// One flush as a sink sees it.
pub struct Egress<'p> {
    packets: &'p [MediaPacket],
    plan: &'p UdpPlan<'p>,
    socket: Option<Arc<MediaSocket>>,
    pending: Vec<Datagram<'p>>,
    /// For each pending message: the sink that queued it (its place in the flush) and
    /// what it counted for it.
    owners: Vec<(usize, Refund)>,
    /// Refused messages' owners and refunds, handed back by [`Egress::finish_noting`].
    refused: Vec<(usize, Refund)>,
    sent: Sent,
    /// When the oldest packet of the batch arrived.
    oldest: Option<Instant>,
    /// Where the UDP sends' latency is recorded: the histogram the first sink to send
    /// handed over (a stream's sinks are all one server's).
    latency: Option<Arc<LatencyHistogram>>,
    /// The packets as one shared allocation, made for the first queue-based sink.
    shared: Option<Arc<[MediaPacket]>>,
    /// The packets framed for TCP readers with these channels ([`Egress::framed`]).
    framed: Option<(ChannelMap, Bytes)>,
    /// TCP readers that asked for a framed batch so far.
    framed_asked: usize,
    /// When the flush started.
    start: Instant,
    /// This thread's direct-write time saved up at the start (see [`direct_budget`]).
    saved: std::time::Duration,
    /// Until when TCP sinks may write straight to their sockets (`None`: to the last, on
    /// a thread exempt from the budget).
    direct_until: Option<Instant>,
    /// Whether the stretch ran out and the whole flush was judged against `saved`.
    judged: bool,
    /// When a TCP sink was last allowed to write directly (what the flush spent).
    direct_last: Option<Instant>,
    /// Sinks in the flush (its shard), and how many were begun.
    sinks: usize,
    begun: usize,
}

impl std::fmt::Debug for Egress<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("packets", &self.packets.len())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<'p> Egress<'p> {
    /// A flush of `packets`, planned as `plan`.
    pub fn new(packets: &'p [MediaPacket], plan: &'p UdpPlan<'p>) -> Egress<'p> {
        let start = Instant::now();
        let saved = direct_budget::start(start);
        Egress {
            packets,
            plan,
            socket: None,
            pending: Vec::with_capacity(udp_send::MAX_BATCH),
            owners: Vec::with_capacity(udp_send::MAX_BATCH),
            refused: Vec::new(),
            sent: Sent::default(),
            oldest: packets.iter().map(|p| p.received_at).min(),
            latency: None,
            shared: None,
            framed: None,
            framed_asked: 0,
            start,
            saved: saved.unwrap_or_default(),
            direct_until: saved.map(|_| start + direct_budget::DIRECT_STRETCH),
            judged: false,
            direct_last: None,
            sinks: 1,
            begun: 0,
        }
    }

    /// Records no ingest → egress latency for this flush: its packets are resent (a
    /// reader's catch-up), and their age is not the time the server took.
    pub fn without_latency(mut self) -> Egress<'p> {
        self.oldest = None;
        self
    }

    /// Says the flush will serve `sinks` sinks (one shard's), each announced with
    /// [`Egress::begin_sink`]: what lets it predict its whole length.
    pub fn for_sinks(mut self, sinks: usize) -> Egress<'p> {
        self.sinks = sinks;
        self
    }

    /// Notes that the next sink is being served.
    pub fn begin_sink(&mut self) {
        self.begun += 1;
    }

    /// Whether a TCP sink may still write this batch to its socket itself: within the
    /// flush's first [`direct_budget::DIRECT_STRETCH`], or past it when the whole flush,
    /// at its pace so far, fits in this thread's saved-up direct-write time. Always on a
    /// thread exempt from the budget ([`direct_budget::exempt_this_thread`]).
    pub fn direct_allowed(&mut self) -> bool {
        let Some(until) = self.direct_until else {
            return true;
        };
        let now = Instant::now();
        if now >= until && !self.judged {
            self.judged = true;
            let elapsed = now.saturating_duration_since(self.start);
            let done = self.begun.saturating_sub(1);
            if direct_budget::whole_flush_fits(elapsed, done, self.sinks, self.saved) {
                self.direct_until = Some(self.start + self.saved);
            }
        }
        let allowed = self.direct_until.is_some_and(|until| now < until);
        if allowed {
            self.direct_last = Some(now);
        }
        allowed
    }

    /// The batch as one shared allocation (made once per flush, on first use), for sinks
    /// that queue it: each then holds one reference count instead of one per packet.
    pub fn shared_packets(&mut self) -> Arc<[MediaPacket]> {
        self.shared
            .get_or_insert_with(|| self.packets.iter().cloned().collect())
            .clone()
    }

    /// The batch framed for a TCP reader on `channels` (each packet's interleaved header
    /// and the packet, back to back), so that its write is one slice instead of two per
    /// packet: copied once per flush, from the second reader that asks on (a flush to
    /// one reader gains nothing from the copy), and shared by every reader with the
    /// channels the first framing was made for. `None` for the first reader and for
    /// readers on other channels: they are written from the packets.
    ///
    /// One slice per frame instead of a header and a payload slice per packet, because the
    /// kernel then copies each write from one place (the saving is in bench/RESULTS.md).
    pub fn framed(&mut self, channels: &ChannelMap) -> Option<Bytes> {
        self.framed_asked += 1;
        match &self.framed {
            Some((made_for, image)) => (made_for == channels).then(|| image.clone()),
            None if self.framed_asked >= 2 => {
                let image = crate::rtsp::readers::media_queue::framed(self.packets, channels);
                self.framed = Some((*channels, image.clone()));
                Some(image)
            }
            None => None,
        }
    }

    /// When the batch's oldest packet was received.
    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }

    /// The batch's packets, in arrival order.
    pub fn packets(&self) -> &'p [MediaPacket] {
        self.packets
    }

    /// The batch's UDP runs, grouped by track.
    pub fn runs(&self) -> &'p [Run] {
        self.plan.runs()
    }

    /// Queues `run` to `to` from `socket` (as one GSO message if `gso` and the socket
    /// still sends GSO runs ([`MediaSocket::gso`]), else a message per packet); sent with
    /// other readers' messages in one `sendmmsg` (at most [`udp_send::MAX_BATCH`] queued
    /// at a time), whose ingest → egress latency is recorded into `latency` (the sending
    /// sink's server's histogram; `None`: nowhere).
    pub fn send_udp(
        &mut self,
        socket: &Arc<MediaSocket>,
        to: SocketAddr,
        run: &Run,
        gso: bool,
        latency: Option<&Arc<LatencyHistogram>>,
    ) {
        if self.latency.is_none() {
            // Once per flush, not per reader: one reference count for the whole flush.
            self.latency = latency.cloned();
        }
        if !self.socket.as_ref().is_some_and(|s| Arc::ptr_eq(s, socket)) {
            self.flush_udp();
            self.socket = Some(socket.clone());
        }
        let gso = gso && socket.gso();
        let range = run.start..run.start + usize::from(run.packets);
        let parts = &self.plan.slices[range.clone()];
        if gso || run.packets == 1 {
            let parts = match run.joined {
                Some(i) if gso => &self.plan.joined[i..=i],
                _ => parts,
            };
            let refund = Refund {
                track: run.track,
                packets: u32::from(run.packets),
                payload_bytes: run.payload_bytes,
            };
            self.push(
                Datagram {
                    to,
                    parts,
                    segment: (run.packets > 1).then_some(run.segment),
                    packets: run.packets,
                },
                refund,
            );
        } else {
            let payloads = &self.plan.payloads[range];
            for (part, &payload_bytes) in parts.chunks(1).zip(payloads) {
                let refund = Refund {
                    track: run.track,
                    packets: 1,
                    payload_bytes,
                };
                self.push(
                    Datagram {
                        to,
                        parts: part,
                        segment: None,
                        packets: 1,
                    },
                    refund,
                );
            }
        }
    }

    fn push(&mut self, d: Datagram<'p>, refund: Refund) {
        self.pending.push(d);
        self.owners.push((self.begun.saturating_sub(1), refund));
        if self.pending.len() >= udp_send::MAX_BATCH {
            self.flush_udp();
        }
    }

    fn flush_udp(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(socket) = &self.socket {
            let (owners, refused) = (&self.owners, &mut self.refused);
            let sent = udp_send::send_batch_noting(socket, &self.pending, |i| {
                if let Some(&owner) = owners.get(i) {
                    refused.push(owner);
                }
            });
            if let (Some(oldest), Some(latency)) = (self.oldest, &self.latency) {
                latency.record(
                    Instant::now().saturating_duration_since(oldest),
                    sent.packets,
                );
            }
            self.sent += sent;
        }
        self.pending.clear();
        self.owners.clear();
    }

    /// Sends what is queued; returns what the whole flush sent over UDP.
    pub fn finish(self) -> Sent {
        self.finish_noting(|_, _| {})
    }

    /// As [`Egress::finish`], and hands each message the kernel refused to `refused`, with
    /// the place in the flush of the sink that queued it (counted by
    /// [`Egress::begin_sink`], from 0).
    pub fn finish_noting(mut self, mut refused: impl FnMut(usize, Refund)) -> Sent {
        self.flush_udp();
        if let Some(last) = self.direct_last {
            direct_budget::spend(last.saturating_duration_since(self.start));
        }
        for &(owner, refund) in &self.refused {
            refused(owner, refund);
        }
        self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs one flush of `sinks` sinks, each taking `work` (spun, not slept), on a fresh
    /// thread (so with a full direct-write bucket, or `exempt` from the budget); returns
    /// how many sinks were allowed to write directly.
    fn allowed_of(sinks: usize, work: Duration, exempt: bool) -> usize {
        std::thread::spawn(move || {
            if exempt {
                direct_budget::exempt_this_thread();
            }
            let packets: Vec<MediaPacket> = Vec::new();
            let mut joined = Vec::new();
            let plan = UdpPlan::new(&packets, false, &mut joined);
            let mut egress = Egress::new(&packets, &plan).for_sinks(sinks);
            let mut allowed = 0;
            for _ in 0..sinks {
                egress.begin_sink();
                if egress.direct_allowed() {
                    allowed += 1;
                }
                let t = Instant::now();
                while t.elapsed() < work {
                    std::hint::spin_loop();
                }
            }
            egress.finish();
            allowed
        })
        .join()
        .expect("flush thread")
    }

    fn packet(track: usize, seq: u16, len: usize) -> MediaPacket {
        let mut data = vec![0x80, 96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        data[2..4].copy_from_slice(&seq.to_be_bytes());
        data.resize(len, seq as u8);
        MediaPacket {
            track,
            data: bytes::Bytes::from(data),
            header: sluice_rtp::packet::RtpHeader {
                payload_type: 96,
                marker: false,
                sequence: seq,
                timestamp: 0,
                ssrc: 7,
                payload_offset: 12,
            },
            received_at: Instant::now(),
        }
    }

    #[test]
    fn a_gso_run_is_planned_as_its_packets_back_to_back_in_one_slice() {
        // Video: three full packets and a short one (one run), audio: one packet.
        let packets = vec![
            packet(0, 1, 1400),
            packet(1, 50, 300),
            packet(0, 2, 1400),
            packet(0, 3, 1400),
            packet(0, 4, 900),
        ];
        let mut buffer = vec![0xee; 7];
        let plan = UdpPlan::new(&packets, true, &mut buffer);
        let runs = plan.runs();
        assert_eq!(runs.len(), 2);
        let video = runs[0];
        assert_eq!((video.track, video.packets, video.segment), (0, 4, 1400));
        let whole = &plan.joined[video.joined.expect("a run of 4 is joined")];
        let expected: Vec<u8> = [0, 2, 3, 4]
            .iter()
            .flat_map(|&i| packets[i].data.to_vec())
            .collect();
        assert_eq!(
            &whole[..],
            &expected[..],
            "the packets, in order, and nothing else"
        );
        assert_eq!(
            runs[1].joined, None,
            "a single packet is sent from where it is"
        );
        assert_eq!(plan.joined.len(), 1);
        drop(plan);
        assert_eq!(buffer.len(), 5100, "the lent buffer was cleared first");
        // Without GSO nothing is copied.
        let plan = UdpPlan::new(&packets, false, &mut buffer);
        assert!(plan.runs().iter().all(|r| r.joined.is_none()));
    }

    #[tokio::test]
    async fn a_reader_receives_a_joined_run_as_the_original_datagrams() {
        let packets = vec![packet(0, 1, 1400), packet(0, 2, 1400), packet(0, 3, 500)];
        let tx = Arc::new(MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let gso = tx.probe_gso();
        let mut buffer = Vec::new();
        let plan = UdpPlan::new(&packets, gso, &mut buffer);
        let mut egress = Egress::new(&packets, &plan);
        egress.begin_sink();
        for run in plan.runs() {
            egress.send_udp(&tx, to, run, gso, None);
        }
        let sent = egress.finish();
        assert_eq!(sent.packets, 3);
        let mut buf = [0u8; 2048];
        for p in &packets {
            let n = tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut buf))
                .await
                .expect("a datagram arrives")
                .unwrap();
            assert_eq!(&buf[..n], &p.data[..]);
        }
    }

    #[test]
    fn a_flush_that_fits_its_saved_time_is_written_directly_to_the_last_sink() {
        // 60 sinks of 50 µs: 3 ms, past the 2 ms stretch but within the 8 ms saved up.
        // Tried a few times: a thread descheduled during its stretch predicts a longer
        // flush and rightly stops.
        let runs: Vec<usize> = (0..5)
            .map(|_| allowed_of(60, Duration::from_micros(50), false))
            .collect();
        assert!(runs.contains(&60), "{runs:?}");
    }

    #[test]
    fn a_flush_too_long_for_its_saved_time_stops_at_the_stretch() {
        // 400 sinks of 50 µs: at least 20 ms, over the 8 ms saved up. Only the sinks
        // begun within the 2 ms stretch (at most 40, one every 50 µs or slower) write.
        let allowed = allowed_of(400, Duration::from_micros(50), false);
        assert!((1..=41).contains(&allowed), "{allowed}");
    }

    #[test]
    fn a_thread_exempt_from_the_budget_writes_directly_to_the_last_sink() {
        assert_eq!(allowed_of(400, Duration::from_micros(50), true), 400);
    }
}

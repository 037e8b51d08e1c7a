//! Micro-benchmarks of one packet's way through the server: parse, timeline rewrite, and
//! the fan-out of a frame to many readers (TCP readers' queues; UDP readers through the
//! batched `sendmmsg`/GSO egress to real loopback sockets).
//!
//! `cargo bench -p sluice-server --bench packet_path` prints per-iteration times; the
//! fan-out groups report throughput in packet deliveries (packets × readers) per second.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice_hub::presentation::Presentation;
use sluice_hub::{MediaPacket, Stream};
use sluice_rtp::packet::{parse_rtp, rewrite_header};
use sluice_rtp::timeline::Timeline;
use sluice_server::rtsp::readers::media_queue::{MediaQueue, Taken, TcpOut};
use sluice_server::rtsp::readers::reader::{Outbox, ReaderSink, Target};
use sluice_server::rtsp::readers::ReaderGroup;

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\n";

/// A 1080p P-frame's worth of packets: `n` FU-A packets of 1,400 bytes, the last shorter.
fn frame(seq0: u16, ts: u32, n: usize) -> Vec<(Bytes, sluice_rtp::packet::RtpHeader)> {
    (0..n)
        .map(|i| {
            let last = i + 1 == n;
            let len = if last { 700 } else { 1400 };
            let mut d = vec![0u8; len];
            d[0] = 0x80;
            d[1] = 96 | if last { 0x80 } else { 0 };
            d[2..4].copy_from_slice(&seq0.wrapping_add(i as u16).to_be_bytes());
            d[4..8].copy_from_slice(&ts.to_be_bytes());
            d[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            d[12] = 0x7c;
            d[13] = 0x01;
            let data = Bytes::from(d);
            let header = parse_rtp(&data).expect("valid");
            (data, header)
        })
        .collect()
}

fn parse_and_rewrite(c: &mut Criterion) {
    let (pkt, _) = frame(1, 0, 1).remove(0);
    c.bench_function("parse_rtp 700 B", |b| b.iter(|| parse_rtp(black_box(&pkt))));
    let mut tl = Timeline::new(90_000);
    let now = Instant::now();
    let mut buf = pkt.to_vec();
    let mut seq = 0u16;
    c.bench_function("timeline map + header rewrite", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            rewrite_header(&mut buf, seq, 3000, 7);
            let h = parse_rtp(&buf).expect("valid");
            let m = tl.map(&h, now);
            rewrite_header(&mut buf, m.sequence, m.timestamp, m.ssrc);
            black_box(&buf);
        })
    });
}

fn stream() -> Arc<Stream> {
    let s = Stream::new(
        "bench".into(),
        Presentation::from_sdp(SDP.as_bytes()).expect("sdp"),
        1,
    );
    ReaderGroup::of(&s).set_gop_cache(None);
    s
}

fn push_frame(s: &Stream, seq: &mut u16, ts: &mut u32, n: usize) {
    for (data, header) in frame(*seq, *ts, n) {
        s.push_rtp(MediaPacket {
            track: 0,
            data,
            header,
            received_at: Instant::now(),
        });
    }
    *seq = seq.wrapping_add(n as u16);
    *ts = ts.wrapping_add(3000);
}

fn fan_out_tcp(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan-out to TCP reader queues");
    for readers in [1usize, 100, 400] {
        let s = stream();
        let queues: Vec<Arc<MediaQueue>> = (0..readers)
            .map(|_| {
                let q = Arc::new(MediaQueue::new(1 << 16, None));
                let sink = Arc::new(ReaderSink::new(
                    "bench".into(),
                    vec![Target::Tcp { rtp: 0, rtcp: 1 }, Target::None],
                    Outbox::Tcp(q.clone()),
                    Duration::from_secs(3600),
                    Arc::new(|_| {}),
                ));
                ReaderGroup::of(&s).add(sink.clone());
                sink.open();
                q
            })
            .collect();
        let (mut seq, mut ts) = (0u16, 0u32);
        const N: usize = 12;
        g.throughput(Throughput::Elements((N * readers) as u64));
        g.bench_function(format!("{readers} queued readers, 12-packet frame"), |b| {
            b.iter_batched(
                || {
                    let mut out = Taken::default();
                    for q in &queues {
                        out.clear();
                        q.take(&mut out, usize::MAX);
                    }
                },
                |_| push_frame(&s, &mut seq, &mut ts, N),
                BatchSize::SmallInput,
            )
        });
        drop(queues);
        let _ = TcpOut::Close;
    }
    g.finish();
}

fn fan_out_udp(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let mut g = c.benchmark_group("fan-out to UDP readers (sendmmsg, loopback)");
    g.sample_size(20);
    for (readers, gso) in [(100usize, true), (100, false)] {
        let s = stream();
        let tx = Arc::new(
            sluice_net::media_socket::MediaSocket::bind("127.0.0.1:0".parse().expect("addr"))
                .expect("bind"),
        );
        let gso = gso && tx.probe_gso();
        let rxs: Vec<std::net::UdpSocket> = (0..readers)
            .map(|_| {
                let r = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                r.set_nonblocking(true).expect("nonblocking");
                r
            })
            .collect();
        for r in &rxs {
            let to = r.local_addr().expect("addr");
            let sink = Arc::new(ReaderSink::new(
                "bench".into(),
                vec![Target::Udp { rtp: to, rtcp: to }, Target::None],
                Outbox::Udp {
                    rtp: tx.clone(),
                    rtcp: tx.clone(),
                    gso,
                },
                Duration::from_secs(3600),
                Arc::new(|_| {}),
            ));
            ReaderGroup::of(&s).add(sink.clone());
            sink.open();
        }
        let (mut seq, mut ts) = (0u16, 0u32);
        const N: usize = 12;
        g.throughput(Throughput::Elements((N * readers) as u64));
        let name = format!("{readers} readers, 12-packet frame, gso {gso}");
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    // Empty the receivers (not timed) so nothing is dropped for lack of room.
                    let mut buf = [0u8; 2048];
                    for r in &rxs {
                        while r.recv(&mut buf).is_ok() {}
                    }
                },
                |_| push_frame(&s, &mut seq, &mut ts, N),
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, parse_and_rewrite, fan_out_tcp, fan_out_udp);
criterion_main!(benches);

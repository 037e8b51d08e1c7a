//! RTP/RTCP behaviour checked packet by packet with a synthetic publisher (raw RTSP
//! client sending hand-made RTP and SRs) and raw readers: exact RTP-Info, byte-identical
//! relay, Sender Reports that keep the publisher's NTP↔RTP mapping, Receiver Reports to
//! the publisher that count its losses, BYE when the publisher leaves, and sessions that
//! other connections cannot use.

mod common;

use std::time::{Duration, Instant};

use common::rtsp_client::{describe, raw_publish, Incoming, RtspClient};
use common::*;
use sluice_rtp::ntp::NtpTime;
use sluice_rtp::packet::parse_rtp;
use sluice_rtp::rtcp::{parse_compound, write_sender_report, RtcpPacket, SenderInfo};

const SSRC: u32 = 0x1122_3344;
/// 90 kHz ticks per packet at 25 packets/s.
const TICKS: u32 = 3600;
/// RTP timestamp of sequence number 0 of the synthetic stream.
const TS0: u32 = 0x4000_0000;
const SEQ0: u16 = 65_000; // so the stream wraps during the test

/// One synthetic RTP packet: a single-NAL H.264 "slice" whose payload names its seq.
fn rtp_packet(i: u32) -> Vec<u8> {
    let seq = SEQ0.wrapping_add(i as u16);
    let ts = TS0.wrapping_add(i * TICKS);
    let mut p = vec![0x80, 0x60 | 0x80];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.push(0x41); // non-IDR slice NAL header
    p.extend_from_slice(&i.to_be_bytes());
    p.extend(std::iter::repeat_n((i % 251) as u8, 200));
    p
}

fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut f = vec![b'$', channel];
    f.extend_from_slice(&(data.len() as u16).to_be_bytes());
    f.extend_from_slice(data);
    f
}

/// The publisher's SR for packet `i`, with NTP = a fixed origin + i/25 s.
fn sender_report(i: u32) -> (Vec<u8>, NtpTime, u32) {
    let ntp = NtpTime::from_unix(Duration::from_secs(1_700_000_000))
        .add(Duration::from_millis(u64::from(i) * 40));
    let rtp = TS0.wrapping_add(i * TICKS);
    let mut buf = Vec::new();
    write_sender_report(
        &mut buf,
        &SenderInfo {
            ssrc: SSRC,
            ntp,
            rtp_timestamp: rtp,
            packet_count: i,
            octet_count: i * 205,
        },
        &[],
        "synthetic",
    );
    (buf, ntp, rtp)
}

/// A raw publisher that sends packet `i` every 40 ms (skipping those in `skip`) and an
/// SR every 25 packets, while collecting what the server sends back on its RTCP channel.
struct SyntheticPublisher {
    client: RtspClient,
    next: u32,
    skip: Vec<u32>,
    started: Instant,
    /// RTCP received from the server.
    rtcp: Vec<Vec<u8>>,
    /// (ntp, rtp) of the SRs sent.
    srs: Vec<(NtpTime, u32)>,
}

impl SyntheticPublisher {
    fn start(url: &str, skip: Vec<u32>) -> SyntheticPublisher {
        let (client, _session) = raw_publish(url);
        fast_reads(&client);
        SyntheticPublisher {
            client,
            next: 0,
            skip,
            started: Instant::now(),
            rtcp: Vec::new(),
            srs: Vec::new(),
        }
    }

    /// Sends what is due by now and reads what the server sent, for `d`.
    fn run_for(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            while self.started + Duration::from_millis(40) * self.next <= Instant::now() {
                let i = self.next;
                if !self.skip.contains(&i) {
                    self.client.send_raw(&frame(0, &rtp_packet(i))).unwrap();
                }
                if i % 25 == 0 {
                    let (sr, ntp, rtp) = sender_report(i);
                    self.client.send_raw(&frame(1, &sr)).unwrap();
                    self.srs.push((ntp, rtp));
                }
                self.next += 1;
            }
            if let Ok(Some(Incoming::Data(f))) = self.client.next_incoming(Duration::from_millis(5))
            {
                if f.channel == 1 {
                    self.rtcp.push(f.data);
                }
            }
        }
    }
}

/// Short socket reads, so polling loops are not paced by the client's default timeout.
fn fast_reads(c: &RtspClient) {
    c.stream
        .set_read_timeout(Some(Duration::from_millis(2)))
        .unwrap();
}

/// DESCRIBE + SETUP (TCP, channels 0-1) + PLAY; returns the PLAY response.
fn play_tcp(c: &mut RtspClient, url: &str) -> (common::rtsp_client::RtspResponse, String) {
    fast_reads(c);
    let (_, controls) = describe(c, url);
    let r = c
        .request(
            "SETUP",
            &controls[0],
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
            b"",
        )
        .unwrap();
    assert_eq!(r.status, 200, "SETUP: {r:?}");
    let session = r.session_id().unwrap();
    let r = c
        .request("PLAY", url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "PLAY: {r:?}");
    (r, session)
}

fn rtp_info_seq(header: &str) -> u16 {
    header
        .split(';')
        .find_map(|p| p.trim().strip_prefix("seq="))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no seq in RTP-Info {header:?}"))
}

#[test]
fn relay_is_byte_identical_and_rtp_info_names_the_first_packet() {
    let server = Server::start("");
    let url = server.url("synthetic/exact");
    let mut publisher = SyntheticPublisher::start(&url, vec![]);
    publisher.run_for(Duration::from_millis(500));

    let mut reader = RtspClient::connect(server.addr()).unwrap();
    // Keep publishing from a thread while the reader works.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let pub_thread = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            publisher.run_for(Duration::from_millis(100));
        }
        publisher
    });
    let (play, _) = play_tcp(&mut reader, &url);
    let info = play.header("RTP-Info").expect("RTP-Info").to_string();
    assert!(info.contains("trackID=0"), "{info}");
    assert_eq!(play.header("Range"), Some("npt=now-"));
    let first_seq = rtp_info_seq(&info);

    let mut got: Vec<Vec<u8>> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    while got.len() < 60 && Instant::now() < deadline {
        if let Ok(Some(Incoming::Data(f))) = reader.next_incoming(Duration::from_millis(50)) {
            if f.channel == 0 {
                got.push(f.data);
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _publisher = pub_thread.join().unwrap();
    assert!(got.len() >= 60, "only {} packets relayed", got.len());
    let first = parse_rtp(&got[0]).unwrap();
    assert_eq!(
        first.sequence, first_seq,
        "RTP-Info seq is not the first packet's"
    );
    for (k, pkt) in got.iter().enumerate() {
        let h = parse_rtp(pkt).unwrap();
        assert_eq!(
            h.sequence,
            first_seq.wrapping_add(k as u16),
            "gap or reorder at {k}"
        );
        let i = u32::from(h.sequence.wrapping_sub(SEQ0));
        assert_eq!(pkt, &rtp_packet(i), "packet {i} was altered in relay");
    }
}

#[test]
fn readers_get_sender_reports_with_the_publishers_clock_mapping() {
    let server = Server::start("");
    let url = server.url("synthetic/sr");
    let mut publisher = SyntheticPublisher::start(&url, vec![]);
    publisher.run_for(Duration::from_millis(1200)); // at least one SR sent
    let (pub_ntp, pub_rtp) = publisher.srs[0];

    let mut reader = RtspClient::connect(server.addr()).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let pub_thread = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            publisher.run_for(Duration::from_millis(100));
        }
    });
    play_tcp(&mut reader, &url);
    let mut report = None;
    let deadline = Instant::now() + Duration::from_secs(8);
    while report.is_none() && Instant::now() < deadline {
        if let Ok(Some(Incoming::Data(f))) = reader.next_incoming(Duration::from_millis(50)) {
            if f.channel == 1 {
                report = parse_compound(&f.data)
                    .unwrap()
                    .into_iter()
                    .find_map(|p| match p {
                        RtcpPacket::SenderReport { info, .. } => Some(info),
                        _ => None,
                    });
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    pub_thread.join().unwrap();
    let sr = report.expect("no Sender Report within 8 s of PLAY");
    assert_eq!(sr.ssrc, SSRC);
    assert!(sr.packet_count > 0 && sr.octet_count > 0, "{sr:?}");
    // The reader's SR must lie on the publisher's NTP↔RTP line (± 50 ms of drift).
    let elapsed = sr.ntp.to_unix().as_secs_f64() - pub_ntp.to_unix().as_secs_f64();
    let expected = pub_rtp.wrapping_add((elapsed * 90_000.0).round() as i64 as u32);
    let diff = sr.rtp_timestamp.wrapping_sub(expected) as i32;
    assert!(
        diff.abs() < 4500,
        "SR rtp {} vs expected {expected}: off by {diff} ticks",
        sr.rtp_timestamp
    );
}

#[test]
fn publisher_gets_receiver_reports_counting_its_losses() {
    let server = Server::start("");
    let url = server.url("synthetic/rr");
    let lost = vec![10, 11, 12, 40, 41];
    let mut publisher = SyntheticPublisher::start(&url, lost.clone());
    publisher.run_for(Duration::from_secs(7));
    let blocks: Vec<_> = publisher
        .rtcp
        .iter()
        .flat_map(|d| parse_compound(d).unwrap())
        .filter_map(|p| match p {
            RtcpPacket::ReceiverReport { blocks, .. } => Some(blocks),
            _ => None,
        })
        .flatten()
        .collect();
    let last = blocks.last().expect("no Receiver Report within 7 s");
    assert_eq!(last.ssrc, SSRC);
    assert_eq!(last.cumulative_lost, lost.len() as i32, "{blocks:?}");
    assert!(
        last.last_sr != 0,
        "RR does not echo the publisher's SR: {last:?}"
    );
}

#[test]
fn publisher_teardown_sends_bye_and_closes_readers() {
    let server = Server::start("");
    let url = server.url("synthetic/bye");
    let mut publisher = SyntheticPublisher::start(&url, vec![]);
    publisher.run_for(Duration::from_millis(300));
    let mut reader = RtspClient::connect(server.addr()).unwrap();
    play_tcp(&mut reader, &url);
    publisher.run_for(Duration::from_millis(500));
    let r = publisher
        .client
        .request("TEARDOWN", &url, &[("Session", "x")], b"")
        .unwrap();
    assert_eq!(r.status, 454, "TEARDOWN with a wrong session: {r:?}");
    let session = publisher_session(&server);
    let r = publisher
        .client
        .request("TEARDOWN", &url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "TEARDOWN: {r:?}");
    let mut bye = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match reader.next_incoming(Duration::from_millis(100)) {
            Ok(Some(Incoming::Data(f))) if f.channel == 1 => {
                bye |= parse_compound(&f.data)
                    .unwrap()
                    .iter()
                    .any(|p| matches!(p, RtcpPacket::Bye { ssrcs } if ssrcs.contains(&SSRC)));
            }
            Err(_) => break, // closed
            _ => {}
        }
        assert!(Instant::now() < deadline, "reader connection not closed");
    }
    assert!(bye, "reader got no RTCP BYE before the close");
    // The path is free again.
    let _again = SyntheticPublisher::start(&url, vec![]);
}

/// The publisher's session id, from the server log's record line.
fn publisher_session(server: &Server) -> String {
    let line = server
        .wait_log_line(Duration::from_secs(2), |l| {
            l.contains(" record") && l.contains("session=")
        })
        .expect("record log line");
    let rest = &line[line.find("session=").unwrap() + 8..];
    rest.split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_session_is_only_honoured_on_its_own_connection() {
    let server = Server::start("");
    let url = server.url("synthetic/hijack");
    let mut publisher = SyntheticPublisher::start(&url, vec![]);
    publisher.run_for(Duration::from_millis(300));
    let mut owner = RtspClient::connect(server.addr()).unwrap();
    fast_reads(&owner);
    let (_, controls) = describe(&mut owner, &url);
    let r = owner
        .request(
            "SETUP",
            &controls[0],
            &[("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1")],
            b"",
        )
        .unwrap();
    let session = r.session_id().unwrap();
    // Another connection presenting the id gets 454 for every method, and cannot tear it down.
    let mut thief = RtspClient::connect(server.addr()).unwrap();
    for method in ["PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER"] {
        let r = thief
            .request(method, &url, &[("Session", &session)], b"")
            .unwrap();
        assert_eq!(r.status, 454, "{method} from another connection: {r:?}");
    }
    let r = thief
        .request(
            "SETUP",
            &controls[0],
            &[
                ("Transport", "RTP/AVP/TCP;unicast;interleaved=0-1"),
                ("Session", &session),
            ],
            b"",
        )
        .unwrap();
    assert_eq!(
        r.status, 454,
        "SETUP into another connection's session: {r:?}"
    );
    // The owner's session is intact.
    let r = owner
        .request("PLAY", &url, &[("Session", &session)], b"")
        .unwrap();
    assert_eq!(r.status, 200, "owner PLAY after hijack attempts: {r:?}");
    publisher.run_for(Duration::from_millis(300));
    let mut rtp = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(Incoming::Data(f))) = owner.next_incoming(Duration::from_millis(20)) {
            rtp += usize::from(f.channel == 0);
        }
        publisher.run_for(Duration::from_millis(1));
    }
    assert!(rtp > 10, "owner received only {rtp} packets");
}

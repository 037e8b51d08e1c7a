//! Batched UDP egress: many datagrams, to many readers, in one `sendmmsg(2)` call, each
//! message optionally a UDP GSO run (`UDP_SEGMENT`: several equal-sized RTP packets to
//! one reader that the kernel splits into datagrams). The fan-out of one frame to N
//! readers is then N/64 system calls instead of N × packets.
//!
//! The system call itself is `sluice-net`'s ([`crate::udp::sendmmsg`]); this module
//! decides what is sent: it plans runs, drops (and counts) what the kernel refuses, and
//! resends a run the device refuses as GSO packet by packet, turning GSO off for the
//! socket ([`MediaSocket::gso`]).

use std::io::IoSlice;

use crate::media_socket::MediaSocket;

pub use crate::udp::{Datagram, MAX_BATCH, MAX_GSO_BYTES, MAX_SEGMENTS};

/// What a batch send did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams the kernel took.
    pub packets: u64,
    /// Datagrams dropped (send buffer full, unreachable, …).
    pub dropped: u64,
    /// System calls made.
    pub syscalls: u64,
}

impl std::ops::AddAssign for Sent {
    fn add_assign(&mut self, o: Sent) {
        self.packets += o.packets;
        self.dropped += o.dropped;
        self.syscalls += o.syscalls;
    }
}

/// Sends `msgs` from `socket` (non-blocking) in `sendmmsg` batches of up to [`MAX_BATCH`].
/// A message the kernel refuses is dropped (UDP semantics; counted) and the rest still go.
/// A GSO run refused as such (EIO/EINVAL: no checksum offload) turns GSO off for
/// `socket` and is resent packet by packet.
pub fn send_batch(socket: &MediaSocket, msgs: &[Datagram<'_>]) -> Sent {
    send_batch_noting(socket, msgs, |_| {})
}

/// Like [`send_batch`], and calls `refused` with the index in `msgs` of each message the
/// kernel refused whole (not for a GSO run resent packet by packet), so a caller can
/// count exactly what left.
pub fn send_batch_noting(
    socket: &MediaSocket,
    msgs: &[Datagram<'_>],
    mut refused: impl FnMut(usize),
) -> Sent {
    let mut sent = Sent::default();
    let mut rest = msgs;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MAX_BATCH)];
        let (n, mut err) = crate::udp::sendmmsg(socket, chunk);
        sent.syscalls += 1;
        if n == 0 && err.is_none() {
            err = Some(std::io::ErrorKind::WriteZero.into());
        }
        sent.packets += chunk[..n].iter().map(|m| u64::from(m.packets)).sum::<u64>();
        rest = &rest[n..];
        if let Some(e) = err {
            // The first unsent message failed: drop it (or split a refused GSO run).
            let Some((first, after)) = rest.split_first() else {
                break;
            };
            let gso_refused = first.segment.is_some() && crate::udp::refuses_gso(&e);
            if gso_refused {
                socket.disable_gso();
                sent += send_split(socket, first);
            } else {
                sent.dropped += u64::from(first.packets);
                refused(msgs.len() - rest.len());
            }
            rest = after;
        }
    }
    sent
}

/// Sends a GSO run as one datagram per packet: a part each when the run has a part per
/// packet, else its bytes cut at the segment size (as the kernel would have cut them).
fn send_split(socket: &MediaSocket, run: &Datagram<'_>) -> Sent {
    let pieces: Vec<IoSlice<'_>> = if run.parts.len() == usize::from(run.packets) {
        run.parts.iter().map(|p| IoSlice::new(p)).collect()
    } else {
        let segment = run.segment.map_or(usize::MAX, usize::from).max(1);
        run.parts
            .iter()
            .flat_map(|p| p.chunks(segment))
            .map(IoSlice::new)
            .collect()
    };
    let singles: Vec<Datagram<'_>> = pieces
        .chunks(1)
        .map(|p| Datagram {
            to: run.to,
            parts: p,
            segment: None,
            packets: 1,
        })
        .collect();
    send_batch(socket, &singles)
}

/// Splits one track's packets (in order) into sendable messages' packet ranges: runs of
/// equal-sized packets (the last of a run may be shorter) within the GSO limits, or
/// single packets when GSO is off.
pub fn runs(sizes: impl IntoIterator<Item = usize>, gso: bool, out: &mut Vec<(usize, usize, u16)>) {
    // (start index, count, segment size)
    let mut cur: Option<(usize, usize, usize, usize, bool)> = None; // start, count, seg, bytes, closed
    for (i, len) in sizes.into_iter().enumerate() {
        if let Some((start, count, seg, bytes, closed)) = cur {
            let fits = gso
                && !closed
                && len <= seg
                && count < MAX_SEGMENTS
                && bytes + len <= MAX_GSO_BYTES
                && seg <= usize::from(u16::MAX);
            if fits {
                cur = Some((start, count + 1, seg, bytes + len, len < seg));
                continue;
            }
            out.push((start, count, seg as u16));
        }
        cur = Some((i, 1, len, len, false));
    }
    if let Some((start, count, seg, _, _)) = cur {
        out.push((start, count, seg.min(usize::from(u16::MAX)) as u16));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn r(sizes: &[usize], gso: bool) -> Vec<(usize, usize, u16)> {
        let mut v = Vec::new();
        runs(sizes.iter().copied(), gso, &mut v);
        v
    }

    #[test]
    fn runs_group_equal_packets_and_end_at_a_shorter_one() {
        assert_eq!(
            r(&[1400, 1400, 1400, 700, 1400], true),
            vec![(0, 4, 1400), (4, 1, 1400)]
        );
        assert_eq!(r(&[700, 1400, 1400], true), vec![(0, 1, 700), (1, 2, 1400)]);
        assert_eq!(r(&[100, 100], false), vec![(0, 1, 100), (1, 1, 100)]);
        assert_eq!(r(&[], true), vec![]);
        let big = vec![1000; 100];
        let v = r(&big, true);
        assert_eq!(v[0], (0, 64, 1000));
        assert_eq!(v.iter().map(|x| x.1).sum::<usize>(), 100);
        let huge = vec![1400; 60];
        assert!(r(&huge, true).iter().all(|x| x.1 * 1400 <= MAX_GSO_BYTES));
    }

    #[tokio::test]
    async fn a_run_split_for_want_of_gso_goes_out_a_datagram_per_packet() {
        let tx = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let packets: [&[u8]; 3] = [&[1; 100], &[2; 100], &[3; 40]];
        let whole = packets.concat();
        let per_packet: Vec<IoSlice<'_>> = packets.iter().map(|p| IoSlice::new(p)).collect();
        let joined = [IoSlice::new(&whole)];
        // A run as planned (one contiguous part) and as a part per packet.
        for parts in [&joined[..], &per_packet[..]] {
            let run = Datagram {
                to,
                parts,
                segment: Some(100),
                packets: 3,
            };
            let sent = send_split(&tx, &run);
            assert_eq!((sent.packets, sent.syscalls), (3, 1));
            let mut buf = [0u8; 512];
            for p in packets {
                let n = tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut buf))
                    .await
                    .expect("a datagram arrives")
                    .unwrap();
                assert_eq!(&buf[..n], p);
            }
        }
    }

    #[tokio::test]
    async fn a_gso_run_refused_turns_gso_off_for_its_socket_only() {
        let tx = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let other = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        if !(tx.probe_gso() && other.probe_gso()) {
            return; // no UDP GSO here
        }
        // The kernel refuses a run to port 0 with EINVAL, as it would a device's refusal.
        let nowhere: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let packets = [[1u8; 100], [2u8; 100]];
        let parts: Vec<IoSlice<'_>> = packets.iter().map(|p| IoSlice::new(p)).collect();
        let run = Datagram {
            to: nowhere,
            parts: &parts,
            segment: Some(100),
            packets: 2,
        };
        let sent = send_batch(&tx, &[run]);
        // Split and sent packet by packet, each refused (port 0) and counted.
        assert_eq!((sent.packets, sent.dropped), (0, 2));
        assert!(!tx.gso());
        assert!(other.gso(), "another socket (another server's) keeps GSO");
    }

    #[tokio::test]
    async fn a_refused_message_is_dropped_and_named_and_the_rest_still_go() {
        let tx = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        // Port 0 is not a destination: the kernel refuses that message (EINVAL).
        let nowhere: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let p = [IoSlice::new(b"abc")];
        let msg = |to| Datagram {
            to,
            parts: &p,
            segment: None,
            packets: 1,
        };
        let msgs = [msg(to), msg(nowhere), msg(to), msg(nowhere), msg(to)];
        let mut named = Vec::new();
        let sent = send_batch_noting(&tx, &msgs, |i| named.push(i));
        assert_eq!((sent.packets, sent.dropped), (3, 2));
        assert_eq!(named, vec![1, 3]);
        let mut buf = [0u8; 16];
        for _ in 0..3 {
            let n = tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut buf))
                .await
                .expect("a datagram arrives")
                .unwrap();
            assert_eq!(&buf[..n], b"abc");
        }
    }

    #[tokio::test]
    async fn a_batch_reaches_several_receivers_with_gso_runs_split_by_the_kernel() {
        let tx = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let rx1 = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rx2 = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let gso = tx.probe_gso();
        let a = [7u8; 1000];
        let b = [8u8; 1000];
        let c = [9u8; 300];
        let run = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
        let single = [IoSlice::new(&c)];
        let mut msgs = Vec::new();
        for to in [rx1.local_addr().unwrap(), rx2.local_addr().unwrap()] {
            if gso {
                msgs.push(Datagram {
                    to,
                    parts: &run,
                    segment: Some(1000),
                    packets: 3,
                });
            } else {
                for p in run.chunks(1) {
                    msgs.push(Datagram {
                        to,
                        parts: p,
                        segment: None,
                        packets: 1,
                    });
                }
            }
            msgs.push(Datagram {
                to,
                parts: &single,
                segment: None,
                packets: 1,
            });
        }
        let sent = send_batch(&tx, &msgs);
        assert_eq!(sent.packets, 8);
        assert_eq!(sent.dropped, 0);
        assert_eq!(sent.syscalls, 1);
        for rx in [&rx1, &rx2] {
            let mut got = Vec::new();
            let mut buf = [0u8; 2000];
            for _ in 0..4 {
                let n = tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
                got.push((n, buf[0]));
            }
            assert_eq!(got, vec![(1000, 7), (1000, 8), (300, 9), (300, 9)]);
        }
    }
}

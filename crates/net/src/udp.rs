//! UDP: a socket the runtime watches for input only, receiving into a buffer's spare
//! capacity, and batched egress: many datagrams, to many destinations, in one
//! `sendmmsg(2)` call, each message optionally a UDP GSO run (`UDP_SEGMENT`: several
//! equal-sized datagrams to one destination, handed over as one message that the kernel
//! splits).
//!
//! Hand-written over `libc` because no maintained crate does this: `quinn-udp` sends one
//! message per system call (GSO but no `sendmmsg`), tokio and socket2 neither batch nor
//! take control messages; and tokio's `UdpSocket` registers for write readiness too,
//! which a sender that never waits for room pays for in wake-ups.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use bytes::BytesMut;
use socket2::Socket;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Most messages one [`sendmmsg`] call takes (the rest of a longer list is left unsent).
pub const MAX_BATCH: usize = 64;
/// Most segments in one GSO message (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
pub const MAX_SEGMENTS: usize = 64;
/// Most bytes in one GSO message (an IP packet's limit, less headers).
pub const MAX_GSO_BYTES: usize = 65_000;

/// A non-blocking UDP socket registered with the tokio runtime for readability only:
/// a task waiting in [`UdpSocket::recv_buf_from`] is woken when a datagram arrives, and
/// nothing is woken when the send buffer frees room (an event per sent datagram on a
/// busy sender). A sender that must wait for room asks [`UdpSocket::has_room`].
#[derive(Debug)]
pub struct UdpSocket {
    io: AsyncFd<Socket>,
}

impl UdpSocket {
    /// Makes `socket` (a UDP socket) non-blocking and registers it with the current
    /// runtime for reading. Must be called within a tokio runtime (panics otherwise).
    pub fn new(socket: Socket) -> io::Result<UdpSocket> {
        socket.set_nonblocking(true)?;
        // SAFETY: the `Socket` owns its descriptor, returns that same one from every
        // `as_raw_fd`, and closes it only when dropped, which is when the `AsyncFd` (after
        // deregistering it) drops it. The `Socket` is never handed out mutably (only
        // `&Socket`, through which its descriptor cannot be replaced or closed).
        let io = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(UdpSocket { io })
    }

    /// The socket, for options and plain sends.
    pub fn socket(&self) -> &Socket {
        self.io.get_ref()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket()
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    /// Waits for a datagram and appends it to `buf`'s spare capacity (a longer one is cut
    /// to fit); returns its length and sender. Cancel-safe: dropped while waiting, it has
    /// taken nothing.
    pub async fn recv_buf_from(&self, buf: &mut BytesMut) -> io::Result<(usize, SocketAddr)> {
        loop {
            let mut ready = self.io.readable().await?;
            if let Ok(received) = ready.try_io(|io| recv_into(io.get_ref(), buf)) {
                return received;
            }
        }
    }

    /// Whether the send buffer has room for more (what a tokio socket's write readiness
    /// reports), asked of the kernel with a zero-timeout `poll(2)`. On an error, says
    /// there is room: the send that follows reports the error.
    pub fn has_room(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: `poll` is one valid, initialised pollfd that outlives the call, the
        // count says one, and a zero timeout returns at once.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        n != 1 || poll.revents & libc::POLLOUT != 0
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket().as_fd()
    }
}

/// One non-blocking receive into `buf`'s spare capacity.
fn recv_into(socket: &Socket, buf: &mut BytesMut) -> io::Result<(usize, SocketAddr)> {
    let (n, from) = socket.recv_from(buf.spare_capacity_mut())?;
    // SAFETY: `recv_from` wrote the datagram's first `n` bytes into the spare capacity
    // (never more than its length), so they are initialised.
    unsafe { buf.set_len(buf.len() + n) };
    let from = from
        .as_socket()
        .ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
    Ok((n, from))
}

/// Whether `socket` can send GSO runs: sets `UDP_SEGMENT` to 1200 then back to 0 (two
/// `setsockopt(2)` calls), which Linux ≥ 4.18 accepts. A device without checksum offload
/// can still refuse a run when it is sent (see [`sendmmsg`]).
pub fn probe_gso(socket: impl AsFd) -> bool {
    let fd = socket.as_fd();
    set_udp_segment(fd, 1200).is_ok() && set_udp_segment(fd, 0).is_ok()
}

/// Sets the socket's default GSO segment size (`UDP_SEGMENT`; 0: none).
pub fn set_udp_segment(socket: impl AsFd, size: u16) -> io::Result<()> {
    let size = libc::c_int::from(size);
    // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from a valid local; the
    // descriptor is open for the call (`socket` borrows it).
    let r = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One message: a datagram, or (with `segment`) a GSO run of datagrams of `segment` bytes
/// each (the last may be shorter), all to `to`.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// Destination.
    pub to: SocketAddr,
    /// The bytes, gathered from these slices (packets of a run, back to back).
    pub parts: &'a [IoSlice<'a>],
    /// GSO segment size, when the message is a run of more than one packet.
    pub segment: Option<u16>,
    /// Packets in the message (1, or the run's length). Not used by the system call: it
    /// is carried for the caller's accounting of what was sent.
    pub packets: u16,
}

/// Whether `e`, the error of a [`sendmmsg`] whose first message was a GSO run, says
/// the run was refused as such: `EIO` (the device cannot segment it: no checksum
/// offload) or `EINVAL` (the kernel will not). Sent as separate datagrams, its
/// packets may still go.
pub fn refuses_gso(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO) | Some(libc::EINVAL))
}

/// Room for one message's control data: a `UDP_SEGMENT` cmsg carrying a u16.
const CMSG_SPACE: usize = 32;

/// One non-blocking `sendmmsg(2)` (`MSG_DONTWAIT`) of the first [`MAX_BATCH`] of `msgs`
/// from `socket`, retried if interrupted: how many messages the kernel took, and the
/// error that stopped the call before it took any.
///
/// A message with a `segment` carries it as a `UDP_SEGMENT` control message: without it
/// the kernel would send the whole run as one concatenated datagram. The kernel stops at
/// the first message it refuses and reports only those before it as sent; the refused
/// message's error comes from the next call, which starts with it.
pub fn sendmmsg(socket: impl AsFd, msgs: &[Datagram<'_>]) -> (usize, Option<io::Error>) {
    let fd = socket.as_fd().as_raw_fd();
    let len = msgs.len().min(MAX_BATCH);
    let msgs = &msgs[..len];
    // Plain-old-data arrays on the stack: zeroed is a valid value for all of them.
    // SAFETY: mmsghdr, sockaddr_storage are C structs for which all-zero bytes are valid.
    let mut hdrs: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut addrs: [libc::sockaddr_storage; MAX_BATCH] = unsafe { std::mem::zeroed() };
    let mut cmsgs = [[0u64; CMSG_SPACE / 8]; MAX_BATCH];
    for (((m, hdr), addr), cmsg) in msgs
        .iter()
        .zip(hdrs.iter_mut())
        .zip(addrs.iter_mut())
        .zip(cmsgs.iter_mut())
    {
        let addr_len = write_sockaddr(addr, m.to);
        let hdr = &mut hdr.msg_hdr;
        hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = addr_len;
        // IoSlice is ABI-compatible with iovec on Unix (documented by std).
        hdr.msg_iov = m.parts.as_ptr() as *mut libc::iovec;
        hdr.msg_iovlen = m.parts.len() as _;
        if let Some(seg) = m.segment {
            hdr.msg_control = cmsg.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE of a u16 is 24 bytes on 64-bit Linux (16 on 32-bit),
            // within the 32-byte, 8-aligned buffer `msg_control` points at; the macros
            // only compute offsets within it, and the writes stay within it.
            unsafe {
                hdr.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
                let c = libc::CMSG_FIRSTHDR(hdr);
                (*c).cmsg_level = libc::SOL_UDP;
                (*c).cmsg_type = libc::UDP_SEGMENT;
                (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), seg);
            }
        }
    }
    loop {
        // SAFETY: `hdrs[..len]` are initialized above; each points at an address in
        // `addrs`, control data in `cmsgs` and iovecs borrowed from `msgs`, all alive
        // until this call returns. The descriptor is open for the call (`socket`
        // borrows it).
        let r = unsafe {
            libc::sendmmsg(
                fd,
                hdrs.as_mut_ptr(),
                len as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r >= 0 {
            // A partial send stops before a failing message: the caller retries from there,
            // which sends it or returns its error.
            return (r as usize, None);
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return (0, Some(e));
    }
}

/// Writes `addr` as a C socket address; returns its length.
fn write_sockaddr(out: &mut libc::sockaddr_storage, addr: SocketAddr) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
            let sin =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
            let sin6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr {
                s6_addr: a.ip().octets(),
            };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Type};
    use std::time::Duration;

    fn bound(addr: &str) -> UdpSocket {
        let addr: SocketAddr = addr.parse().unwrap();
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.bind(&addr.into()).unwrap();
        UdpSocket::new(s).unwrap()
    }

    async fn recv(rx: &tokio::net::UdpSocket, buf: &mut [u8]) -> usize {
        tokio::time::timeout(Duration::from_secs(2), rx.recv(buf))
            .await
            .expect("a datagram arrives")
            .unwrap()
    }

    #[tokio::test]
    async fn receives_into_spare_capacity_after_what_the_buffer_holds() {
        let a = bound("127.0.0.1:0");
        let b = bound("127.0.0.1:0");
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"old");
        assert!(a.has_room());
        a.socket()
            .send_to(b"hello", &b.local_addr().unwrap().into())
            .unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), b.recv_buf_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((n, from), (5, a.local_addr().unwrap()));
        assert_eq!(&buf[..], b"oldhello");
    }

    /// Sends, in one call from a socket bound to `from`, a GSO run of 1000 + 1000 + 300
    /// bytes (or, without GSO, its three datagrams) to each of two receivers bound to
    /// `from`'s address; both get the three datagrams.
    async fn one_call_to_two_receivers(from: &str) {
        let tx = bound(from);
        let gso = probe_gso(&tx);
        let rx1 = tokio::net::UdpSocket::bind(from).await.unwrap();
        let rx2 = tokio::net::UdpSocket::bind(from).await.unwrap();
        let a = [7u8; 1000];
        let b = [8u8; 1000];
        let c = [9u8; 300];
        let run = [IoSlice::new(&a), IoSlice::new(&b), IoSlice::new(&c)];
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
                msgs.extend(run.chunks(1).map(|p| Datagram {
                    to,
                    parts: p,
                    segment: None,
                    packets: 1,
                }));
            }
        }
        let (n, err) = sendmmsg(&tx, &msgs);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(n, msgs.len());
        for rx in [&rx1, &rx2] {
            let mut buf = [0u8; 2000];
            let mut got = Vec::new();
            for _ in 0..3 {
                let n = recv(rx, &mut buf).await;
                got.push((n, buf[0]));
            }
            assert_eq!(got, vec![(1000, 7), (1000, 8), (300, 9)]);
        }
    }

    #[tokio::test]
    async fn one_call_reaches_several_ipv4_receivers_with_gso_runs_split_by_the_kernel() {
        one_call_to_two_receivers("127.0.0.1:0").await;
    }

    #[tokio::test]
    async fn one_call_reaches_several_ipv6_receivers() {
        if std::net::UdpSocket::bind("[::1]:0").is_err() {
            return; // no IPv6 loopback here
        }
        one_call_to_two_receivers("[::1]:0").await;
    }

    #[tokio::test]
    async fn a_refused_message_stops_the_call_and_is_reported_by_the_next() {
        let tx = bound("127.0.0.1:0");
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
        let msgs = [msg(to), msg(nowhere), msg(to)];
        let (n, err) = sendmmsg(&tx, &msgs);
        assert_eq!((n, err.is_none()), (1, true));
        let (n, err) = sendmmsg(&tx, &msgs[1..]);
        assert_eq!(n, 0);
        let err = err.expect("the refused message's error");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert!(refuses_gso(&err));
        assert!(!refuses_gso(&io::ErrorKind::WouldBlock.into()));
        let mut buf = [0u8; 16];
        assert_eq!(recv(&rx, &mut buf).await, 3);
    }

    #[tokio::test]
    async fn at_most_max_batch_messages_go_in_one_call() {
        let tx = bound("127.0.0.1:0");
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let p = [IoSlice::new(b"x")];
        let msgs = vec![
            Datagram {
                to: rx.local_addr().unwrap(),
                parts: &p,
                segment: None,
                packets: 1,
            };
            MAX_BATCH + 5
        ];
        assert_eq!(sendmmsg(&tx, &msgs).0, MAX_BATCH);
    }

    #[tokio::test]
    async fn the_gso_probe_leaves_no_default_segment_size() {
        let tx = bound("127.0.0.1:0");
        if !probe_gso(&tx) {
            return; // kernel without UDP GSO
        }
        // With a default segment size left set, this 3000-byte datagram would go out cut.
        let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let big = [5u8; 3000];
        tx.socket()
            .send_to(&big, &rx.local_addr().unwrap().into())
            .unwrap();
        let mut buf = [0u8; 4000];
        assert_eq!(recv(&rx, &mut buf).await, 3000);
    }
}

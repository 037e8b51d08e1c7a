//! The UDP sockets media is sent on (the server's RTP and RTCP ports, the multicast
//! sender), watched by the runtime for input only.
//!
//! A tokio `UdpSocket` is registered for readiness to read and to write. On a socket the
//! fan-out sends thousands of datagrams a second on, write readiness is an event per sent
//! datagram (the kernel signals room each time it frees one, at once on loopback), and
//! each event woke an idle runtime worker: ~9,500 wake-ups a second at 1,000 UDP readers
//! of a 4 Mb/s stream, each one preempting the fan-out thread on its core. The fan-out
//! never waits for room (a full send buffer drops and counts the datagram), so these
//! sockets are registered for reading only, and the one sender that does wait for room
//! (a reader's paced catch-up) asks the kernel with [`MediaSocket::has_room`].
//!
//! The registration and the system calls are `sluice-net`'s
//! ([`crate::udp::UdpSocket`]); this module decides the buffer sizes and keeps
//! whether the socket sends GSO runs.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;
use socket2::{Domain, Protocol, Socket, Type};

/// A non-blocking UDP socket the runtime wakes a task on when a datagram arrives, and
/// never for room to send; with whether it sends GSO runs as such.
#[derive(Debug)]
pub struct MediaSocket {
    io: crate::udp::UdpSocket,
    /// Whether GSO runs sent from this socket go as one message each: set by
    /// [`MediaSocket::probe_gso`], cleared for good when the kernel or the device refuses
    /// a run ([`crate::udp_send::send_batch`]). This socket's own, not the process's: a
    /// server (or a test) next to another in one process does not turn GSO off for it.
    gso: AtomicBool,
}

impl MediaSocket {
    /// A socket with large buffers, bound to `addr`. Must be called within the runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<MediaSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if let Err(e) = socket.set_recv_buffer_size(4 << 20) {
            tracing::warn!(error = %e, "cannot enlarge UDP receive buffer");
        }
        let _ = socket.set_send_buffer_size(4 << 20);
        socket.bind(&addr.into())?;
        MediaSocket::from_socket(socket)
    }

    /// Wraps a bound UDP socket (made non-blocking here), GSO off until
    /// [`MediaSocket::probe_gso`] finds it works. Must be called within the runtime.
    pub fn from_socket(socket: Socket) -> io::Result<MediaSocket> {
        Ok(MediaSocket {
            io: crate::udp::UdpSocket::new(socket)?,
            gso: AtomicBool::new(false),
        })
    }

    /// Asks the kernel whether this socket can send GSO runs (Linux ≥ 4.18), turns GSO on
    /// for it if so, and says whether it did.
    pub fn probe_gso(&self) -> bool {
        let on = crate::udp::probe_gso(self);
        self.gso.store(on, Ordering::Relaxed);
        on
    }

    /// Whether GSO runs sent from this socket currently go as one message each (else
    /// each packet is a message of its own): probed, and not refused since.
    pub fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Turns GSO off for good on this socket (the kernel or device refused a run).
    pub fn disable_gso(&self) {
        self.gso.store(false, Ordering::Relaxed);
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// Waits for a datagram and appends it to `buf`'s spare capacity (a longer one is cut
    /// to fit); returns its length and sender. Cancel-safe: dropped while waiting, it has
    /// taken nothing.
    pub async fn recv_buf_from(&self, buf: &mut BytesMut) -> io::Result<(usize, SocketAddr)> {
        self.io.recv_buf_from(buf).await
    }

    /// Sends one datagram to `to` if the send buffer has room; never waits.
    pub fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.io.socket().send_to(data, &to.into())
    }

    /// Whether the send buffer has room for more (what a tokio socket's write readiness
    /// reports), asked of the kernel without waiting.
    pub fn has_room(&self) -> bool {
        self.io.has_room()
    }
}

impl AsRawFd for MediaSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }
}

impl AsFd for MediaSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn receives_appends_and_sends() {
        let a = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(b"old");
        assert!(a.has_room());
        a.try_send_to(b"hello", b.local_addr().unwrap()).unwrap();
        let (n, from) =
            tokio::time::timeout(std::time::Duration::from_secs(5), b.recv_buf_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
        assert_eq!((n, from), (5, a.local_addr().unwrap()));
        assert_eq!(&buf[..], b"oldhello");
    }

    #[tokio::test]
    async fn gso_is_off_until_probed_and_each_socket_has_its_own() {
        let a = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = MediaSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(!a.gso());
        let on = a.probe_gso();
        assert_eq!(a.gso(), on);
        b.probe_gso();
        a.disable_gso();
        assert!(!a.gso());
        assert_eq!(b.gso(), on);
    }
}

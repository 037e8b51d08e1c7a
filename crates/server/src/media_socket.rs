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

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use bytes::BytesMut;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A non-blocking UDP socket the runtime wakes a task on when a datagram arrives, and
/// never for room to send.
#[derive(Debug)]
pub struct MediaSocket {
    io: AsyncFd<Socket>,
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

    /// Wraps a bound UDP socket (made non-blocking here). Must be called within the runtime.
    pub fn from_socket(socket: Socket) -> io::Result<MediaSocket> {
        socket.set_nonblocking(true)?;
        // SAFETY: the `Socket` owns its descriptor, returns that same one from every
        // `as_raw_fd`, and closes it only when dropped, which is when the `AsyncFd` (after
        // deregistering it) drops it.
        let io = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(MediaSocket { io })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io
            .get_ref()
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

    /// Sends one datagram to `to` if the send buffer has room; never waits.
    pub fn try_send_to(&self, data: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.io.get_ref().send_to(data, &to.into())
    }

    /// Whether the send buffer has room for more (what a tokio socket's write readiness
    /// reports), asked of the kernel without waiting.
    pub fn has_room(&self) -> bool {
        let mut poll = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: `poll` is one valid, initialised pollfd that outlives the call, the
        // count says one, and a zero timeout returns at once.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        // On an error, say there is room: the send that follows reports it.
        n != 1 || poll.revents & libc::POLLOUT != 0
    }
}

impl AsRawFd for MediaSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
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
}

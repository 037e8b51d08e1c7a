//! Kernel receive timestamps for the load client's first reads of a reader.
//!
//! A reader's PLAY reply, first packet and first keyframe are timed from the moment the
//! kernel queued the bytes on the reader's socket (`SO_TIMESTAMPNS`), not from when the
//! client got round to reading them. On a box where the client shares two cores with the
//! server, reading late is the client's own delay: at 10,000 readers it had put up to
//! ~80 ms on the PLAY reply p99. Only the handshake phase asks for stamps; a reader's
//! stamps are switched off when it goes to the media thread.
//!
//! The kernel stamps packets only while some socket wants stamps (a global switch, turned
//! on and off lazily, and costly to flip). A [`Keeper`] holds it on from before the first
//! reader connects until the handshakes are over, so that readers switching their own
//! stamps off do not flip it, and the measurement window runs with it off.
//!
//! Hand-written over `libc`: the control-message walk is a few lines, and the crates
//! that wrap `recvmsg` (nix, socket2) would still leave the `recvmmsg` batch to us.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Control-message room for one `SCM_TIMESTAMPNS` (a 16-byte header and a 16-byte
/// timespec), as `u64`s so that it is aligned for `cmsghdr`.
pub(super) type Control = [u64; 8];

/// Control buffers and arrival times for one `recvmmsg` batch.
pub(crate) struct Batch {
    /// One control buffer per datagram.
    pub ctl: [Control; super::BATCH],
    /// Each datagram's arrival, filled in by [`super::recv_batch`].
    pub at: [Option<Instant>; super::BATCH],
}

impl Batch {
    /// Empty buffers.
    pub(crate) fn new() -> Batch {
        Batch {
            ctl: [[0; 8]; super::BATCH],
            at: [None; super::BATCH],
        }
    }
}

/// Holds the kernel's packet stamping on while it lives.
pub(super) struct Keeper {
    _sock: std::net::UdpSocket,
}

impl Keeper {
    /// Turns stamping on and waits (up to `patience`) until the kernel stamps packets:
    /// it turns the switch on in the background. Err if it never does.
    pub(super) fn new(patience: Duration) -> io::Result<Keeper> {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
        sock.connect(sock.local_addr()?)?;
        sock.set_nonblocking(true)?;
        set_stamps(sock.as_raw_fd(), true)?;
        let until = Instant::now() + patience;
        let mut buf = [0u8; 4];
        loop {
            sock.send(b"ts")?;
            loop {
                match recv_stamped(sock.as_raw_fd(), &mut buf) {
                    Ok((_, Some(_))) => return Ok(Keeper { _sock: sock }),
                    Ok((_, None)) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() >= until {
                return Err(io::Error::other(
                    "the kernel does not stamp received packets",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Turns `SO_TIMESTAMPNS` on or off for `fd`.
pub(super) fn set_stamps(fd: RawFd, on: bool) -> io::Result<()> {
    let v: libc::c_int = on.into();
    // SAFETY: the kernel reads `size_of::<c_int>()` bytes from a live local.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Points `hdr`'s control buffer at `ctl`.
pub(super) fn attach(hdr: &mut libc::msghdr, ctl: &mut Control) {
    hdr.msg_control = ctl.as_mut_ptr().cast();
    hdr.msg_controllen = std::mem::size_of::<Control>() as _;
}

/// When the data of a message `recvmsg` just filled in arrived, as an [`Instant`]: from its
/// `SCM_TIMESTAMPNS` (for TCP, that of the last segment read), or None without one.
pub(super) fn arrival(hdr: &libc::msghdr) -> Option<Instant> {
    if hdr.msg_control.is_null() {
        return None;
    }
    // SAFETY: `hdr` was filled in by the kernel: msg_control points to a live buffer of
    // msg_controllen bytes (set by `attach`, shrunk by the kernel to what it wrote), and
    // the CMSG_* macros only step within it; the timespec is read unaligned from the
    // data of a message the kernel sized for it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return realtime_to_instant(ts);
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

/// A `CLOCK_REALTIME` time as an [`Instant`], by how long ago it was.
fn realtime_to_instant(ts: libc::timespec) -> Option<Instant> {
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec)
        .ok()
        .filter(|&n| n < 1_000_000_000)?;
    let at = UNIX_EPOCH + Duration::new(secs, nanos);
    let ago = SystemTime::now().duration_since(at).unwrap_or_default();
    Instant::now().checked_sub(ago)
}

/// One `recvmsg` into `buf`; the byte count and, if stamps are on, when the bytes arrived.
pub(super) fn recv_stamped(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<Instant>)> {
    let mut ctl: Control = [0; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: a zeroed msghdr is valid (no buffers); it then points only to `iov` (which
    // points into `buf`) and `ctl`, both alive for the call.
    let (n, hdr) = unsafe {
        let mut hdr: libc::msghdr = std::mem::zeroed();
        hdr.msg_iov = &mut iov;
        hdr.msg_iovlen = 1;
        attach(&mut hdr, &mut ctl);
        (libc::recvmsg(fd, &mut hdr, libc::MSG_DONTWAIT), hdr)
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((n as usize, arrival(&hdr)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A stamp is the kernel's arrival time: bytes that waited 50 ms in the socket before
    /// the read are stamped 50 ms back, not at the read. Now and then (about 1 read in 600
    /// on this kernel, more under load) the kernel gives a TCP read no stamp, which the
    /// client then times at the read; so each try is on a fresh connection, and one of five
    /// must be stamped.
    #[test]
    fn tcp_bytes_are_stamped_when_they_arrived_not_when_read() {
        let _on = Keeper::new(Duration::from_secs(5)).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut stamped = 0;
        for _ in 0..5 {
            let mut tx = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (rx, _) = l.accept().unwrap();
            set_stamps(rx.as_raw_fd(), true).unwrap();
            let sent = Instant::now();
            tx.write_all(b"hello").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            let mut buf = [0u8; 16];
            let (n, at) = recv_stamped(rx.as_raw_fd(), &mut buf).unwrap();
            assert_eq!(&buf[..n], b"hello");
            let Some(at) = at else {
                continue;
            };
            stamped += 1;
            let late = Instant::now() - at;
            assert!(
                late >= Duration::from_millis(45),
                "stamped {late:?} before the read"
            );
            assert!(
                at + Duration::from_millis(1) >= sent,
                "stamped before the send"
            );

            // Off: no stamp.
            set_stamps(rx.as_raw_fd(), false).unwrap();
            tx.write_all(b"x").unwrap();
            std::thread::sleep(Duration::from_millis(5));
            let (n, at) = recv_stamped(rx.as_raw_fd(), &mut buf).unwrap();
            assert_eq!((n, at), (1, None));
        }
        assert!(stamped > 0, "no read of five was stamped");
    }
}

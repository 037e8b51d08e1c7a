//! One non-blocking vectored `sendmsg(2)` to a stream socket, and a descriptor read once
//! and kept open by its owner.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;

/// Most slices one [`send_vectored`] passes to the kernel (Linux's `IOV_MAX`); the rest
/// of a longer slice list is left unsent, as a short write.
pub const MAX_IOV: usize = 1024;

/// One non-blocking `sendmsg(2)` of `iov` (at most [`MAX_IOV`] slices of it) to the
/// stream socket `fd`; returns how many bytes the kernel took.
///
/// `MSG_DONTWAIT`: never blocks, whatever the descriptor's mode (a full send buffer is
/// `WouldBlock`). `MSG_NOSIGNAL`: a peer gone is an error (`EPIPE`), not a `SIGPIPE`
/// that would kill the process.
///
/// `sendmsg`, not `writev`: both end in the same `tcp_sendmsg`, but `writev` goes through
/// the file layer first (`fdget_pos`, `rw_verify_area`, `fsnotify_modify`), which costs
/// when a server makes one small write per reader per frame.
pub fn send_vectored(fd: impl AsFd, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
    let count = iov.len().min(MAX_IOV);
    // SAFETY: an all-zero `msghdr` is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast::<libc::iovec>().cast_mut();
    msg.msg_iovlen = count as _;
    // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` (std guarantees it on
    // Unix); the slices borrow live buffers for the call, and the kernel only reads
    // them and at most `count` entries (it does not write through `msg_iov`); the
    // descriptor is open for the call (`fd` borrows it).
    let n = unsafe {
        libc::sendmsg(
            fd.as_fd().as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A value whose descriptor stays the same, and open, for as long as the value lives.
///
/// # Safety
///
/// For the whole life of the value, [`FixedFd::fixed_fd`] must return the same open
/// descriptor, whatever is done with the value through shared references; it may be
/// closed only when the value is dropped. ([`HeldFd`] relies on it to keep the raw
/// descriptor it read once.)
pub unsafe trait FixedFd {
    /// The descriptor.
    fn fixed_fd(&self) -> BorrowedFd<'_>;
}

// SAFETY: a std `TcpStream` owns its descriptor, never replaces it, and closes it only
// when dropped (`into`-conversions consume it).
unsafe impl FixedFd for std::net::TcpStream {
    fn fixed_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

// SAFETY: a tokio `TcpStream` owns its descriptor, never replaces it, and closes it only
// when dropped (`into_std` and the `into_split` halves consume it).
unsafe impl FixedFd for tokio::net::TcpStream {
    fn fixed_fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

// SAFETY: an `OwnedWriteHalf` shares its `TcpStream` (an `Arc`), which lives at least as
// long as the half; the stream can only be taken back out by `reunite`, which consumes
// the half. The stream's descriptor is fixed (see its impl).
unsafe impl FixedFd for tokio::net::tcp::OwnedWriteHalf {
    fn fixed_fd(&self) -> BorrowedFd<'_> {
        AsRef::<tokio::net::TcpStream>::as_ref(self).as_fd()
    }
}

// SAFETY: an `Arc` keeps its value alive, and hands out only shared references to it, for
// as long as the `Arc` lives; the value's descriptor is fixed by its own impl.
unsafe impl<T: FixedFd + ?Sized> FixedFd for Arc<T> {
    fn fixed_fd(&self) -> BorrowedFd<'_> {
        (**self).fixed_fd()
    }
}

/// An owner of a descriptor together with that descriptor, read once at construction.
///
/// Reaching the descriptor through the owner can take several pointers (a tokio write
/// half: the `Arc`, the half, its stream's `Arc`, the stream's I/O state); a loop that
/// writes to thousands of sockets takes a cache miss on each. Here it is a field next
/// to the owner, and the owner, held until this is dropped, keeps it open.
#[derive(Debug)]
pub struct HeldFd<O> {
    owner: O,
    fd: RawFd,
}

impl<O: FixedFd> HeldFd<O> {
    /// Holds `owner` and reads its descriptor.
    pub fn new(owner: O) -> HeldFd<O> {
        let fd = owner.fixed_fd().as_raw_fd();
        HeldFd { owner, fd }
    }

    /// The owner's descriptor, without going through the owner.
    #[inline]
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `fd` is `owner`'s descriptor, which `FixedFd` guarantees stays the same
        // and open while `owner` lives; `owner` is held, never handed out mutably, and
        // lives at least as long as the borrow of `self` the result is tied to.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    /// The owner.
    pub fn owner(&self) -> &O {
        &self.owner
    }
}

impl<O: FixedFd> AsFd for HeldFd<O> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn a_vectored_send_through_a_held_descriptor_arrives_in_order() {
        let (a, mut b) = pair();
        let held = HeldFd::new(Arc::new(a));
        assert_eq!(held.fd().as_raw_fd(), held.owner().as_raw_fd());
        let iov = [IoSlice::new(b"ab"), IoSlice::new(b""), IoSlice::new(b"cde")];
        assert_eq!(send_vectored(&held, &iov).unwrap(), 5);
        let mut got = [0u8; 5];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcde");
    }

    #[test]
    fn a_full_send_buffer_is_would_block_and_a_gone_peer_an_error_not_a_signal() {
        let (a, b) = pair();
        let chunk = vec![0u8; 1 << 16];
        let iov = [IoSlice::new(&chunk)];
        // The peer never reads: the buffers fill and the send says so instead of blocking.
        let e = loop {
            match send_vectored(&a, &iov) {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
        drop(b);
        // Once the peer is gone the sends fail (EPIPE or ECONNRESET); the process lives on.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let e = loop {
            match send_vectored(&a, &iov) {
                Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => break e,
                _ => {
                    assert!(std::time::Instant::now() < deadline, "sends never failed");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        };
        assert!(matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ));
    }

    #[test]
    fn at_most_max_iov_slices_go_in_one_call() {
        let (a, mut b) = pair();
        let byte = [1u8];
        let iov = vec![IoSlice::new(&byte); MAX_IOV + 10];
        assert_eq!(send_vectored(&a, &iov).unwrap(), MAX_IOV);
        let mut got = vec![0u8; MAX_IOV];
        b.read_exact(&mut got).unwrap();
    }
}

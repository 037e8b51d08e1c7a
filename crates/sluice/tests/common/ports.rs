//! Free-port allocation.
//!
//! Ports come from a per-process block of the range 20000..32000, below Linux's
//! ephemeral range (32768..), and advance with a process-wide counter, so
//! concurrently running tests and test binaries rarely pick the same port. The
//! block is `SLUICE_TEST_PORT_BLOCK` (0..30) when set — scripts/run-tests.py
//! gives binaries running at once distinct blocks — and otherwise chosen from
//! the pid. Each candidate is checked by binding it.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

const RANGE_START: u32 = 20000;
const BLOCK: u32 = 400;
const BLOCKS: u32 = 30; // 20000..32000

static NEXT: AtomicU32 = AtomicU32::new(0);

/// This process's block: from `SLUICE_TEST_PORT_BLOCK`, else from the pid.
fn block() -> u32 {
    static BLOCK_INDEX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *BLOCK_INDEX.get_or_init(|| {
        std::env::var("SLUICE_TEST_PORT_BLOCK")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or_else(std::process::id)
            % BLOCKS
    })
}

fn next_even_candidate(width: u32) -> u16 {
    let block = block();
    let base = RANGE_START + block * BLOCK;
    let off = NEXT.fetch_add(width.next_multiple_of(2), Ordering::Relaxed) % (BLOCK - width);
    (base + off - off % 2) as u16
}

/// A random even candidate anywhere in the range, when this process's block is busy
/// (e.g. a load benchmark holding thousands of ports on the same machine).
fn any_even_candidate(width: u32) -> u16 {
    let span = BLOCK * BLOCKS - width;
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let off = (t ^ NEXT
        .fetch_add(7919, Ordering::Relaxed)
        .wrapping_mul(2_654_435_761))
        % span;
    (RANGE_START + off - off % 2) as u16
}

fn candidate(attempt: u32, width: u32) -> u16 {
    if attempt < 200 {
        next_even_candidate(width)
    } else {
        any_even_candidate(width)
    }
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok()
        && TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

/// A TCP port currently free on 127.0.0.1 and 0.0.0.0.
pub(crate) fn free_tcp_port() -> u16 {
    for attempt in 0..4000 {
        let p = candidate(attempt, 1);
        if tcp_free(p) {
            return p;
        }
    }
    panic!("no free TCP port found");
}

/// An even UDP port `p` with `p` and `p + 1` free (RTP + RTCP).
pub(crate) fn free_udp_pair() -> u16 {
    free_udp_block(2)
}

/// An even UDP port `p` with `p .. p + n` all free (e.g. multicast tracks).
pub(crate) fn free_udp_block(n: u16) -> u16 {
    for attempt in 0..4000 {
        let p = candidate(attempt, u32::from(n));
        if (0..n).all(|i| udp_free(p + i)) {
            return p;
        }
    }
    panic!("no free UDP port block of {n} found");
}

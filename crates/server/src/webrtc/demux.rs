//! Which session a datagram on the shared UDP port belongs to: a STUN binding request
//! names it by the server's ICE username fragment (`USERNAME` = `<ours>:<theirs>`); the
//! peer's address, learned from that request, names it for DTLS, SRTP and SRTCP after.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

/// STUN's magic cookie (RFC 5389 §6).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// The USERNAME attribute type.
const USERNAME: u16 = 0x0006;

/// Whether `d` looks like a STUN message (RFC 7983's demultiplexing: first byte 0..=3,
/// and the magic cookie).
pub fn is_stun(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] < 4 && d.get(4..8) == Some(&MAGIC_COOKIE[..])
}

/// The server's ufrag a STUN request names in its `USERNAME` (the part before `:`).
pub fn stun_local_ufrag(d: &[u8]) -> Option<&str> {
    if !is_stun(d) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([*d.get(2)?, *d.get(3)?]));
    let body = d.get(20..20 + len)?;
    let mut at = 0;
    while let Some(head) = body.get(at..at + 4) {
        let kind = u16::from_be_bytes([head[0], head[1]]);
        let alen = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let value = body.get(at + 4..at + 4 + alen)?;
        if kind == USERNAME {
            let s = std::str::from_utf8(value).ok()?;
            return s.split(':').next();
        }
        at += 4 + alen.div_ceil(4) * 4;
    }
    None
}

/// The routing table: sessions by ufrag, and by the peer addresses their STUN came from.
#[derive(Debug)]
pub struct Routes<T> {
    by_ufrag: HashMap<String, T>,
    by_addr: HashMap<SocketAddr, T>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Routes {
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
        }
    }
}

impl<T: Clone + PartialEq + Eq + Hash> Routes<T> {
    /// Registers a session under its ufrag.
    pub fn add(&mut self, ufrag: String, session: T) {
        self.by_ufrag.insert(ufrag, session);
    }

    /// Forgets a session and its addresses.
    pub fn remove(&mut self, session: &T) {
        self.by_ufrag.retain(|_, s| s != session);
        self.by_addr.retain(|_, s| s != session);
    }

    /// The session datagram `d` from `from` belongs to; a STUN request with a known
    /// username also binds `from` to its session.
    pub fn route(&mut self, from: SocketAddr, d: &[u8]) -> Option<T> {
        if let Some(ufrag) = stun_local_ufrag(d) {
            if let Some(s) = self.by_ufrag.get(ufrag) {
                let s = s.clone();
                self.by_addr.insert(from, s.clone());
                return Some(s);
            }
        }
        self.by_addr.get(&from).cloned()
    }

    /// Sessions registered.
    pub fn len(&self) -> usize {
        self.by_ufrag.len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.by_ufrag.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&0x8022u16.to_be_bytes()); // SOFTWARE, odd length
        attrs.extend_from_slice(&3u16.to_be_bytes());
        attrs.extend_from_slice(b"abc\0");
        attrs.extend_from_slice(&USERNAME.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn stun_username_names_the_session_then_the_address_does() {
        let mut r: Routes<u32> = Routes::default();
        r.add("srv1".into(), 1);
        r.add("srv2".into(), 2);
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        assert_eq!(stun_local_ufrag(&binding("srv2:peer")), Some("srv2"));
        assert_eq!(r.route(a, &[0x80, 0, 0, 0]), None, "unknown address");
        assert_eq!(r.route(a, &binding("srv2:peer")), Some(2));
        assert_eq!(r.route(b, &binding("srv1:x")), Some(1));
        assert_eq!(r.route(a, &[0x80, 0x60, 0, 1]), Some(2), "SRTP by address");
        assert_eq!(r.route(a, &[22, 254, 253]), Some(2), "DTLS by address");
        r.remove(&2);
        assert_eq!(r.route(a, &[0x80, 0x60, 0, 1]), None);
        assert_eq!(r.len(), 1);
        // Truncated STUN never panics.
        let m = binding("srv1:x");
        for n in 0..m.len() {
            let _ = stun_local_ufrag(&m[..n]);
        }
    }
}

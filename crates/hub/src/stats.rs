//! What the HTTP side reports about paths and sessions, read from the hub at request or
//! scrape time: per-stream figures (packets and bytes in, counted by the stream; readers,
//! packets and bytes out and drops, reported by each sink; loss and jitter, reported by
//! the source), and a directory of live sessions that any module can list and end.
//!
//! Counting stays off the per-packet locks: the stream counts with relaxed atomics, sinks
//! and sources keep their own counters and only sum them when asked.

use std::net::SocketAddr;

/// Readers of one protocol and transport, as a sink counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderCount {
    /// `rtsp`, later `hls`, `webrtc`…
    pub protocol: &'static str,
    /// `udp`, `tcp`, `multicast` for RTSP; empty where the protocol has one way.
    pub transport: &'static str,
    /// Readers now.
    pub count: u64,
}

/// What one sink serves, summed over its readers, past and present: its counters only
/// grow while the stream lives (the figures of readers that left are kept).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkStats {
    /// Readers now, by protocol and transport.
    pub readers: Vec<ReaderCount>,
    /// RTP packets sent (or queued for sending) to readers.
    pub packets_out: u64,
    /// RTP payload bytes of those packets.
    pub bytes_out: u64,
    /// Packets dropped for slow readers, by reason (`queue_full`, `send_buffer_full`).
    pub dropped: Vec<(&'static str, u64)>,
}

impl SinkStats {
    /// Adds `other`'s figures to these (readers of the same protocol and transport, drops
    /// of the same reason are summed).
    pub fn merge(&mut self, other: &SinkStats) {
        for r in &other.readers {
            match self
                .readers
                .iter_mut()
                .find(|m| m.protocol == r.protocol && m.transport == r.transport)
            {
                Some(m) => m.count += r.count,
                None => self.readers.push(r.clone()),
            }
        }
        self.packets_out += other.packets_out;
        self.bytes_out += other.bytes_out;
        for (reason, n) in &other.dropped {
            match self.dropped.iter_mut().find(|(r, _)| r == reason) {
                Some((_, m)) => *m += n,
                None => self.dropped.push((reason, *n)),
            }
        }
    }

    /// Readers of `protocol`, over its transports.
    pub fn readers_of(&self, protocol: &str) -> u64 {
        self.readers
            .iter()
            .filter(|r| r.protocol == protocol)
            .map(|r| r.count)
            .sum()
    }
}

/// The receiving side's figures a source reports (an RTSP publisher's or pull's receiver
/// statistics).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SourceStats {
    /// RTP packets lost on the way in, summed over tracks (RFC 3550 cumulative loss,
    /// never below zero).
    pub packets_lost: u64,
    /// Interarrival jitter, the largest over tracks, in seconds.
    pub jitter_seconds: f64,
}

/// A source that reports its receiving figures (see [`crate::Stream::set_source_stats`]).
pub trait SourceFigures: Send + Sync {
    /// The figures now.
    fn source_stats(&self) -> SourceStats;
}

/// What kind of source feeds a stream, so that the API can say it without knowing the
/// module that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceKind {
    /// Not said by its creator.
    #[default]
    Unknown,
    /// An RTSP client that ANNOUNCEd and RECORDs.
    RtspPublisher,
    /// A configured pull from another server.
    Pull,
    /// A configured file.
    File,
    /// The built-in demo clip.
    Demo,
}

impl SourceKind {
    /// The kind's name in the API and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Unknown => "unknown",
            SourceKind::RtspPublisher => "rtsp_publisher",
            SourceKind::Pull => "pull",
            SourceKind::File => "file",
            SourceKind::Demo => "demo",
        }
    }

    pub(crate) fn to_u8(self) -> u8 {
        match self {
            SourceKind::Unknown => 0,
            SourceKind::RtspPublisher => 1,
            SourceKind::Pull => 2,
            SourceKind::File => 3,
            SourceKind::Demo => 4,
        }
    }

    pub(crate) fn from_u8(v: u8) -> SourceKind {
        match v {
            1 => SourceKind::RtspPublisher,
            2 => SourceKind::Pull,
            3 => SourceKind::File,
            4 => SourceKind::Demo,
            _ => SourceKind::Unknown,
        }
    }
}

/// One stream's figures at the moment it was asked ([`crate::Stream::stats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    /// RTP packets its source pushed.
    pub packets_in: u64,
    /// RTP payload bytes of those packets.
    pub bytes_in: u64,
    /// Its sinks' figures, merged.
    pub sinks: SinkStats,
    /// Its source's receiving figures, if the source reports them.
    pub source: Option<SourceStats>,
}

/// Whether a session reads or publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRole {
    /// It plays a path.
    Reader,
    /// It publishes a path.
    Publisher,
}

impl SessionRole {
    /// `reader` or `publisher`.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionRole::Reader => "reader",
            SessionRole::Publisher => "publisher",
        }
    }
}

/// A live session as its module describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// Its id, unique among the live sessions of its module (an RTSP Session header id).
    pub id: String,
    /// The path it reads or publishes.
    pub path: String,
    /// `rtsp`, later `hls`, `webrtc`…
    pub protocol: &'static str,
    /// `udp`, `tcp`, `multicast`, or empty before a transport is set up.
    pub transport: &'static str,
    /// Reader or publisher.
    pub role: SessionRole,
    /// The client's address.
    pub peer: SocketAddr,
    /// The user it authenticated as, None when anonymous.
    pub user: Option<String>,
    /// When it was created, in seconds since the Unix epoch (the module read the clock).
    pub created_unix: u64,
    /// RTP packets sent to it (a reader) or received from it (a publisher).
    pub packets: u64,
    /// RTP payload bytes of those packets.
    pub bytes: u64,
}

/// A module's live sessions, registered on the hub ([`crate::Hub::add_sessions`]) so that
/// others (the HTTP API) can list and end them without naming the module.
pub trait Sessions: Send + Sync {
    /// Every live session.
    fn list(&self) -> Vec<SessionInfo>;
    /// Ends session `id` and closes its client's connection, as if the client had gone:
    /// true if this module had it.
    fn kick(&self, id: &str) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_sums_like_readers_and_like_drops() {
        let mut a = SinkStats {
            readers: vec![ReaderCount {
                protocol: "rtsp",
                transport: "udp",
                count: 2,
            }],
            packets_out: 10,
            bytes_out: 100,
            dropped: vec![("queue_full", 1)],
        };
        a.merge(&SinkStats {
            readers: vec![
                ReaderCount {
                    protocol: "rtsp",
                    transport: "udp",
                    count: 1,
                },
                ReaderCount {
                    protocol: "hls",
                    transport: "",
                    count: 4,
                },
            ],
            packets_out: 5,
            bytes_out: 50,
            dropped: vec![("queue_full", 2), ("send_buffer_full", 3)],
        });
        assert_eq!(a.readers_of("rtsp"), 3);
        assert_eq!(a.readers_of("hls"), 4);
        assert_eq!((a.packets_out, a.bytes_out), (15, 150));
        assert_eq!(a.dropped, vec![("queue_full", 3), ("send_buffer_full", 3)]);
        for k in [
            SourceKind::Unknown,
            SourceKind::RtspPublisher,
            SourceKind::Pull,
            SourceKind::File,
            SourceKind::Demo,
        ] {
            assert_eq!(SourceKind::from_u8(k.to_u8()), k);
        }
    }
}

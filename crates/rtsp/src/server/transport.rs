//! Transport negotiation: which offered transport-spec a SETUP gets, the interleaved
//! channels it uses, and the `Transport` reply, built as a typed [`TransportSpec`].

use crate::vec_map::VecMap;
use std::net::{IpAddr, SocketAddr};

use crate::{LowerTransport, StatusCode, TransportMode, TransportSpec};

use super::{ChannelUse, Refusal};

/// Which lower transports the server offers, and its media ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportPolicy {
    /// RTP/AVP/TCP, interleaved on the RTSP connection.
    pub tcp: bool,
    /// UDP unicast; also needs [`TransportPolicy::server_port`].
    pub udp: bool,
    /// UDP multicast; also needs [`TransportPolicy::multicast_port`].
    pub multicast: bool,
    /// The server's RTP port (RTCP is the next one); `None` when no UDP socket is bound,
    /// so UDP offers are skipped.
    pub server_port: Option<u16>,
    /// First multicast RTP port: track `t` uses `port + 2t` and the next one; `None` when
    /// multicast is not configured, so multicast offers are skipped.
    pub multicast_port: Option<u16>,
    /// Multicast time-to-live written in replies.
    pub multicast_ttl: u8,
}

impl Default for TransportPolicy {
    fn default() -> Self {
        TransportPolicy {
            tcp: true,
            udp: true,
            multicast: false,
            server_port: None,
            multicast_port: None,
            multicast_ttl: 16,
        }
    }
}

/// The kind of a negotiated transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// Interleaved on the RTSP connection.
    Tcp,
    /// UDP unicast.
    Udp,
    /// UDP multicast.
    Multicast,
}

/// The transport one track of a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackTransport {
    /// Interleaved channels on this connection.
    Tcp {
        /// RTP channel.
        rtp: u8,
        /// RTCP channel.
        rtcp: u8,
    },
    /// UDP unicast to (reader) or from (publisher) the client's ports, always at the
    /// address the request came from.
    Udp {
        /// Client RTP address.
        rtp: SocketAddr,
        /// Client RTCP address.
        rtcp: SocketAddr,
        /// The server's RTP port (RTCP is the next one).
        server_port: u16,
    },
    /// UDP multicast to the path's group.
    Multicast {
        /// The group; `None` until the server granted one (see
        /// [`SetupGrant`](super::SetupGrant)).
        group: Option<IpAddr>,
        /// RTP port (RTCP is the next one).
        port: u16,
        /// Time-to-live.
        ttl: u8,
    },
}

impl TrackTransport {
    /// Its kind.
    pub fn kind(&self) -> TransportKind {
        match self {
            TrackTransport::Tcp { .. } => TransportKind::Tcp,
            TrackTransport::Udp { .. } => TransportKind::Udp,
            TrackTransport::Multicast { .. } => TransportKind::Multicast,
        }
    }

    /// The `Transport` reply for this transport, announcing `ssrc` when known.
    pub fn reply(&self, ssrc: Option<u32>, record: bool) -> TransportSpec {
        let mut spec = TransportSpec {
            profile: "RTP/AVP".into(),
            ssrc,
            mode: Some(if record {
                TransportMode::Record
            } else {
                TransportMode::Play
            }),
            ..TransportSpec::default()
        };
        match *self {
            TrackTransport::Tcp { rtp, rtcp } => {
                spec.lower = Some(LowerTransport::Tcp);
                spec.unicast = true;
                spec.interleaved = Some((rtp, rtcp));
            }
            TrackTransport::Udp {
                rtp,
                rtcp,
                server_port,
            } => {
                spec.unicast = true;
                spec.client_port = Some((rtp.port(), rtcp.port()));
                spec.server_port = Some((server_port, server_port.saturating_add(1)));
            }
            TrackTransport::Multicast { group, port, ttl } => {
                spec.multicast = true;
                spec.destination = group.map(|g| g.to_string());
                spec.port = Some((port, port.saturating_add(1)));
                spec.ttl = Some(ttl);
            }
        }
        spec
    }
}

/// What a SETUP offers and what constrains the choice.
pub(crate) struct Offer<'a> {
    pub specs: &'a [TransportSpec],
    pub record: bool,
    pub track: usize,
    pub peer: IpAddr,
    /// The kind the session's other tracks already use (all tracks share one).
    pub session_kind: Option<TransportKind>,
    /// The group the session already has, if it uses multicast.
    pub session_group: Option<IpAddr>,
    pub channels: &'a VecMap<u8, ChannelUse>,
}

fn unsupported(why: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::UNSUPPORTED_TRANSPORT, why)
}

/// Interleaved channels for a track: the client's if free, else the first free pair
/// from `2 * track` on.
pub(crate) fn channels_for(
    spec: &TransportSpec,
    track: usize,
    used: &VecMap<u8, ChannelUse>,
) -> Result<(u8, u8), Refusal> {
    if let Some((a, b)) = spec.interleaved {
        if used.contains_key(&a) || used.contains_key(&b) || a == b {
            return Err(unsupported(format!(
                "interleaved channels {a}-{b} already in use"
            )));
        }
        return Ok((a, b));
    }
    let start = u8::try_from(track.saturating_mul(2).min(254)).unwrap_or(254) & !1;
    (start..=254)
        .step_by(2)
        .chain((0..start).step_by(2))
        .map(|a| (a, a + 1))
        .find(|(a, b)| !used.contains_key(a) && !used.contains_key(b))
        .ok_or_else(|| unsupported("no free interleaved channels"))
}

/// Picks the first offered transport-spec the policy supports, in the client's order of
/// preference; the refusal is the last reason an offer was passed over (461 unless a
/// multicast port range ran out). Also returns the chosen spec's index, so a commit the
/// server refuses can go on with the offers after it.
pub(crate) fn negotiate(
    policy: &TransportPolicy,
    offer: &Offer<'_>,
) -> Result<(TrackTransport, usize), Refusal> {
    let mut last = unsupported("no acceptable transport offered");
    for (index, spec) in offer.specs.iter().enumerate() {
        let kind = if spec.is_tcp() {
            TransportKind::Tcp
        } else if spec.multicast {
            TransportKind::Multicast
        } else {
            TransportKind::Udp
        };
        let allowed = match kind {
            TransportKind::Tcp => policy.tcp,
            TransportKind::Udp => policy.udp && policy.server_port.is_some(),
            // Publishers never send to a group.
            TransportKind::Multicast => {
                policy.multicast && policy.multicast_port.is_some() && !offer.record
            }
        };
        if !allowed || offer.session_kind.is_some_and(|k| k != kind) {
            continue;
        }
        match kind {
            TransportKind::Tcp => match channels_for(spec, offer.track, offer.channels) {
                Ok((rtp, rtcp)) => return Ok((TrackTransport::Tcp { rtp, rtcp }, index)),
                Err(e) => last = e,
            },
            TransportKind::Udp => {
                let Some(server_port) = policy.server_port else {
                    continue;
                };
                let Some((crtp, crtcp)) = spec.client_port else {
                    last = unsupported("UDP transport without client_port");
                    continue;
                };
                if !offer.record {
                    // Media only ever goes to the address the request came from.
                    if let Some(dest) = &spec.destination {
                        if dest.parse::<IpAddr>().ok() != Some(offer.peer) {
                            last = unsupported("destination differs from the client's address");
                            continue;
                        }
                    }
                    if crtp == 0 {
                        last = unsupported("client_port 0");
                        continue;
                    }
                }
                let t = TrackTransport::Udp {
                    rtp: SocketAddr::new(offer.peer, crtp),
                    rtcp: SocketAddr::new(offer.peer, crtcp),
                    server_port,
                };
                return Ok((t, index));
            }
            TransportKind::Multicast => {
                let Some(base) = policy.multicast_port else {
                    continue;
                };
                let step = u16::try_from(offer.track.saturating_mul(2)).unwrap_or(u16::MAX);
                let t = TrackTransport::Multicast {
                    group: offer.session_group,
                    port: base.saturating_add(step),
                    ttl: policy.multicast_ttl,
                };
                return Ok((t, index));
            }
        }
    }
    Err(last)
}

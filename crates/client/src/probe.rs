//! `sluice probe`: what a stream offers — its tracks, codecs, resolution or sample rate,
//! and the SDP — from one DESCRIBE.

use std::time::Duration;

use serde::Serialize;
use sluice_codec::depacketizer::Depacketizer;
pub use sluice_rtsp::redact_credentials as redact;

use crate::{ClientEvent, ClientMode, Connection, ConnectionError, Options};

/// One track of a probed stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrackSummary {
    /// `video`, `audio`, …
    pub media: String,
    /// RTP encoding name (`H264`, `MPEG4-GENERIC`, `opus`, `PCMU`, …).
    pub encoding: String,
    /// RTP payload type.
    pub payload_type: u8,
    /// RTP clock rate.
    pub clock_rate: u32,
    /// Audio channels, when given.
    pub channels: Option<u16>,
    /// Video size, when the SDP's parameter sets tell it.
    pub width: Option<u32>,
    /// Video size, when the SDP's parameter sets tell it.
    pub height: Option<u32>,
    /// Audio sample rate (from the codec configuration, else the clock rate).
    pub sample_rate: Option<u32>,
    /// The `a=fmtp` parameters.
    pub fmtp: Option<String>,
    /// Absolute control URL.
    pub control: String,
}

/// A probed stream.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// The URL probed (credentials removed).
    pub url: String,
    /// The server's `Server` header.
    pub server: Option<String>,
    /// Tracks in SDP order.
    pub tracks: Vec<TrackSummary>,
    /// The SDP as received.
    pub sdp: String,
}

/// What an SDP media section says about its first format.
#[derive(Debug, Clone)]
pub struct MediaDesc {
    /// `video`, `audio`, …
    pub media: String,
    /// Payload type.
    pub payload_type: u8,
    /// Encoding name.
    pub encoding: String,
    /// Clock rate.
    pub clock_rate: u32,
    /// Channels.
    pub channels: Option<u16>,
    /// Format parameters.
    pub fmtp: Option<String>,
    /// Frame rate from `a=framerate` (RFC 4566), when stated and positive.
    pub framerate: Option<f64>,
}

/// Reads each media section's first format from an SDP.
pub fn media_descs(sdp: &[u8]) -> Result<Vec<MediaDesc>, String> {
    let session = sdp_types::Session::parse(sdp).map_err(|e| format!("invalid SDP: {e}"))?;
    Ok(session
        .medias
        .iter()
        .map(|m| {
            let pt = m
                .fmt
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u8>().ok())
                .unwrap_or(0);
            let rtpmap = m.get_attribute_values("rtpmap").flatten().find_map(|v| {
                let (num, rest) = v.trim().split_once(' ')?;
                (num.parse::<u8>().ok()? == pt).then_some(rest.trim())
            });
            let (encoding, clock_rate, channels) = match rtpmap {
                Some(r) => {
                    let mut parts = r.split('/');
                    let enc = parts.next().unwrap_or("").to_owned();
                    let rate = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
                    let ch = parts.next().and_then(|p| p.parse().ok());
                    (enc, rate, ch)
                }
                None => match pt {
                    0 => ("PCMU".to_owned(), 8000, Some(1)),
                    8 => ("PCMA".to_owned(), 8000, Some(1)),
                    _ => (String::new(), 90_000, None),
                },
            };
            let fmtp = m.get_attribute_values("fmtp").flatten().find_map(|v| {
                let (num, rest) = v.trim().split_once(' ')?;
                (num.parse::<u8>().ok()? == pt).then(|| rest.trim().to_owned())
            });
            let framerate = m
                .get_first_attribute_value("framerate")
                .flatten()
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|f| f.is_finite() && *f > 0.0);
            MediaDesc {
                media: m.media.clone(),
                payload_type: pt,
                encoding,
                clock_rate,
                channels,
                fmtp,
                framerate,
            }
        })
        .collect())
}

/// DESCRIBEs `url` and summarizes what it offers.
pub async fn probe(
    url: &str,
    udp: bool,
    timeout: Duration,
) -> Result<ProbeReport, ConnectionError> {
    let mut conn = Connection::open(Options {
        url: url.to_owned(),
        credentials: None,
        udp,
        mode: ClientMode::Play,
        connect_timeout: timeout,
    })
    .await?;
    let described = tokio::time::timeout(timeout, async {
        loop {
            if let ClientEvent::Described {
                sdp,
                controls,
                server,
                ..
            } = conn.next_event().await?
            {
                return Ok::<_, ConnectionError>((sdp, controls, server));
            }
        }
    })
    .await
    .map_err(|_| ConnectionError::ConnectTimeout(url.to_owned()))??;
    let (sdp, controls, server) = described;
    conn.close(Duration::from_secs(1)).await;
    let descs = media_descs(&sdp).map_err(|e| {
        ConnectionError::Session(sluice_rtsp::client::ClientError::BadResponse {
            method: "DESCRIBE".into(),
            reason: e,
        })
    })?;
    let tracks = descs
        .into_iter()
        .zip(controls)
        .map(|(d, control)| {
            let params =
                Depacketizer::new(&d.encoding, d.clock_rate, d.channels, d.fmtp.as_deref())
                    .ok()
                    .and_then(|dp| dp.params());
            let audio = d.media == "audio";
            TrackSummary {
                width: params.as_ref().and_then(|p| p.width),
                height: params.as_ref().and_then(|p| p.height),
                sample_rate: audio.then(|| {
                    params
                        .as_ref()
                        .and_then(|p| p.sample_rate)
                        .unwrap_or(d.clock_rate)
                }),
                channels: d.channels.or(params.as_ref().and_then(|p| p.channels)),
                media: d.media,
                encoding: d.encoding,
                payload_type: d.payload_type,
                clock_rate: d.clock_rate,
                fmtp: d.fmtp,
                control,
            }
        })
        .collect();
    Ok(ProbeReport {
        url: redact(url),
        server,
        tracks,
        sdp: String::from_utf8_lossy(&sdp).into_owned(),
    })
}

impl ProbeReport {
    /// The human-readable report.
    pub fn to_text(&self) -> String {
        let mut out = format!("{}\n", self.url);
        if let Some(s) = &self.server {
            out.push_str(&format!("server: {s}\n"));
        }
        for (i, t) in self.tracks.iter().enumerate() {
            let detail = match (t.width, t.height, t.sample_rate) {
                (Some(w), Some(h), _) => format!("{w}x{h}"),
                (_, _, Some(r)) => match t.channels {
                    Some(c) => format!("{r} Hz, {c} ch"),
                    None => format!("{r} Hz"),
                },
                _ => "size not in SDP".to_owned(),
            };
            out.push_str(&format!(
                "track {i}: {} {} (pt {}, clock {}) {detail}\n",
                t.media, t.encoding, t.payload_type, t.clock_rate
            ));
        }
        out.push_str("--- SDP ---\n");
        out.push_str(&self.sdp);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_descs_read_rtpmap_and_fmtp() {
        let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1\r\nm=audio 0 RTP/AVP 0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n";
        let d = media_descs(sdp.as_bytes()).unwrap();
        assert_eq!(d[0].encoding, "H264");
        assert_eq!(d[0].fmtp.as_deref(), Some("packetization-mode=1"));
        assert_eq!(d[1].encoding, "PCMU");
        assert_eq!((d[2].clock_rate, d[2].channels), (48000, Some(2)));
    }
}

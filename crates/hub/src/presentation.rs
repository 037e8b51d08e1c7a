//! A published presentation: the tracks a source announced (from its SDP) and the SDP
//! Sluice serves to readers in DESCRIBE.
//!
//! Pure data transformation, no I/O: the publisher's SDP goes in, per-track facts and a
//! rewritten SDP (Sluice's own origin and session lines, `a=control:trackID=N`) come out.

use sdp_types::Session;

/// Why an announced SDP was refused.
#[derive(Debug, thiserror::Error)]
pub enum PresentationError {
    /// The body is not valid SDP.
    #[error("invalid SDP: {0}")]
    Sdp(String),
    /// The SDP has no media sections.
    #[error("SDP has no media")]
    NoMedia,
    /// More tracks than Sluice relays per path.
    #[error("SDP has {0} media sections; at most {MAX_TRACKS} are supported")]
    TooManyTracks(usize),
}

/// Most tracks one path may carry (interleaved channel pairs and multicast ports bound this).
pub const MAX_TRACKS: usize = 16;

/// One media track of a presentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// `video`, `audio`, `application`, ...
    pub media: String,
    /// The control attribute the publisher gave this track (used to match its SETUP URLs).
    pub publisher_control: String,
    /// RTP payload type of the first format.
    pub payload_type: u8,
    /// Encoding name from `a=rtpmap`, e.g. `H264`; empty when absent (static payload types).
    pub encoding: String,
    /// RTP clock rate from `a=rtpmap`, or the static payload type's rate.
    pub clock_rate: u32,
    /// The `a=fmtp` parameters of the payload type (without the payload type), if any.
    pub fmtp: Option<String>,
}

/// A presentation: the announced SDP and its tracks.
#[derive(Debug, Clone)]
pub struct Presentation {
    sdp: Session,
    tracks: Vec<Track>,
    duration: Option<f64>,
    /// Live although made from stored media (a looping file): advertised with an open range.
    live: bool,
    /// The wall clock span of recorded media (`a=range:clock=…`), the value after `clock=`.
    clock_range: Option<String>,
}

impl Presentation {
    /// Parses a publisher's ANNOUNCE body.
    pub fn from_sdp(body: &[u8]) -> Result<Presentation, PresentationError> {
        let sdp = Session::parse(body).map_err(|e| PresentationError::Sdp(e.to_string()))?;
        if sdp.medias.is_empty() {
            return Err(PresentationError::NoMedia);
        }
        if sdp.medias.len() > MAX_TRACKS {
            return Err(PresentationError::TooManyTracks(sdp.medias.len()));
        }
        let tracks = sdp
            .medias
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let payload_type = m
                    .fmt
                    .split_whitespace()
                    .next()
                    .and_then(|f| f.parse::<u8>().ok())
                    .unwrap_or(96);
                let (encoding, clock_rate) = rtpmap(m, payload_type)
                    .unwrap_or_else(|| static_payload(payload_type, &m.media));
                let fmtp = m.get_attribute_values("fmtp").flatten().find_map(|v| {
                    let (num, rest) = v.trim().split_once(' ')?;
                    (num.parse::<u8>().ok()? == payload_type).then(|| rest.trim().to_owned())
                });
                Track {
                    fmtp,
                    media: m.media.clone(),
                    publisher_control: m
                        .get_first_attribute_value("control")
                        .flatten()
                        .map(str::to_owned)
                        .unwrap_or_else(|| format!("trackID={i}")),
                    payload_type,
                    encoding,
                    clock_rate,
                }
            })
            .collect();
        Ok(Presentation {
            sdp,
            tracks,
            duration: None,
            live: false,
            clock_range: None,
        })
    }

    /// Marks the presentation as stored media of this length (seconds): readers' SDP gets
    /// `a=range:npt=0-<duration>`; live presentations have none.
    pub fn with_duration(mut self, seconds: f64) -> Presentation {
        self.duration = Some(seconds);
        self
    }

    /// Marks the presentation as an endless live stream although it is made from stored
    /// media (a looping file source): readers' SDP gets the open range `a=range:npt=now-`,
    /// which ffmpeg, GStreamer and VLC (live555) read as live (no duration, no seeking),
    /// instead of the file's length.
    pub fn live(mut self) -> Presentation {
        self.duration = None;
        self.live = true;
        self
    }

    /// Marks the presentation as a recording spanning these wall clock times: readers'
    /// SDP gets `a=range:clock=<span>` before its npt range (ONVIF replay clients seek in
    /// clock time, and GStreamer reads only the first range). `span` is the value after `clock=` (`20261207T031500.000Z-…`).
    pub fn with_clock_range(mut self, span: &str) -> Presentation {
        self.clock_range = Some(clean(span));
        self
    }

    /// The stored media's duration, None for live.
    pub fn duration(&self) -> Option<f64> {
        self.duration
    }

    /// Whether `other` carries the same media: same tracks with the same encodings, clock
    /// rates and format parameters. A source that reconnects with the same media continues
    /// its stream; otherwise readers must DESCRIBE again.
    pub fn same_media(&self, other: &Presentation) -> bool {
        self.tracks.len() == other.tracks.len()
            && self.tracks.iter().zip(&other.tracks).all(|(a, b)| {
                a.media == b.media
                    && a.encoding.eq_ignore_ascii_case(&b.encoding)
                    && a.clock_rate == b.clock_rate
                    && a.payload_type == b.payload_type
                    && a.fmtp == b.fmtp
            })
    }

    /// The first video track whose codec Sluice recognizes keyframes of, with the codec:
    /// what GOP caches and frame batching key on.
    pub fn keyframe_track(&self) -> Option<(usize, sluice_codec::Codec)> {
        self.tracks().iter().enumerate().find_map(|(i, t)| {
            (t.media == "video")
                .then(|| sluice_codec::codec_from_encoding(&t.encoding))
                .flatten()
                .map(|c| (i, c))
        })
    }

    /// The tracks in SDP order; a track's index is its id in Sluice's URLs (`trackID=N`).
    pub fn tracks(&self) -> &[Track] {
        &self.tracks
    }

    /// Finds the track a publisher's SETUP URL names, given the URL's path relative to the
    /// presentation (`rest`, e.g. `streamid=0`) or the whole URL.
    pub fn publisher_track(&self, url: &str, rest: &str) -> Option<usize> {
        self.tracks.iter().position(|t| {
            let c = t.publisher_control.as_str();
            c == rest || c == url || (c.contains("://") && url.ends_with(c))
        })
    }

    /// The SDP served to readers: Sluice's origin and tool, the publisher's media and
    /// format lines, and Sluice's own control URLs (`*` for the session, `trackID=N` per track).
    pub fn reader_sdp(&self, session_version: u64) -> String {
        let mut out = String::with_capacity(512);
        out.push_str("v=0\r\n");
        out.push_str(&format!(
            "o=- {session_version} {session_version} IN IP4 127.0.0.1\r\n"
        ));
        let name = if self.sdp.session_name.trim().is_empty() {
            "Sluice"
        } else {
            self.sdp.session_name.as_str()
        };
        out.push_str(&format!("s={}\r\n", clean(name)));
        out.push_str("c=IN IP4 0.0.0.0\r\n");
        out.push_str("t=0 0\r\n");
        out.push_str("a=tool:sluice\r\n");
        out.push_str("a=control:*\r\n");
        // A recording's clock range comes first: GStreamer's ONVIF mode reads only the
        // first range and seeks in it; ffmpeg and live555 read every range line.
        if let Some(c) = &self.clock_range {
            out.push_str(&format!("a=range:clock={c}\r\n"));
        }
        if let Some(d) = self.duration {
            out.push_str(&format!("a=range:npt=0-{d:.3}\r\n"));
        } else if self.live {
            out.push_str("a=range:npt=now-\r\n");
        }
        for (i, m) in self.sdp.medias.iter().enumerate() {
            out.push_str(&format!("m={} 0 {} {}\r\n", m.media, m.proto, m.fmt));
            for b in &m.bandwidths {
                out.push_str(&format!("b={}:{}\r\n", b.bwtype, b.bandwidth));
            }
            for a in &m.attributes {
                if a.attribute.eq_ignore_ascii_case("control")
                    || a.attribute.eq_ignore_ascii_case("sendonly")
                    || a.attribute.eq_ignore_ascii_case("recvonly")
                    || a.attribute.eq_ignore_ascii_case("sendrecv")
                {
                    continue;
                }
                match &a.value {
                    Some(v) => out.push_str(&format!("a={}:{}\r\n", a.attribute, clean(v))),
                    None => out.push_str(&format!("a={}\r\n", a.attribute)),
                }
            }
            out.push_str(&format!("a=control:trackID={i}\r\n"));
        }
        out
    }
}

/// Drops CR and LF so a value cannot inject SDP lines.
fn clean(s: &str) -> String {
    s.chars().filter(|c| *c != '\r' && *c != '\n').collect()
}

fn rtpmap(m: &sdp_types::Media, pt: u8) -> Option<(String, u32)> {
    m.get_attribute_values("rtpmap").flatten().find_map(|v| {
        let (num, rest) = v.trim().split_once(' ')?;
        if num.parse::<u8>().ok()? != pt {
            return None;
        }
        let mut parts = rest.trim().split('/');
        let enc = parts.next()?.to_owned();
        let rate = parts.next()?.parse::<u32>().ok().filter(|r| *r > 0)?;
        Some((enc, rate))
    })
}

/// RFC 3551 static payload types, for SDPs without `a=rtpmap`.
fn static_payload(pt: u8, media: &str) -> (String, u32) {
    match pt {
        0 => ("PCMU".into(), 8000),
        8 => ("PCMA".into(), 8000),
        9 => ("G722".into(), 8000),
        14 => ("MPA".into(), 90000),
        26 => ("JPEG".into(), 90000),
        32 => ("MPV".into(), 90000),
        33 => ("MP2T".into(), 90000),
        _ if media == "audio" => (String::new(), 8000),
        _ => (String::new(), 90000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FFMPEG_SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\na=tool:libavformat 59.27.100\r\nm=video 0 RTP/AVP 96\r\nb=AS:200\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z0LAHtkDxWhAAAADAEAAAAwDxYuS,aMuMsg==; profile-level-id=42C01E\r\na=control:streamid=0\r\nm=audio 0 RTP/AVP 97\r\nb=AS:128\r\na=rtpmap:97 MPEG4-GENERIC/48000/1\r\na=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;indexdeltalength=3; config=1188\r\na=control:streamid=1\r\n";

    #[test]
    fn parses_ffmpeg_announce() {
        let p = Presentation::from_sdp(FFMPEG_SDP.as_bytes()).unwrap();
        let t = p.tracks();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].encoding, "H264");
        assert_eq!(t[0].clock_rate, 90000);
        assert_eq!(t[0].payload_type, 96);
        assert_eq!(t[1].encoding, "MPEG4-GENERIC");
        assert_eq!(t[1].clock_rate, 48000);
        assert_eq!(
            p.publisher_track("rtsp://h/live/streamid=1", "streamid=1"),
            Some(1)
        );
        assert_eq!(p.publisher_track("rtsp://h/live/x", "x"), None);
        assert!(t[0]
            .fmtp
            .as_deref()
            .unwrap()
            .starts_with("packetization-mode=1;"));
        assert!(p.same_media(&Presentation::from_sdp(FFMPEG_SDP.as_bytes()).unwrap()));
        let changed = FFMPEG_SDP.replace("aMuMsg==", "aMuMsh==");
        assert!(!p.same_media(&Presentation::from_sdp(changed.as_bytes()).unwrap()));
    }

    #[test]
    fn reader_sdp_has_sluice_controls_and_keeps_formats() {
        let p = Presentation::from_sdp(FFMPEG_SDP.as_bytes()).unwrap();
        let sdp = p.reader_sdp(42);
        assert!(sdp.contains("a=control:*\r\n"));
        assert!(sdp.contains("a=control:trackID=0\r\n"));
        assert!(sdp.contains("a=control:trackID=1\r\n"));
        assert!(!sdp.contains("streamid"));
        assert!(sdp.contains("a=fmtp:96 packetization-mode=1;"));
        assert!(sdp.contains("a=rtpmap:97 MPEG4-GENERIC/48000/1"));
        // What we serve must itself parse.
        let again = Presentation::from_sdp(sdp.as_bytes()).unwrap();
        assert_eq!(again.tracks().len(), 2);
    }

    #[test]
    fn stored_media_has_a_finite_range_and_live_an_open_one() {
        let p = Presentation::from_sdp(FFMPEG_SDP.as_bytes()).unwrap();
        assert!(
            !p.reader_sdp(1).contains("a=range"),
            "a publisher states no range"
        );
        let vod = p.clone().with_duration(10.0);
        assert!(vod.reader_sdp(1).contains("a=range:npt=0-10.000\r\n"));
        let looping = vod.live();
        let sdp = looping.reader_sdp(1);
        assert!(sdp.contains("a=range:npt=now-\r\n"), "{sdp}");
        assert!(!sdp.contains("npt=0-"), "{sdp}");
        assert_eq!(looping.duration(), None);
        assert!(Presentation::from_sdp(sdp.as_bytes()).is_ok());
    }

    #[test]
    fn static_payload_types_get_their_clock_rate() {
        let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n";
        let p = Presentation::from_sdp(sdp.as_bytes()).unwrap();
        assert_eq!(p.tracks()[0].clock_rate, 8000);
        assert_eq!(p.tracks()[0].publisher_control, "trackID=0");
    }

    #[test]
    fn rejects_garbage_and_empty() {
        assert!(Presentation::from_sdp(b"hello").is_err());
        let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n";
        assert!(matches!(
            Presentation::from_sdp(sdp.as_bytes()),
            Err(PresentationError::NoMedia)
        ));
    }
}

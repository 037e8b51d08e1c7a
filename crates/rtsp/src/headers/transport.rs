//! The `Transport` header (RFC 2326 §12.39).

use std::fmt;

use super::{is_token, parse_decimal, split_unquoted, HeaderError};

const HEADER: &str = "Transport";

/// The lower transport named in a transport-spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LowerTransport {
    /// `UDP` (also the default when omitted).
    Udp,
    /// `TCP`: RTP interleaved on the RTSP connection.
    Tcp,
}

/// The `mode` parameter of a transport-spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportMode {
    /// `mode=play` (the default).
    Play,
    /// `mode=record` or `mode=receive`.
    Record,
    /// Any other mode value, kept verbatim (without quotes).
    Other(String),
}

/// One transport-spec of a Transport header.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TransportSpec {
    /// Transport protocol and profile, e.g. `RTP/AVP`, `RTP/AVPF`, `RTP/SAVP`.
    pub profile: String,
    /// Lower transport; `None` when omitted (meaning UDP).
    pub lower: Option<LowerTransport>,
    /// `multicast` was present.
    pub multicast: bool,
    /// `unicast` was literally present.
    pub unicast: bool,
    /// `destination=` address.
    pub destination: Option<String>,
    /// `source=` address.
    pub source: Option<String>,
    /// `interleaved=` channel pair.
    pub interleaved: Option<(u8, u8)>,
    /// `ttl=` multicast time-to-live.
    pub ttl: Option<u8>,
    /// `port=` multicast port pair.
    pub port: Option<(u16, u16)>,
    /// `client_port=` unicast client port pair.
    pub client_port: Option<(u16, u16)>,
    /// `server_port=` unicast server port pair.
    pub server_port: Option<(u16, u16)>,
    /// `ssrc=` (hexadecimal, 1–8 digits).
    pub ssrc: Option<u32>,
    /// `mode=` parameter.
    pub mode: Option<TransportMode>,
    /// `append` flag was present.
    pub append: bool,
    /// Unrecognised parameters in order, as `(name, value)`.
    pub other: Vec<(String, Option<String>)>,
}

/// Strips one pair of surrounding double quotes and trims; rejects values
/// still containing a quote so that writing them back is unambiguous.
fn unquote<'a>(name: &str, v: &'a str) -> Result<&'a str, HeaderError> {
    let v = v.trim();
    let inner = v
        .strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .map_or(v, str::trim);
    if inner.contains('"') || inner.chars().any(char::is_control) {
        return Err(HeaderError::param(HEADER, name, v));
    }
    Ok(inner)
}

/// Parses `a` or `a-b`; a single value `a` means `(a, a+1)`.
fn parse_pair<T>(name: &str, v: &str) -> Result<(T, T), HeaderError>
where
    T: std::str::FromStr + Copy + TryFrom<u32>,
    u32: From<T>,
{
    let bad = || HeaderError::param(HEADER, name, v);
    match v.split_once('-') {
        Some((a, b)) => {
            let a = parse_decimal(a.trim()).ok_or_else(bad)?;
            let b = parse_decimal(b.trim()).ok_or_else(bad)?;
            Ok((a, b))
        }
        None => {
            let a: T = parse_decimal(v.trim()).ok_or_else(bad)?;
            let b = T::try_from(u32::from(a) + 1).map_err(|_| bad())?;
            Ok((a, b))
        }
    }
}

/// Parses the `protocol/profile[/lower]` head of a transport-spec.
fn parse_protocol(s: &str) -> Result<(String, Option<LowerTransport>), HeaderError> {
    let s = s.trim();
    let parts: Vec<&str> = s.split('/').collect();
    let bad = || HeaderError::invalid(HEADER, s);
    if parts.len() < 2 || parts.len() > 3 || !parts.iter().all(|p| is_token(p)) {
        return Err(bad());
    }
    let lower = match parts.get(2) {
        None => None,
        Some(l) if l.eq_ignore_ascii_case("udp") => Some(LowerTransport::Udp),
        Some(l) if l.eq_ignore_ascii_case("tcp") => Some(LowerTransport::Tcp),
        Some(_) => return Err(bad()),
    };
    Ok((format!("{}/{}", parts[0], parts[1]), lower))
}

impl TransportSpec {
    /// Parses a single transport-spec (no top-level commas).
    pub fn parse(s: &str) -> Result<Self, HeaderError> {
        let mut params = split_unquoted(s, ';').into_iter();
        let head = params.next().unwrap_or_default();
        if head.trim().is_empty() {
            return Err(HeaderError::Empty { header: HEADER });
        }
        let (profile, lower) = parse_protocol(head)?;
        let mut spec = TransportSpec {
            profile,
            lower,
            ..TransportSpec::default()
        };
        for param in params {
            let param = param.trim();
            if param.is_empty() {
                continue;
            }
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v)),
                None => (param, None),
            };
            if !is_token(name) {
                return Err(HeaderError::param(HEADER, name, param));
            }
            spec.apply(name, value)?;
        }
        Ok(spec)
    }

    /// Applies one `name[=value]` parameter.
    fn apply(&mut self, name: &str, value: Option<&str>) -> Result<(), HeaderError> {
        let lname = name.to_ascii_lowercase();
        let flag = |v: Option<&str>| match v {
            None => Ok(true),
            Some(v) => Err(HeaderError::param(HEADER, name, v)),
        };
        let Some(raw) = value else {
            match lname.as_str() {
                "unicast" => self.unicast = flag(value)?,
                "multicast" => self.multicast = flag(value)?,
                "append" => self.append = flag(value)?,
                "destination" | "source" | "mode" | "layers" => {
                    self.other.push((name.to_owned(), None))
                }
                "interleaved" | "ttl" | "port" | "client_port" | "server_port" | "ssrc" => {
                    return Err(HeaderError::param(HEADER, name, ""))
                }
                _ => self.other.push((name.to_owned(), None)),
            }
            return Ok(());
        };
        let v = unquote(name, raw)?;
        let bad = || HeaderError::param(HEADER, name, v);
        match lname.as_str() {
            "unicast" | "multicast" | "append" => return Err(bad()),
            "destination" => self.destination = Some(v.to_owned()),
            "source" => self.source = Some(v.to_owned()),
            "interleaved" => self.interleaved = Some(parse_pair(name, v)?),
            "ttl" => self.ttl = Some(parse_decimal(v).ok_or_else(bad)?),
            "port" => self.port = Some(parse_pair(name, v)?),
            "client_port" => self.client_port = Some(parse_pair(name, v)?),
            "server_port" => self.server_port = Some(parse_pair(name, v)?),
            "ssrc" => {
                if v.is_empty() || v.len() > 8 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad());
                }
                self.ssrc = Some(u32::from_str_radix(v, 16).map_err(|_| bad())?);
            }
            "mode" => {
                self.mode = Some(if v.eq_ignore_ascii_case("play") {
                    TransportMode::Play
                } else if v.eq_ignore_ascii_case("record") || v.eq_ignore_ascii_case("receive") {
                    TransportMode::Record
                } else {
                    TransportMode::Other(v.to_owned())
                })
            }
            _ => self.other.push((name.to_owned(), Some(v.to_owned()))),
        }
        Ok(())
    }

    /// True when the lower transport is TCP (interleaved).
    pub fn is_tcp(&self) -> bool {
        self.lower == Some(LowerTransport::Tcp)
    }
}

/// Writes a parameter value, quoting it when it contains separators.
fn write_value(f: &mut fmt::Formatter<'_>, v: &str) -> fmt::Result {
    if v.contains([';', ',']) {
        write!(f, "\"{v}\"")
    } else {
        f.write_str(v)
    }
}

impl fmt::Display for TransportSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.profile)?;
        match self.lower {
            Some(LowerTransport::Udp) => f.write_str("/UDP")?,
            Some(LowerTransport::Tcp) => f.write_str("/TCP")?,
            None => {}
        }
        if self.unicast {
            f.write_str(";unicast")?;
        }
        if self.multicast {
            f.write_str(";multicast")?;
        }
        if let Some(d) = &self.destination {
            f.write_str(";destination=")?;
            write_value(f, d)?;
        }
        if let Some(s) = &self.source {
            f.write_str(";source=")?;
            write_value(f, s)?;
        }
        if let Some((a, b)) = self.interleaved {
            write!(f, ";interleaved={a}-{b}")?;
        }
        if self.append {
            f.write_str(";append")?;
        }
        if let Some(t) = self.ttl {
            write!(f, ";ttl={t}")?;
        }
        if let Some((a, b)) = self.port {
            write!(f, ";port={a}-{b}")?;
        }
        if let Some((a, b)) = self.client_port {
            write!(f, ";client_port={a}-{b}")?;
        }
        if let Some((a, b)) = self.server_port {
            write!(f, ";server_port={a}-{b}")?;
        }
        if let Some(s) = self.ssrc {
            write!(f, ";ssrc={s:08X}")?;
        }
        match &self.mode {
            Some(TransportMode::Play) => f.write_str(";mode=play")?,
            Some(TransportMode::Record) => f.write_str(";mode=record")?,
            Some(TransportMode::Other(m)) => {
                f.write_str(";mode=")?;
                write_value(f, m)?;
            }
            None => {}
        }
        for (name, value) in &self.other {
            write!(f, ";{name}")?;
            if let Some(v) = value {
                f.write_str("=")?;
                write_value(f, v)?;
            }
        }
        Ok(())
    }
}

/// Parses a whole Transport header: comma-separated alternatives in
/// preference order. Empty alternatives (e.g. a trailing comma) are skipped.
pub fn parse_transport(value: &str) -> Result<Vec<TransportSpec>, HeaderError> {
    let specs = split_unquoted(value, ',')
        .into_iter()
        .filter(|s| !s.trim().is_empty())
        .map(TransportSpec::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if specs.is_empty() {
        return Err(HeaderError::Empty { header: HEADER });
    }
    Ok(specs)
}

/// Writes transport-specs as a comma-separated Transport header value.
pub fn format_transport(specs: &[TransportSpec]) -> String {
    specs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> TransportSpec {
        let v = parse_transport(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(v.len(), 1);
        v.into_iter().next().unwrap_or_default()
    }

    #[test]
    fn ffmpeg_udp() {
        let t = one("RTP/AVP/UDP;unicast;client_port=5000-5001");
        assert_eq!(
            t,
            TransportSpec {
                profile: "RTP/AVP".into(),
                lower: Some(LowerTransport::Udp),
                unicast: true,
                client_port: Some((5000, 5001)),
                ..Default::default()
            }
        );
        assert!(!t.is_tcp());
        assert_eq!(t.to_string(), "RTP/AVP/UDP;unicast;client_port=5000-5001");
    }

    #[test]
    fn ffmpeg_tcp_record() {
        let t = one("RTP/AVP/TCP;unicast;interleaved=0-1;mode=record");
        assert!(t.is_tcp());
        assert_eq!(t.interleaved, Some((0, 1)));
        assert_eq!(t.mode, Some(TransportMode::Record));
        assert!(t.unicast && !t.multicast);
    }

    #[test]
    fn gstreamer_alternatives() {
        let v = parse_transport(
            "RTP/AVP;multicast;destination=224.1.2.3;ttl=8;port=5000-5001,RTP/AVP;unicast;client_port=38052-38053,RTP/AVP/TCP;unicast;interleaved=0-1",
        )
        .unwrap_or_default();
        assert_eq!(v.len(), 3);
        assert!(v[0].multicast);
        assert_eq!(v[0].destination.as_deref(), Some("224.1.2.3"));
        assert_eq!(v[0].ttl, Some(8));
        assert_eq!(v[0].port, Some((5000, 5001)));
        assert_eq!(v[0].lower, None);
        assert_eq!(v[1].client_port, Some((38052, 38053)));
        assert!(v[2].is_tcp());
        // GStreamer RTP/AVPF and SAVP profiles
        assert_eq!(one("RTP/AVPF;unicast;client_port=1-2").profile, "RTP/AVPF");
        assert_eq!(one("RTP/SAVP;unicast;client_port=1-2").profile, "RTP/SAVP");
    }

    #[test]
    fn live555_and_vlc_responses() {
        let t = one(
            "RTP/AVP;unicast;destination=192.168.1.2;source=192.168.1.10;client_port=60784-60785;server_port=6970-6971;ssrc=6B8B4567;mode=\"PLAY\"",
        );
        assert_eq!(t.source.as_deref(), Some("192.168.1.10"));
        assert_eq!(t.server_port, Some((6970, 6971)));
        assert_eq!(t.ssrc, Some(0x6B8B4567));
        assert_eq!(t.mode, Some(TransportMode::Play));
        // VLC: RTP/AVP/TCP;unicast;interleaved=0-1 ; short ssrc, mode=receive
        let t = one("RTP/AVP/TCP;unicast;interleaved=2;ssrc=1a;mode=receive");
        assert_eq!(t.interleaved, Some((2, 3)));
        assert_eq!(t.ssrc, Some(0x1a));
        assert_eq!(t.mode, Some(TransportMode::Record));
    }

    #[test]
    fn multicast() {
        let t = one("RTP/AVP;multicast;destination=239.255.0.1;port=8002-8003;ttl=16");
        assert!(t.multicast && !t.unicast);
        assert_eq!(t.destination.as_deref(), Some("239.255.0.1"));
        assert_eq!(t.port, Some((8002, 8003)));
        assert_eq!(t.ttl, Some(16));
        assert_eq!(
            t.to_string(),
            "RTP/AVP;multicast;destination=239.255.0.1;ttl=16;port=8002-8003"
        );
    }

    #[test]
    fn tolerant_forms() {
        // trailing ';', whitespace, reordered params, single port, unknown params
        let t = one(" rtp/avp/tcp ; interleaved = 4 ;unicast; ;x-foo=bar;layers=2;");
        assert!(t.is_tcp() && t.unicast);
        assert_eq!(t.profile, "rtp/avp");
        assert_eq!(t.interleaved, Some((4, 5)));
        assert_eq!(
            t.other,
            vec![
                ("x-foo".to_string(), Some("bar".to_string())),
                ("layers".to_string(), Some("2".to_string()))
            ]
        );
        assert_eq!(
            one("RTP/AVP;client_port=5000").client_port,
            Some((5000, 5001))
        );
        assert_eq!(one("RTP/AVP;client_port=0-0").client_port, Some((0, 0)));
        let t = one("RTP/AVP;mode=\"PLAY,RECORD\"");
        assert_eq!(t.mode, Some(TransportMode::Other("PLAY,RECORD".into())));
        assert_eq!(t.to_string(), "RTP/AVP;mode=\"PLAY,RECORD\"");
        assert_eq!(parse_transport("RTP/AVP,").map(|v| v.len()), Ok(1));
    }

    #[test]
    fn canonical_writer() {
        let t = TransportSpec {
            profile: "RTP/AVP".into(),
            lower: Some(LowerTransport::Tcp),
            unicast: true,
            interleaved: Some((0, 1)),
            ssrc: Some(0x1A2B3C4D),
            mode: Some(TransportMode::Play),
            ..Default::default()
        };
        assert_eq!(
            t.to_string(),
            "RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=1A2B3C4D;mode=play"
        );
        assert_eq!(TransportSpec::parse(&t.to_string()), Ok(t.clone()));
        assert_eq!(
            format_transport(&[t.clone(), t]),
            "RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=1A2B3C4D;mode=play,RTP/AVP/TCP;unicast;interleaved=0-1;ssrc=1A2B3C4D;mode=play"
        );
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "",
            " , ",
            "RTP",
            "RTP/AVP/SCTP",
            "RTP/AVP/TCP/X",
            "RTP//TCP",
            "RTP/AVP;client_port=a-b",
            "RTP/AVP;client_port=1-2-3",
            "RTP/AVP;client_port=70000",
            "RTP/AVP;client_port=65535",
            "RTP/AVP;client_port=-5",
            "RTP/AVP;client_port=",
            "RTP/AVP;client_port",
            "RTP/AVP;interleaved=256",
            "RTP/AVP;interleaved=255",
            "RTP/AVP;ttl=300",
            "RTP/AVP;ssrc=123456789",
            "RTP/AVP;ssrc=xyz",
            "RTP/AVP;ssrc=",
            "RTP/AVP;unicast=yes",
            "RTP/AVP;a b=c",
            "RTP/AVP;=c",
            "RTP/AVP;mode=\"pl\"ay\"",
        ] {
            assert!(parse_transport(bad).is_err(), "{bad:?}");
        }
    }
}

//! The `RTP-Info` header (RFC 2326 §12.33).

use super::{parse_decimal, HeaderError};

const HEADER: &str = "RTP-Info";

/// One stream entry of an `RTP-Info` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpInfo {
    /// Stream URL.
    pub url: String,
    /// Sequence number of the first packet after PLAY.
    pub seq: Option<u16>,
    /// RTP timestamp corresponding to the start of the Range.
    pub rtptime: Option<u32>,
}

/// Writes `url=…;seq=…;rtptime=…` entries separated by commas.
pub fn format_rtp_info(entries: &[RtpInfo]) -> String {
    let mut out = String::new();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("url=");
        out.push_str(&e.url);
        if let Some(seq) = e.seq {
            out.push_str(&format!(";seq={seq}"));
        }
        if let Some(t) = e.rtptime {
            out.push_str(&format!(";rtptime={t}"));
        }
    }
    out
}

/// Splits the header into entries at commas that are followed (after
/// optional whitespace) by `url=`, so URLs may themselves contain commas.
fn split_entries(value: &str) -> Vec<&str> {
    let mut entries = Vec::new();
    let mut start = 0;
    for (i, _) in value.match_indices(',') {
        let rest = value[i + 1..].trim_start();
        let is_url = rest
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("url="));
        if is_url {
            entries.push(&value[start..i]);
            start = i + 1;
        }
    }
    entries.push(&value[start..]);
    entries
}

/// Parses one `url=…[;param]*` entry.
fn parse_entry(entry: &str) -> Result<RtpInfo, HeaderError> {
    let entry = entry.trim();
    let mut pieces = entry.split(';');
    let first = pieces.next().unwrap_or_default().trim();
    let url = first
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("url="))
        .and_then(|_| first.get(4..))
        .ok_or_else(|| HeaderError::invalid(HEADER, entry))?;
    let mut info = RtpInfo {
        url: url.trim().to_owned(),
        seq: None,
        rtptime: None,
    };
    let mut in_params = false;
    for piece in pieces {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("seq") {
            info.seq =
                Some(parse_decimal(value).ok_or_else(|| HeaderError::param(HEADER, "seq", value))?);
            in_params = true;
        } else if name.eq_ignore_ascii_case("rtptime") {
            info.rtptime = Some(
                parse_decimal(value).ok_or_else(|| HeaderError::param(HEADER, "rtptime", value))?,
            );
            in_params = true;
        } else if name.eq_ignore_ascii_case("ssrc") {
            in_params = true;
        } else if !in_params {
            // Some cameras put ';' inside the URL itself.
            info.url.push(';');
            info.url.push_str(piece);
        }
    }
    if info.url.is_empty() {
        return Err(HeaderError::invalid(HEADER, entry));
    }
    Ok(info)
}

/// Parses an `RTP-Info` header value into its entries.
pub fn parse_rtp_info(value: &str) -> Result<Vec<RtpInfo>, HeaderError> {
    let entries: Vec<&str> = split_entries(value)
        .into_iter()
        .filter(|e| !e.trim().is_empty())
        .collect();
    if entries.is_empty() {
        return Err(HeaderError::Empty { header: HEADER });
    }
    entries.into_iter().map(parse_entry).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(url: &str, seq: Option<u16>, rtptime: Option<u32>) -> RtpInfo {
        RtpInfo {
            url: url.into(),
            seq,
            rtptime,
        }
    }

    #[test]
    fn parses_live555_style() {
        let v = "url=rtsp://10.0.0.1/stream/track1;seq=27303;rtptime=2862396112,url=rtsp://10.0.0.1/stream/track2;seq=5678;rtptime=123";
        assert_eq!(
            parse_rtp_info(v),
            Ok(vec![
                info(
                    "rtsp://10.0.0.1/stream/track1",
                    Some(27303),
                    Some(2862396112)
                ),
                info("rtsp://10.0.0.1/stream/track2", Some(5678), Some(123)),
            ])
        );
    }

    #[test]
    fn tolerant_forms() {
        // GStreamer adds spaces after commas; trailing ';' and ssrc params.
        let v =
            "url=rtsp://h/p/stream=0;seq=1;rtptime=2;ssrc=1234ABCD;, url=rtsp://h/p/stream=1;seq=3";
        assert_eq!(
            parse_rtp_info(v),
            Ok(vec![
                info("rtsp://h/p/stream=0", Some(1), Some(2)),
                info("rtsp://h/p/stream=1", Some(3), None),
            ])
        );
        // URL with ';' and ',' inside (odd cameras)
        let v = "url=rtsp://cam/h264;jsessionid=5,x/trackID=1;seq=9";
        assert_eq!(
            parse_rtp_info(v),
            Ok(vec![info(
                "rtsp://cam/h264;jsessionid=5,x/trackID=1",
                Some(9),
                None
            )])
        );
        assert_eq!(parse_rtp_info("url=a"), Ok(vec![info("a", None, None)]));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            "",
            " , ",
            "seq=1",
            "url=",
            "url=a;seq=x",
            "url=a;seq=70000",
            "url=a;rtptime=-1",
            "url=a;rtptime=4294967296",
        ] {
            assert!(parse_rtp_info(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats() {
        let e = [
            info("rtsp://h/p/trackID=0", Some(1), Some(2)),
            info("rtsp://h/p/trackID=1", None, Some(7)),
        ];
        let s = format_rtp_info(&e);
        assert_eq!(
            s,
            "url=rtsp://h/p/trackID=0;seq=1;rtptime=2,url=rtsp://h/p/trackID=1;rtptime=7"
        );
        assert_eq!(parse_rtp_info(&s), Ok(e.to_vec()));
    }
}

//! Keyframe detection on RTP payloads, and SDP encoding-name lookup.

use crate::cursor::Cursor;
use crate::params::Codec;

/// Whether this RTP payload begins a keyframe (H.264 IDR slice NAL 5 or SPS 7, also inside STAP-A and at the
/// start of FU-A with S bit; H.265 IRAP NAL types 16..=21 or VPS/SPS, also inside AP and FU with S bit; VP8
/// key frame bit in the payload descriptor+header; VP9 P=0 with B bit; AV1 N bit / sequence header OBU; audio
/// codecs: always true). Used by the server's GOP cache and the load benchmark.
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::H264 => h264(payload),
        Codec::H265 => h265(payload),
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::Av1 => av1(payload),
        Codec::Aac | Codec::Opus | Codec::Pcmu | Codec::Pcma => true,
    }
}

/// Whether this RTP payload carries the start of a random-access picture itself: an H.264
/// IDR slice or an H.265 IRAP slice (alone, inside STAP-A/AP, or an FU with S bit). Unlike
/// [`starts_keyframe`], parameter sets alone do not count: encoders and servers repeat
/// them mid-GOP (e.g. GStreamer's `config-interval=1`). Other codecs: [`starts_keyframe`].
pub fn starts_random_access(codec: Codec, payload: &[u8]) -> bool {
    match codec {
        Codec::H264 => {
            let Some((&header, rest)) = payload.split_first() else {
                return false;
            };
            match header & 0x1f {
                24 => any_aggregated(rest, |nal| nal.first().is_some_and(|&h| h & 0x1f == 5)),
                28 => rest
                    .first()
                    .is_some_and(|&fu| fu & 0x80 != 0 && fu & 0x1f == 5),
                t => t == 5,
            }
        }
        Codec::H265 => {
            let &[h0, _, ref rest @ ..] = payload else {
                return false;
            };
            let irap = |t: u8| (16..=21).contains(&t);
            match (h0 >> 1) & 0x3f {
                48 => any_aggregated(rest, |nal| {
                    nal.first().is_some_and(|&h| irap((h >> 1) & 0x3f))
                }),
                49 => rest
                    .first()
                    .is_some_and(|&fu| fu & 0x80 != 0 && irap(fu & 0x3f)),
                t => irap(t),
            }
        }
        _ => starts_keyframe(codec, payload),
    }
}

/// Maps an SDP encoding name (case-insensitive, e.g. "H264", "H265", "MPEG4-GENERIC", "opus", "PCMU", "VP8",
/// "VP9", "AV1") to a Codec.
pub fn codec_from_encoding(name: &str) -> Option<Codec> {
    const NAMES: [(&str, Codec); 10] = [
        ("H264", Codec::H264),
        ("H265", Codec::H265),
        ("HEVC", Codec::H265),
        ("MPEG4-GENERIC", Codec::Aac),
        ("OPUS", Codec::Opus),
        ("PCMU", Codec::Pcmu),
        ("PCMA", Codec::Pcma),
        ("VP8", Codec::Vp8),
        ("VP9", Codec::Vp9),
        ("AV1", Codec::Av1),
    ];
    NAMES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
        .map(|&(_, c)| c)
}

/// Visits each NAL unit of an aggregation packet body (u16 size + NAL, repeated); stops at truncation.
fn any_aggregated(body: &[u8], pred: impl Fn(&[u8]) -> bool) -> bool {
    let mut cur = Cursor::new(body);
    while let Some(len) = cur.u16() {
        match cur.take(usize::from(len)) {
            Some(nal) if pred(nal) => return true,
            Some(_) => {}
            None => return false,
        }
    }
    false
}

/// H.264 NAL unit types that begin a keyframe: IDR slice, SPS.
fn h264_key_type(t: u8) -> bool {
    t == 5 || t == 7
}

/// RFC 6184 payload.
fn h264(payload: &[u8]) -> bool {
    let Some((&header, rest)) = payload.split_first() else {
        return false;
    };
    match header & 0x1f {
        24 => any_aggregated(rest, |nal| {
            nal.first().is_some_and(|&h| h264_key_type(h & 0x1f))
        }),
        28 => rest
            .first()
            .is_some_and(|&fu| fu & 0x80 != 0 && h264_key_type(fu & 0x1f)),
        t => h264_key_type(t),
    }
}

/// H.265 NAL unit types that begin a keyframe: IRAP (16..=21), VPS, SPS.
fn h265_key_type(t: u8) -> bool {
    (16..=21).contains(&t) || t == 32 || t == 33
}

/// RFC 7798 payload (no DONL fields).
fn h265(payload: &[u8]) -> bool {
    let &[h0, _, ref rest @ ..] = payload else {
        return false;
    };
    match (h0 >> 1) & 0x3f {
        48 => any_aggregated(rest, |nal| {
            nal.first().is_some_and(|&h| h265_key_type((h >> 1) & 0x3f))
        }),
        49 => rest
            .first()
            .is_some_and(|&fu| fu & 0x80 != 0 && h265_key_type(fu & 0x3f)),
        t => h265_key_type(t),
    }
}

/// RFC 7741 payload: S=1, PID=0 and the VP8 frame tag's P bit clear.
fn vp8(payload: &[u8]) -> bool {
    vp8_parse(payload).unwrap_or(false)
}

/// [`vp8`], `None` when truncated.
fn vp8_parse(payload: &[u8]) -> Option<bool> {
    let mut cur = Cursor::new(payload);
    let b0 = cur.u8()?;
    if b0 & 0x10 == 0 || b0 & 0x07 != 0 {
        return Some(false);
    }
    if b0 & 0x80 != 0 {
        let x = cur.u8()?;
        if x & 0x80 != 0 {
            let pid = cur.u8()?;
            if pid & 0x80 != 0 {
                cur.u8()?;
            }
        }
        if x & 0x40 != 0 {
            cur.u8()?; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            cur.u8()?; // TID/Y/KEYIDX
        }
    }
    Some(cur.u8()? & 0x01 == 0)
}

/// RFC 9628 payload descriptor: B=1 (start of a frame) and P=0 (not inter-picture predicted).
fn vp9(payload: &[u8]) -> bool {
    payload
        .first()
        .is_some_and(|&b| b & 0x08 != 0 && b & 0x40 == 0)
}

/// AV1 RTP payload: N=1 (new coded video sequence), or a first OBU element (Z=0) that is a sequence header.
fn av1(payload: &[u8]) -> bool {
    let Some((&agg, rest)) = payload.split_first() else {
        return false;
    };
    if agg & 0x08 != 0 {
        return true;
    }
    if agg & 0x80 != 0 {
        return false; // first element continues an OBU from the previous packet
    }
    let w = (agg >> 4) & 0x03;
    let obu = if w == 1 {
        rest
    } else {
        // Skip the element's LEB128 length.
        let Some(len_bytes) = rest.iter().position(|b| b & 0x80 == 0) else {
            return false;
        };
        rest.get(len_bytes + 1..).unwrap_or(&[])
    };
    obu.first().is_some_and(|&h| (h >> 3) & 0x0f == 1)
}

#[cfg(test)]
mod random_access_tests {
    use super::*;

    #[test]
    fn parameter_sets_alone_are_not_random_access() {
        // H.264: SPS alone, STAP-A(SPS, PPS), STAP-A(SPS, PPS, IDR), FU-A start of IDR.
        assert!(starts_keyframe(Codec::H264, &[0x67, 0x42]));
        assert!(!starts_random_access(Codec::H264, &[0x67, 0x42]));
        let stap = [0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce];
        assert!(!starts_random_access(Codec::H264, &stap));
        let stap_idr = [0x78, 0, 2, 0x67, 0x42, 0, 2, 0x68, 0xce, 0, 2, 0x65, 0x88];
        assert!(starts_random_access(Codec::H264, &stap_idr));
        assert!(starts_random_access(Codec::H264, &[0x7c, 0x85, 0x88]));
        assert!(
            !starts_random_access(Codec::H264, &[0x7c, 0x05, 0x88]),
            "FU-A middle"
        );
        assert!(!starts_random_access(Codec::H264, &[0x41, 0x9a]));
        // H.265: VPS alone no, IDR_W_RADL (19) yes, FU start of CRA (21) yes.
        assert!(!starts_random_access(Codec::H265, &[32 << 1, 1, 0]));
        assert!(starts_random_access(Codec::H265, &[19 << 1, 1, 0]));
        assert!(starts_random_access(Codec::H265, &[49 << 1, 1, 0x80 | 21]));
        assert!(starts_random_access(Codec::Aac, &[1]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(codec_from_encoding("h264"), Some(Codec::H264));
        assert_eq!(codec_from_encoding("H265"), Some(Codec::H265));
        assert_eq!(codec_from_encoding("mpeg4-generic"), Some(Codec::Aac));
        assert_eq!(codec_from_encoding("opus"), Some(Codec::Opus));
        assert_eq!(codec_from_encoding("PCMU"), Some(Codec::Pcmu));
        assert_eq!(codec_from_encoding("pcma"), Some(Codec::Pcma));
        assert_eq!(codec_from_encoding("VP8"), Some(Codec::Vp8));
        assert_eq!(codec_from_encoding("vp9"), Some(Codec::Vp9));
        assert_eq!(codec_from_encoding("AV1"), Some(Codec::Av1));
        assert_eq!(codec_from_encoding("MP4A-LATM"), None);
        assert_eq!(codec_from_encoding(""), None);
        for c in [Codec::H264, Codec::Aac, Codec::Opus, Codec::Vp9] {
            assert_eq!(codec_from_encoding(c.encoding_name()), Some(c));
        }
    }

    #[test]
    fn h264_payloads() {
        assert!(h264(&[0x67, 0x42]));
        assert!(h264(&[0x65, 0x88]));
        assert!(!h264(&[0x41, 0x9a]));
        assert!(!h264(&[0x68, 0xce]));
        // STAP-A: PPS then IDR; STAP-A with only PPS; truncated STAP-A.
        assert!(h264(&[0x78, 0, 2, 0x68, 0xce, 0, 2, 0x65, 0x88]));
        assert!(!h264(&[0x78, 0, 2, 0x68, 0xce]));
        assert!(!h264(&[0x78, 0, 9, 0x67]));
        // FU-A start of IDR, middle of IDR, start of P slice.
        assert!(h264(&[0x7c, 0x85, 1]));
        assert!(!h264(&[0x7c, 0x05, 1]));
        assert!(!h264(&[0x5c, 0x81, 1]));
        assert!(!h264(&[0x7c]));
        assert!(!h264(&[]));
    }

    #[test]
    fn av1_payloads() {
        assert!(av1(&[0x08, 0x00]));
        // Z=0, W=1, sequence header OBU (type 1).
        assert!(av1(&[0x10, 0x08, 0x00]));
        // W=0: length-prefixed element holding a sequence header.
        assert!(av1(&[0x00, 0x02, 0x08, 0x00]));
        // Frame OBU (type 6), continuation, empty.
        assert!(!av1(&[0x10, 0x30, 0x00]));
        assert!(!av1(&[0x90, 0x08]));
        assert!(!av1(&[]));
    }

    #[test]
    fn audio_is_always_key() {
        assert!(starts_keyframe(Codec::Aac, &[]));
        assert!(starts_keyframe(Codec::Pcma, &[1]));
    }
}

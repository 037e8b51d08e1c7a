//! Delivery notes: per stream, what each web delivery module (HLS, WebRTC) can carry of
//! it and why not, so that the API and the player page name a codec a protocol leaves
//! out instead of failing silently.
//!
//! Each module decides from the stream's presentation alone (a pure function of its
//! tracks) in its [`crate::hub::Hub::on_stream`] hook and files the result with
//! [`crate::Stream::set_delivery`]; readers of the notes (the HTTP API, the page's list)
//! know no module, only these plain values.

/// What one delivery protocol makes of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryNote {
    /// The protocol: `hls`, `webrtc`.
    pub protocol: &'static str,
    /// Whether a player can be sent the stream at all over this protocol (some tracks
    /// may still be left out: see `notes`).
    pub playable: bool,
    /// Why a track is left out or the stream cannot be played, one short sentence each
    /// (`G.711 audio (PCMU) cannot be carried`); empty when everything is carried.
    pub notes: Vec<String>,
}

impl DeliveryNote {
    /// A note for `protocol`: playable, nothing left out.
    pub fn carried(protocol: &'static str) -> DeliveryNote {
        DeliveryNote {
            protocol,
            playable: true,
            notes: Vec::new(),
        }
    }

    /// One line for a human: `HLS: G.711 audio (PCMU) cannot be carried`, or `WebRTC: ok`.
    pub fn summary(&self) -> String {
        let name = match self.protocol {
            "hls" => "HLS",
            "webrtc" => "WebRTC",
            other => other,
        };
        if self.notes.is_empty() {
            if self.playable {
                format!("{name}: ok")
            } else {
                format!("{name}: not playable")
            }
        } else {
            format!("{name}: {}", self.notes.join("; "))
        }
    }
}

/// A human name for an RTP encoding name, as the notes use it (`PCMU` → `G.711 µ-law
/// (PCMU)`, `MPEG4-GENERIC` → `AAC`).
pub fn codec_label(media: &str, encoding: &str) -> String {
    let upper = encoding.to_ascii_uppercase();
    let name = match upper.as_str() {
        "PCMU" => "G.711 µ-law (PCMU)".to_owned(),
        "PCMA" => "G.711 A-law (PCMA)".to_owned(),
        "MPEG4-GENERIC" | "MP4A-LATM" => "AAC".to_owned(),
        "OPUS" => "Opus".to_owned(),
        "H264" => "H.264".to_owned(),
        "H265" => "H.265".to_owned(),
        "" => "a static payload type".to_owned(),
        _ => encoding.to_owned(),
    };
    match media {
        "video" | "audio" => format!("{name} {media}"),
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_name_the_protocol_and_what_is_left_out() {
        let mut n = DeliveryNote::carried("hls");
        assert_eq!(n.summary(), "HLS: ok");
        n.notes.push(format!(
            "{} cannot be carried",
            codec_label("audio", "PCMU")
        ));
        assert_eq!(
            n.summary(),
            "HLS: G.711 µ-law (PCMU) audio cannot be carried"
        );
        let w = DeliveryNote {
            protocol: "webrtc",
            playable: false,
            notes: vec![],
        };
        assert_eq!(w.summary(), "WebRTC: not playable");
        assert_eq!(codec_label("audio", "mpeg4-generic"), "AAC audio");
    }
}

//! Invariant checks shared by the `sdp` fuzz target (`/fuzz`) and the corpus
//! test. Each function panics when an invariant is violated and otherwise
//! accepts any input.

use sluice_client::probe::media_descs;
use sluice_codec::Depacketizer;

use sluice_hub::presentation::{Presentation, MAX_TRACKS};

/// SDP target: the server's handling of an announced SDP and the client
/// probe's reading of a described one.
///
/// * [`Presentation::from_sdp`] accepts or refuses `data`; an accepted
///   presentation has 1..=[`MAX_TRACKS`] tracks.
/// * Its `reader_sdp` (what DESCRIBE serves) parses again, has the same
///   number of tracks carrying the same media (type, payload type,
///   encoding, clock rate, fmtp), each with control `trackID=N`, and is
///   stable: the reader SDP of the re-parsed presentation is identical.
/// * [`media_descs`] reads both SDPs without panicking, agreeing on the
///   track count, and depacketizers can be created from what it returns.
pub fn sdp(data: &[u8]) {
    let descs = media_descs(data);
    if let Ok(descs) = &descs {
        for d in descs {
            if let Ok(dp) =
                Depacketizer::new(&d.encoding, d.clock_rate, d.channels, d.fmtp.as_deref())
            {
                let _ = dp.params();
            }
        }
    }
    let Ok(p) = Presentation::from_sdp(data) else {
        return;
    };
    let n = p.tracks().len();
    assert!((1..=MAX_TRACKS).contains(&n), "{n} tracks accepted");
    if let Ok(descs) = &descs {
        assert_eq!(
            descs.len(),
            n,
            "probe and server disagree on the track count"
        );
    }
    let reader = p.reader_sdp(7);
    let again = match Presentation::from_sdp(reader.as_bytes()) {
        Ok(a) => a,
        Err(e) => panic!("reader SDP does not parse ({e}):\n{reader}"),
    };
    assert_eq!(again.tracks().len(), n, "reader SDP:\n{reader}");
    for (i, (a, b)) in p.tracks().iter().zip(again.tracks()).enumerate() {
        assert_eq!(
            (&a.media, a.payload_type, &a.encoding, a.clock_rate, &a.fmtp),
            (&b.media, b.payload_type, &b.encoding, b.clock_rate, &b.fmtp),
            "track {i} changed in the reader SDP:\n{reader}"
        );
        assert_eq!(b.publisher_control, format!("trackID={i}"), "{reader}");
    }
    assert!(p.same_media(&again));
    assert_eq!(again.reader_sdp(7), reader, "reader SDP not stable");
    match media_descs(reader.as_bytes()) {
        Ok(d) => assert_eq!(d.len(), n, "{reader}"),
        Err(e) => panic!("probe cannot read the reader SDP ({e}):\n{reader}"),
    }
    let with_range = p.clone().with_duration(12.5).reader_sdp(8);
    assert!(
        Presentation::from_sdp(with_range.as_bytes()).is_ok(),
        "{with_range}"
    );
}

/// Configuration target: what `sluice check-config`, reloads and the API's writes do
/// with a file's text.
///
/// * [`crate::config::check_toml`] accepts or refuses any text without panicking; a
///   refusal points at a line and column inside the text (1-based, at most one past the
///   last line).
/// * What it accepts, [`crate::config::Config::from_toml`] accepts too, and layering
///   the same text (no environment, no flags) gives the same paths.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match crate::config::check_toml(&text) {
        Ok(config) => {
            assert!(
                crate::config::Config::from_toml(&text).is_ok(),
                "check_toml accepted what from_toml refuses"
            );
            let layered = crate::config::Config::load_layered_text(&text, None, Vec::new(), &[])
                .expect("layering the accepted text");
            let a: Vec<&String> = config.paths.keys().collect();
            let b: Vec<&String> = layered.paths.keys().collect();
            assert_eq!(a, b, "layering changed the paths");
        }
        Err(d) => {
            let lines = text.lines().count().max(1);
            assert!(
                d.line >= 1 && d.line <= lines + 1,
                "line {} of {lines}",
                d.line
            );
            assert!(d.column >= 1, "column {}", d.column);
            assert!(!d.message.is_empty(), "an empty diagnosis");
        }
    }
}

//! The media playlist text (RFC 8216bis §4.4, with the Low-Latency tags).

use std::fmt::Write as _;

use super::HlsMuxer;

/// Renders `m`'s playlist (see [`HlsMuxer::playlist`]).
pub(super) fn render(m: &HlsMuxer, skip: bool) -> String {
    let target = m.target_duration();
    let part_target = m.part_target();
    // RFC 8216bis §4.4.3.8: CAN-SKIP-UNTIL is at least six target durations.
    let skip_until = 6.0 * f64::from(target);
    let mut out = String::with_capacity(4096);
    let first = m
        .segments
        .front()
        .or(m.current.as_ref())
        .map_or(0, |s| s.msn);
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:{target}\n\
         #EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={skip_until:.1},PART-HOLD-BACK={:.3}\n\
         #EXT-X-PART-INF:PART-TARGET={part_target:.5}\n#EXT-X-MEDIA-SEQUENCE:{first}\n\
         #EXT-X-MAP:URI=\"init.mp4\"\n",
        3.0 * part_target
    );
    // Segments that start more than CAN-SKIP-UNTIL before the playlist's end may be skipped.
    let end: f64 = m.segments.iter().map(|s| s.duration).sum::<f64>()
        + m.current
            .as_ref()
            .map_or(0.0, |c| c.parts.iter().map(|p| p.duration).sum());
    let mut skipped = 0usize;
    if skip {
        let mut start = 0.0;
        for s in &m.segments {
            if end - start <= skip_until {
                break;
            }
            start += s.duration;
            skipped += 1;
        }
        if skipped > 0 {
            let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
        }
    }
    let listed_from = m.parts_listed_from();
    for s in m.segments.iter().skip(skipped).chain(m.current.iter()) {
        let complete = m.current.as_ref().is_none_or(|c| c.msn != s.msn);
        if !complete && s.parts.is_empty() {
            break;
        }
        let _ = writeln!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            humantime::format_rfc3339_millis(s.date)
        );
        if s.msn >= listed_from {
            for p in &s.parts {
                let _ = writeln!(
                    out,
                    "#EXT-X-PART:DURATION={:.5},URI=\"part{}.m4s\"{}",
                    p.duration,
                    p.number,
                    if p.independent {
                        ",INDEPENDENT=YES"
                    } else {
                        ""
                    }
                );
            }
        }
        if complete {
            let _ = write!(out, "#EXTINF:{:.5},\nseg{}.m4s\n", s.duration, s.msn);
        }
    }
    let _ = writeln!(
        out,
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part{}.m4s\"",
        m.next_part
    );
    out
}

/// Renders `m`'s classic playlist of MPEG-TS segments (see [`HlsMuxer::playlist_ts`]).
pub(super) fn render_ts(m: &HlsMuxer) -> String {
    let mut out = String::with_capacity(2048);
    let first = m.segments.front().map_or(0, |s| s.msn);
    let _ = write!(
        out,
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:{first}\n",
        m.target_duration()
    );
    for s in &m.segments {
        let _ = write!(
            out,
            "#EXT-X-PROGRAM-DATE-TIME:{}\n#EXTINF:{:.5},\nseg{}.ts\n",
            humantime::format_rfc3339_millis(s.date),
            s.duration,
            s.msn
        );
    }
    out
}

//! The playback module: recordings played back over RTSP at `rtsp://HOST/rec/<path>`
//! (prefix `[playback] prefix`), with ONVIF replay (clock ranges, reverse, Speed,
//! `Rate-Control`, `Frames`, the 0xABAC RTP header extension).
//!
//! It is an on-demand provider of the hub ([`sluice_hub::OnDemand`]): the RTSP module
//! opens `rec/<path>` like a stored file and drives it per session through
//! [`sluice_hub::Playback`], naming no module. The segments come from a [`Catalog`] (the
//! recordings index the composition root hands in), never from a directory walk.
//!
//! A time window in the path (`rec/<path>/window=<start>-<end>`, clock times as RFC 2326
//! writes them) limits the timeline; players that can only send npt ranges (ffmpeg, VLC)
//! ask `rtsp://HOST/rec/<path>?start=<RFC 3339>&end=<RFC 3339>`, which DESCRIBE turns into
//! that path (its `Content-Base`), so that SETUP and PLAY carry the window too.
//!
//! The timing, seeking and ONVIF logic is the sans-IO [`engine::Replay`]; [`source`] only
//! sleeps until it says a frame is due and pushes the packets into the session's stream.

pub mod catalog;
pub mod engine;
pub mod source;

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use sluice_codec::packetizer::Packetizer;
use sluice_hub::{OnDemand, OnDemandMedia, OpenError, Playback, Presentation, Stream};
use sluice_media::{Demuxer, MediaError};
use sluice_rtsp::ClockTime;

use crate::config::Config;
use engine::{Opener, Segment, Timeline, TrackOut};

/// Largest RTP payload produced.
pub const MAX_PAYLOAD: usize = 1400;

/// The path segment that carries a time window: `window=<start>-<end>`.
const WINDOW: &str = "window=";

/// What a catalog lists for one window: the segments and a guard that keeps retention
/// away from them while a session plays them.
pub struct Listing {
    /// The segments overlapping the window, in any order.
    pub segments: Vec<Segment>,
    /// Dropped when the session ends.
    pub guard: Box<dyn Send + Sync>,
}

/// Where the recordings are (the recordings index): I/O at the module's edge.
pub trait Catalog: Send + Sync {
    /// The segments of `stream` overlapping `[from, to)`.
    fn segments(&self, stream: &str, from: SystemTime, to: SystemTime) -> Result<Listing, String>;
}

/// The provider of `rec/…` paths (registered with the hub at start).
pub struct Replay {
    prefix: RwLock<Option<String>>,
    catalog: RwLock<Option<Arc<dyn Catalog>>>,
    /// The `[playback] dir` whose index is open.
    dir: RwLock<Option<std::path::PathBuf>>,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("prefix", &self.prefix())
            .finish()
    }
}

impl Replay {
    /// Registers the provider with `hub`, serving `config`'s prefix once a catalog is set
    /// (`[playback] dir`, or [`Replay::set_catalog`]).
    pub fn start(config: &Config, hub: &Arc<sluice_hub::Hub>) -> Result<Arc<Replay>, String> {
        let r = Arc::new(Replay {
            prefix: RwLock::new(None),
            catalog: RwLock::new(None),
            dir: RwLock::new(None),
        });
        r.apply(config)?;
        hub.add_on_demand(r.clone());
        Ok(r)
    }

    /// Follows the configuration (at start and on a reload): the prefix, and the index
    /// of `[playback] dir` when set (opened here; a directory it cannot open is an error
    /// and changes nothing).
    pub fn apply(&self, config: &Config) -> Result<(), String> {
        let p = &config.playback;
        // The recorder's directory is served from the recorder's index, which the
        // composition root hands in (an index opens once per process).
        let recorders = config.record.dir.as_ref();
        if let (true, Some(dir), false) = (p.enabled, &p.dir, recorders == p.dir.as_ref()) {
            let same = self.dir.read().unwrap_or_else(|e| e.into_inner()).as_ref() == Some(dir);
            if !same {
                let index =
                    sluice_archive::Index::open(dir).map_err(|e| format!("playback.dir: {e}"))?;
                self.set_catalog(Some(Arc::new(catalog::IndexCatalog::new(
                    Arc::new(index),
                    dir.clone(),
                ))));
                *self.dir.write().unwrap_or_else(|e| e.into_inner()) = Some(dir.clone());
            }
        }
        *self.prefix.write().unwrap_or_else(|e| e.into_inner()) =
            p.enabled.then(|| p.prefix.clone());
        Ok(())
    }

    /// Sets where the recordings are listed (None: nothing is served).
    pub fn set_catalog(&self, catalog: Option<Arc<dyn Catalog>>) {
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = catalog;
    }

    fn prefix(&self) -> Option<String> {
        self.prefix
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn catalog(&self) -> Option<Arc<dyn Catalog>> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The recorded path and window a request path names, if it is one of ours.
    fn parse(&self, path: &str) -> Option<Result<Named, OpenError>> {
        let prefix = self.prefix()?;
        let rest = path.strip_prefix(prefix.as_str())?;
        Some(parse_named(rest))
    }
}

/// A recorded path and the window asked for.
#[derive(Debug, Clone, PartialEq)]
struct Named {
    stream: String,
    from: Option<SystemTime>,
    to: Option<SystemTime>,
}

/// `cam` or `site/cam/window=20261207T031500Z-20261207T031530Z`.
fn parse_named(rest: &str) -> Result<Named, OpenError> {
    let (stream, window) = match rest.rsplit_once('/') {
        Some((s, last)) if last.starts_with(WINDOW) => (s, Some(&last[WINDOW.len()..])),
        _ => (rest, None),
    };
    if stream.is_empty() {
        return Err(OpenError::NotFound);
    }
    let (from, to) = match window {
        None => (None, None),
        Some(w) => {
            let (a, b) = w
                .split_once('-')
                .ok_or_else(|| OpenError::BadRequest(format!("window {w:?}: no '-'")))?;
            let t = |s: &str| -> Result<Option<SystemTime>, OpenError> {
                if s.is_empty() {
                    return Ok(None);
                }
                ClockTime::parse(s)
                    .map(|c| Some(c.0))
                    .map_err(|_| OpenError::BadRequest(format!("window time {s:?}")))
            };
            (t(a)?, t(b)?)
        }
    };
    if let (Some(f), Some(t)) = (from, to) {
        if t <= f {
            return Err(OpenError::BadRequest(
                "the window ends before it starts".into(),
            ));
        }
    }
    Ok(Named {
        stream: stream.to_owned(),
        from,
        to,
    })
}

/// Parses an RFC 3339 time of a query (`2026-12-07T03:15:00Z`, fractions allowed,
/// `%3A` for colons accepted).
fn parse_rfc3339(v: &str) -> Result<SystemTime, OpenError> {
    let decoded = v.replace("%3A", ":").replace("%3a", ":");
    humantime::parse_rfc3339_weak(&decoded)
        .map_err(|e| OpenError::BadRequest(format!("{v:?} is not an RFC 3339 UTC time: {e}")))
}

/// The path for `?start=…&end=…` on a recorded path: `<path>/window=<start>-<end>`.
fn view_path(path: &str, query: &str) -> Result<Option<String>, OpenError> {
    let (mut start, mut end) = (None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("start", v)) => start = Some(parse_rfc3339(v)?),
            Some(("end", v)) => end = Some(parse_rfc3339(v)?),
            _ => {}
        }
    }
    if start.is_none() && end.is_none() {
        return Ok(None);
    }
    if let (Some(s), Some(e)) = (start, end) {
        if e <= s {
            return Err(OpenError::BadRequest("end is not after start".into()));
        }
    }
    let fmt = |t: Option<SystemTime>| t.map(|t| ClockTime(t).to_string()).unwrap_or_default();
    Ok(Some(format!("{path}/{WINDOW}{}-{}", fmt(start), fmt(end))))
}

impl OnDemand for Replay {
    fn serves(&self, path: &str) -> bool {
        self.catalog().is_some() && self.parse(path).is_some()
    }

    fn view(&self, path: &str, query: &str) -> Result<Option<String>, OpenError> {
        if !self.serves(path) {
            return Ok(None);
        }
        view_path(path, query)
    }

    fn open(&self, path: &str) -> Result<Option<Box<dyn OnDemandMedia>>, OpenError> {
        let Some(named) = self.parse(path) else {
            return Ok(None);
        };
        let Some(catalog) = self.catalog() else {
            return Ok(None);
        };
        let named = named?;
        let from = named.from.unwrap_or(SystemTime::UNIX_EPOCH);
        let to = named
            .to
            .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 40));
        // An index read and the first segment's header: blocking I/O, kept off the
        // runtime's worker (the RTSP module asks from its connection task).
        let (guard, opened) = blocking(|| {
            let Listing { segments, guard } = catalog
                .segments(&named.stream, from, to)
                .map_err(OpenError::Io)?;
            let timeline =
                Timeline::new(segments, named.from, named.to).ok_or(OpenError::NotFound)?;
            Ok::<_, OpenError>((guard, describe(timeline, Box::new(open_file))?))
        })?;
        Ok(Some(Box::new(Opened {
            opened,
            guard,
            label: path.to_owned(),
            follow: source::Follow::new(catalog, named.stream),
        })))
    }
}

/// Runs blocking I/O from a runtime worker: through `block_in_place` on a multi-thread
/// runtime (the worker's other tasks move to another thread meanwhile), directly
/// elsewhere (tests, a current-thread runtime).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Opens a segment file.
fn open_file(segment: &Segment) -> Result<Box<dyn Demuxer>, MediaError> {
    sluice_media::open(&segment.file)
}

/// A timeline ready to play: its tracks (from the first segment) and presentation.
pub struct Described {
    /// The timeline.
    pub timeline: Timeline,
    /// Opens its segments.
    pub opener: Box<dyn Opener>,
    /// One per track of the first segment.
    pub outputs: Vec<TrackOut>,
    /// SDP with npt and clock ranges.
    pub presentation: Presentation,
}

/// Describes `timeline` from its first segment's tracks.
pub fn describe(timeline: Timeline, mut opener: Box<dyn Opener>) -> Result<Described, OpenError> {
    let first = timeline.segments.first().ok_or(OpenError::NotFound)?;
    let demuxer = opener.open(first).map_err(|e| match e {
        MediaError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => OpenError::NotFound,
        MediaError::Io(e) => OpenError::Io(format!("{}: {e}", first.file.display())),
        MediaError::Unsupported(m) => {
            OpenError::Unsupported(format!("{}: {m}", first.file.display()))
        }
        other => OpenError::Malformed(format!("{}: {other}", first.file.display())),
    })?;
    let mut outputs = Vec::new();
    for (i, t) in demuxer.info().tracks.iter().enumerate() {
        let payload_type = 96 + i as u8;
        let ssrc: u32 = rand::random();
        let packetizer =
            Packetizer::new(&t.params, payload_type, ssrc, rand::random(), MAX_PAYLOAD)
                .map_err(|e| OpenError::Unsupported(format!("track {i}: {e}")))?;
        outputs.push(TrackOut {
            packetizer,
            params: t.params.clone(),
            payload_type,
            ssrc,
            rtp_offset: rand::random(),
        });
    }
    let mut sdp =
        String::from("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=Sluice recording\r\nt=0 0\r\n");
    for o in &outputs {
        sdp.push_str(&o.packetizer.sdp_media());
    }
    let clock = format!("{}-{}", ClockTime(timeline.origin), ClockTime(timeline.end));
    let presentation = Presentation::from_sdp(sdp.as_bytes())
        .map_err(|e| OpenError::Unsupported(format!("cannot describe tracks: {e}")))?
        .with_duration(timeline.span())
        .with_clock_range(&clock);
    Ok(Described {
        timeline,
        opener,
        outputs,
        presentation,
    })
}

/// A recording opened for one session.
struct Opened {
    opened: Described,
    guard: Box<dyn Send + Sync>,
    label: String,
    follow: source::Follow,
}

impl OnDemandMedia for Opened {
    fn presentation(&self) -> &Presentation {
        &self.opened.presentation
    }

    fn start(self: Box<Self>, stream: Arc<Stream>) -> Box<dyn Playback> {
        let Opened {
            opened,
            guard,
            label,
            follow,
        } = *self;
        let replay = engine::Replay::new(opened.timeline, opened.opener, opened.outputs);
        Box::new(source::ReplaySource::new(
            replay,
            stream,
            label,
            guard,
            Some(follow),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_windows() {
        assert_eq!(
            parse_named("site/cam").unwrap(),
            Named {
                stream: "site/cam".into(),
                from: None,
                to: None
            }
        );
        let n = parse_named("cam/window=20261207T031500Z-20261207T031530.5Z").unwrap();
        assert_eq!(n.stream, "cam");
        let (f, t) = (n.from.unwrap(), n.to.unwrap());
        assert_eq!(t.duration_since(f).unwrap(), Duration::from_millis(30_500));
        let n = parse_named("cam/window=20261207T031500Z-").unwrap();
        assert!(n.from.is_some() && n.to.is_none());
        assert!(matches!(
            parse_named("cam/window=20261207T031500Z-20261207T031400Z"),
            Err(OpenError::BadRequest(_))
        ));
        assert!(matches!(
            parse_named("cam/window=x-"),
            Err(OpenError::BadRequest(_))
        ));
        assert!(matches!(parse_named(""), Err(OpenError::NotFound)));
    }

    #[test]
    fn query_views() {
        let v = view_path(
            "rec/cam",
            "start=2026-12-07T03:15:00Z&end=2026-12-07T03%3A15%3A30.250Z",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            v,
            "rec/cam/window=20261207T031500.000Z-20261207T031530.250Z"
        );
        assert_eq!(
            parse_named(v.strip_prefix("rec/").unwrap())
                .unwrap()
                .to
                .unwrap()
                .duration_since(
                    parse_named("cam/window=20261207T031500Z-")
                        .unwrap()
                        .from
                        .unwrap()
                )
                .unwrap(),
            Duration::from_millis(30_250)
        );
        assert_eq!(view_path("rec/cam", "x=1").unwrap(), None);
        assert!(view_path("rec/cam", "start=yesterday").is_err());
        assert!(view_path(
            "rec/cam",
            "start=2026-12-07T03:15:00Z&end=2026-12-07T03:14:00Z"
        )
        .is_err());
    }
}

//! Recordings played back over HTTP (issue 25, "HTTP playback"), from the recorder's index
//! and segment files, never a directory walk and never a re-encode:
//!
//! - `GET /v1/recordings/timeline?path=&start=&end=`: the recorded spans of a path in a
//!   range, with the gaps between them named, from the index alone;
//! - `GET|HEAD /v1/recordings/export.mp4?path=&start=&end=`: a progressive MP4 (`moov`
//!   first) built by [`sluice_media::export`] from the parts' `moof`s, its `mdat` served
//!   from the segment files' byte ranges: `Content-Length`, `Accept-Ranges: bytes`, an
//!   `ETag`, single-range `206`; each track's edit list starts it exactly at `start`;
//! - `GET /v1/recordings/index.m3u8?path=&start=&end=`: an HLS VOD whose media segments
//!   are byte ranges of the segment files (from a keyframe part to the next),
//!   `EXT-X-PROGRAM-DATE-TIME` from the parts' `prft` (as indexed), and
//!   `EXT-X-DISCONTINUITY` only where the media is not continuous: a gap, new codec
//!   parameters (a new init), or a new decode timeline (the recorder restarted: segments
//!   cut on duration continue their predecessor's decode times, others start anew at 0,
//!   which `SegmentRecord::media_base` tells). Each file holds its own init; files whose inits are byte-identical
//!   share one `EXT-X-MAP` (RFC 8216 lets a map apply to every segment up to the next map),
//!   and a new one comes with new codec parameters, always after a discontinuity;
//! - `GET|HEAD /v1/recordings/segment.mp4?path=&segment=`: one segment file (by its start,
//!   microseconds since the Unix epoch, as the playlist names it), with single-range `206`.
//!
//! Each needs the permission `playback` on the path (not `api`): a viewer of recordings
//! need not read the rest of the API. Times are RFC 3339 (`2026-12-07T03:00:00Z`). Segment
//! files being read are held against retention ([`Index::hold`]) until the answer is sent.
//! The module reads the index the recorder opened (the composition root hands it over):
//! it imports neither the recorder nor any other module.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sluice_archive::{Hold, Index};
use sluice_media::archive::SegmentRecord;
use sluice_media::export::{part_header_len, vod_playlist, Export, ExportBuilder, Piece, VodPart};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tracing::info;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Action;
use crate::http::access::Peer;
use crate::http::problem::Problem;
use crate::http::HttpAuth;

/// Two recordings closer than this count as one span (segments abut within a frame).
const ABUT: Duration = Duration::from_millis(500);
/// How far a file's decode timeline may be from where the previous file's ended for the
/// HLS VOD to play them without a discontinuity (the writer continues it exactly; this
/// covers the index's microsecond rounding).
const CONTINUES: Duration = Duration::from_millis(5);
/// Longest range one request may cover (an export's tables grow with it).
const MAX_RANGE: Duration = Duration::from_secs(24 * 3600);
/// Bytes read per chunk of a body.
const CHUNK: usize = 256 << 10;

/// The HTTP playback module: the recorder's index and directory.
#[derive(Debug, Clone)]
pub struct Recordings {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    index: Arc<Index>,
    dir: PathBuf,
}

impl Recordings {
    /// Serves the recordings of `index`, whose segment paths are relative to `dir`.
    pub fn new(index: Arc<Index>, dir: PathBuf) -> Recordings {
        Recordings {
            inner: Arc::new(Inner { index, dir }),
        }
    }

    /// The documented routes, to hand to `HttpRoutes::documented`.
    pub fn router(&self) -> OpenApiRouter {
        OpenApiRouter::new()
            .routes(routes!(timeline))
            .routes(routes!(export))
            .routes(routes!(vod))
            .routes(routes!(segment))
            .with_state(self.inner.clone())
    }
}

/// The range a request asks for.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RangeQuery {
    /// The recorded path's name.
    path: String,
    /// Start (RFC 3339, UTC); default: the path's first recording.
    start: Option<String>,
    /// End (RFC 3339, UTC); default: the path's last recording's end.
    end: Option<String>,
}

/// A segment file of a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SegmentQuery {
    /// The recorded path's name.
    path: String,
    /// The segment's start, microseconds since the Unix epoch (as the VOD playlist names it).
    segment: u64,
}

/// A recorded span.
#[derive(Debug, Serialize, ToSchema)]
pub struct Span {
    /// Its start (RFC 3339).
    pub start: String,
    /// Its end (RFC 3339).
    pub end: String,
    /// Bytes recorded in it.
    pub bytes: u64,
}

/// A span with nothing recorded.
#[derive(Debug, Serialize, ToSchema)]
pub struct Gap {
    /// Its start (RFC 3339).
    pub start: String,
    /// Its end (RFC 3339).
    pub end: String,
}

/// What is recorded of a path in a range.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeline {
    /// The path.
    pub path: String,
    /// The range asked (RFC 3339).
    pub start: String,
    /// The range's end (RFC 3339).
    pub end: String,
    /// Recorded spans in it, in order (touching segments merged).
    pub spans: Vec<Span>,
    /// The unrecorded spans of the range, in order (before, between and after the spans).
    pub gaps: Vec<Gap>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn problem(status: StatusCode, why: impl Into<String>) -> Response {
    Problem::new(status, why.into()).into_response()
}

/// A 500 for a failure of the index, the file system or a blocking task.
fn internal(e: impl std::fmt::Display) -> Response {
    problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Checks `playback` on `path` for the request's client.
fn permit(auth: &HttpAuth, peer: Peer, headers: &HeaderMap, path: &str) -> Result<(), Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    auth.check(Action::Playback, path, peer, authorization)
        .map(|_| ())
}

fn parse_time(what: &str, v: &str) -> Result<SystemTime, Response> {
    humantime::parse_rfc3339_weak(v).map_err(|e| {
        problem(
            StatusCode::BAD_REQUEST,
            format!("{what} must be an RFC 3339 time such as 2026-12-07T03:00:00Z: {e}"),
        )
    })
}

/// The asked range, defaults filled from the index; 404 for a path never recorded.
fn resolve(inner: &Inner, q: &RangeQuery) -> Result<(SystemTime, SystemTime), Response> {
    let first_last = inner.index.first_last(&q.path).map_err(internal)?;
    let Some((first, last)) = first_last else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            format!("nothing is recorded of {:?}", q.path),
        ));
    };
    let start = match &q.start {
        Some(s) => parse_time("start", s)?,
        None => first,
    };
    let end = match &q.end {
        Some(s) => parse_time("end", s)?,
        None => last,
    };
    if end <= start {
        return Err(problem(StatusCode::BAD_REQUEST, "end must be after start"));
    }
    if end.duration_since(start).unwrap_or_default() > MAX_RANGE {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "a range may span at most 24 hours",
        ));
    }
    Ok((start, end))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Response> + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

/// What the range handlers share: `playback` checked on the path, then, off the async
/// runtime (the index and the files are read synchronously), the range resolved and `f`
/// run on it.
async fn in_range<T: Send + 'static>(
    inner: Arc<Inner>,
    auth: &HttpAuth,
    peer: Peer,
    headers: &HeaderMap,
    q: RangeQuery,
    f: impl FnOnce(&Inner, &str, SystemTime, SystemTime) -> Result<T, Response> + Send + 'static,
) -> Result<T, Response> {
    permit(auth, peer, headers, &q.path)?;
    blocking(move || {
        let (start, end) = resolve(&inner, &q)?;
        f(&inner, &q.path, start, end)
    })
    .await
}

/// What is recorded of a path in a range: spans and the gaps between them, from the index.
#[utoipa::path(
    get,
    path = "/v1/recordings/timeline",
    tag = "recordings",
    params(RangeQuery),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Spans and gaps", body = Timeline),
        (status = 400, description = "A bad time or range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No playback permission on the path", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Nothing recorded of the path", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn timeline(
    State(inner): State<Arc<Inner>>,
    Extension(auth): Extension<HttpAuth>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    let answer = in_range(
        inner,
        &auth,
        peer,
        &headers,
        q,
        |inner, path, start, end| {
            let spans = inner.index.spans(path, start, end).map_err(internal)?;
            Ok(build_timeline(path, start, end, &spans))
        },
    )
    .await;
    match answer {
        Ok(t) => Json(t).into_response(),
        Err(r) => r,
    }
}

/// Spans (clipped to the range, touching ones merged) and the gaps around them.
fn build_timeline(
    path: &str,
    start: SystemTime,
    end: SystemTime,
    spans: &[(SystemTime, SystemTime, u64)],
) -> Timeline {
    let mut merged: Vec<(SystemTime, SystemTime, u64)> = Vec::new();
    for &(s, e, b) in spans {
        let (s, e) = (s.max(start), e.min(end));
        if e <= s {
            continue;
        }
        match merged.last_mut() {
            Some(last) if s <= last.1 + ABUT => {
                last.1 = last.1.max(e);
                last.2 += b;
            }
            _ => merged.push((s, e, b)),
        }
    }
    let mut gaps = Vec::new();
    let mut at = start;
    for &(s, e, _) in &merged {
        if s > at + ABUT {
            gaps.push(Gap {
                start: rfc3339(at),
                end: rfc3339(s),
            });
        }
        at = at.max(e);
    }
    if end > at + ABUT {
        gaps.push(Gap {
            start: rfc3339(at),
            end: rfc3339(end),
        });
    }
    Timeline {
        path: path.to_owned(),
        start: rfc3339(start),
        end: rfc3339(end),
        spans: merged
            .into_iter()
            .map(|(s, e, bytes)| Span {
                start: rfc3339(s),
                end: rfc3339(e),
                bytes,
            })
            .collect(),
        gaps,
    }
}

/// A segment file under the record directory (index paths never leave it).
fn file_of(inner: &Inner, rec: &SegmentRecord) -> Result<PathBuf, Response> {
    let rel = Path::new(&rec.path);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the index names a file outside the record directory: {:?}",
                rec.path
            ),
        ));
    }
    Ok(inner.dir.join(rel))
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros().min(u128::from(u64::MAX)) as u64)
}

/// An export, ready to serve: the file and what its pieces read.
struct Built {
    export: Export,
    files: Vec<PathBuf>,
    etag: String,
    _holds: Vec<Hold>,
}

/// Builds the export of `[start, end)`: the segments of the first one's init from the
/// keyframe part at or before `start` (a later init ends the export: one file, one set
/// of codec parameters).
fn build_export(
    inner: &Inner,
    path: &str,
    start: SystemTime,
    end: SystemTime,
) -> Result<Built, Response> {
    let segments = inner.index.segments(path, start, end).map_err(internal)?;
    let Some(first) = segments.first() else {
        return Err(problem(
            StatusCode::NOT_FOUND,
            "nothing recorded in the range",
        ));
    };
    let init_id = first.init_id;
    let mut holds = Vec::new();
    let mut files = Vec::new();
    let mut builder: Option<ExportBuilder> = None;
    let mut hasher = Sha256::new();
    hasher.update(path.as_bytes());
    hasher.update(micros(start).to_be_bytes());
    hasher.update(micros(end).to_be_bytes());
    for rec in segments.iter().take_while(|s| s.init_id == init_id) {
        holds.push(inner.index.hold(path, rec.start_wall));
        let file_path = file_of(inner, rec)?;
        let mut f = std::fs::File::open(&file_path)
            .map_err(|e| internal(format!("{}: {e}", file_path.display())))?;
        hasher.update(rec.path.as_bytes());
        hasher.update(rec.bytes.to_be_bytes());
        // From the keyframe part at or before `start` to the last part starting before `end`.
        let from = rec
            .parts
            .iter()
            .rposition(|p| p.keyframe && p.wall_start <= start)
            .unwrap_or(0);
        let file_no = files.len();
        for p in rec.parts.iter().skip(from) {
            if p.wall_start >= end {
                break;
            }
            if builder.is_none() {
                let init_len = rec.parts.first().map_or(0, |p| p.offset);
                let init = read_at(&mut f, 0, init_len).map_err(internal)?;
                builder = Some(ExportBuilder::new(&init, start, end).map_err(internal)?);
            }
            let header = read_header(&mut f, p.offset, p.len)
                .map_err(|e| internal(format!("{}: {e}", file_path.display())))?;
            if let Some(b) = builder.as_mut() {
                b.push_part(file_no, rec.zero_wall(), p.offset, &header)
                    .map_err(|e| internal(format!("{}: {e}", file_path.display())))?;
            }
        }
        files.push(file_path);
    }
    let export = builder
        .ok_or_else(|| problem(StatusCode::NOT_FOUND, "nothing recorded in the range"))?
        .finish()
        .map_err(|e| problem(StatusCode::NOT_FOUND, e.to_string()))?;
    let digest = hasher.finalize();
    let etag = format!(
        "\"{}\"",
        digest
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    Ok(Built {
        export,
        files,
        etag,
        _holds: holds,
    })
}

fn read_at(f: &mut std::fs::File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    if len > 64 << 20 {
        return Err(std::io::Error::other("a header of more than 64 MiB"));
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len as usize];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// A part's header (`prft` + `moof`), read in as few reads as its size allows.
fn read_header(f: &mut std::fs::File, offset: u64, part_len: u64) -> std::io::Result<Vec<u8>> {
    let mut want = part_len.min(16 << 10);
    loop {
        let buf = read_at(f, offset, want)?;
        match part_header_len(&buf) {
            Ok(Some(n)) if n <= buf.len() => return Ok(buf[..n].to_vec()),
            Ok(Some(n)) if (n as u64) <= part_len => want = n as u64,
            Ok(None) if want < part_len => want = (want * 4).min(part_len),
            Ok(_) => return Err(std::io::Error::other("part header runs past the part")),
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        }
    }
}

/// A single byte range of `Range: bytes=…` over `len` bytes: `Ok(None)` for none (or one
/// this server answers whole: several ranges), `Err` for an unsatisfiable one (416).
fn byte_range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len)
    } else {
        let a: u64 = a.parse().map_err(|_| ())?;
        let b = if b.is_empty() {
            len
        } else {
            b.parse::<u64>().map_err(|_| ())?.saturating_add(1).min(len)
        };
        (a, b)
    };
    if range.0 >= len || range.0 >= range.1 {
        return Err(());
    }
    Ok(Some(range))
}

/// What a body reads, chunk by chunk: head bytes, or file ranges.
enum Source {
    Head(Arc<Vec<u8>>, std::ops::Range<usize>),
    File(PathBuf, u64, u64),
}

/// The answer for a file of `len` bytes made of `slices(from, to)`: 200 or 206 with the
/// headers of a seekable download; the body streams the slices (HEAD: none).
fn ranged(
    method: &Method,
    headers: &HeaderMap,
    len: u64,
    etag: &str,
    content_type: &'static str,
    slices: impl FnOnce(u64, u64) -> Vec<Source>,
    keep: impl Send + 'static,
) -> Response {
    let range = match byte_range(headers, len) {
        Ok(r) => r,
        Err(()) => {
            let mut r = problem(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "the range is outside the file",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if range.is_none() && if_none_match == Some(etag) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(v) = HeaderValue::from_str(etag) {
            r.headers_mut().insert(header::ETAG, v);
        }
        return r;
    }
    let (from, to, status) = match range {
        Some((a, b)) => (a, b, StatusCode::PARTIAL_CONTENT),
        None => (0, len, StatusCode::OK),
    };
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        let sources = slices(from, to);
        let stream = futures_util::stream::unfold(
            (sources.into_iter(), None::<(tokio::fs::File, u64)>, keep),
            |(mut it, mut open, keep)| async move {
                loop {
                    if let Some((mut f, left)) = open.take() {
                        if left > 0 {
                            let n = (left as usize).min(CHUNK);
                            let mut buf = vec![0; n];
                            return match f.read_exact(&mut buf).await {
                                Ok(_) => Some((
                                    Ok::<_, std::io::Error>(bytes::Bytes::from(buf)),
                                    (it, Some((f, left - n as u64)), keep),
                                )),
                                Err(e) => Some((Err(e), (it, None, keep))),
                            };
                        }
                    }
                    match it.next()? {
                        Source::Head(h, r) => {
                            let b = bytes::Bytes::copy_from_slice(h.get(r).unwrap_or_default());
                            return Some((Ok(b), (it, None, keep)));
                        }
                        Source::File(p, offset, len) => {
                            let opened = async {
                                let mut f = tokio::fs::File::open(&p).await?;
                                f.seek(std::io::SeekFrom::Start(offset)).await?;
                                Ok::<_, std::io::Error>(f)
                            }
                            .await;
                            match opened {
                                Ok(f) => open = Some((f, len)),
                                Err(e) => return Some((Err(e), (it, None, keep))),
                            }
                        }
                    }
                }
            },
        );
        Body::from_stream(stream)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(to - from));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {from}-{}/{len}", to - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    r
}

/// A progressive MP4 of a path's recordings in a range, seekable (byte ranges).
#[utoipa::path(
    get,
    path = "/v1/recordings/export.mp4",
    tag = "recordings",
    params(RangeQuery),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The MP4 (moov first)", content_type = "video/mp4"),
        (status = 206, description = "A byte range of it", content_type = "video/mp4"),
        (status = 304, description = "Unchanged (If-None-Match)"),
        (status = 400, description = "A bad time or range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No playback permission on the path", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Nothing recorded in the range", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The byte range is outside the file", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn export(
    State(inner): State<Arc<Inner>>,
    Extension(auth): Extension<HttpAuth>,
    Extension(peer): Extension<Peer>,
    method: Method,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    let path = q.path.clone();
    let built = in_range(inner, &auth, peer, &headers, q, build_export).await;
    let built = match built {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Built {
        export,
        files,
        etag,
        _holds,
    } = built;
    info!(%path, bytes = export.len, seconds = export.duration.as_secs_f64(), "recording export");
    let head = Arc::new(export.head.clone());
    let len = export.len;
    ranged(
        &method,
        &headers,
        len,
        &etag,
        "video/mp4",
        |from, to| {
            export
                .slices(from, to)
                .into_iter()
                .filter_map(|s| match s {
                    Ok(r) => Some(Source::Head(head.clone(), r)),
                    Err(Piece { file, offset, len }) => files
                        .get(file)
                        .map(|p| Source::File(p.clone(), offset, len)),
                })
                .collect()
        },
        _holds,
    )
}

/// An HLS VOD of a path's recordings in a range: byte ranges into the segment files.
#[utoipa::path(
    get,
    path = "/v1/recordings/index.m3u8",
    tag = "recordings",
    params(RangeQuery),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The media playlist", content_type = "application/vnd.apple.mpegurl"),
        (status = 400, description = "A bad time or range", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No playback permission on the path", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Nothing recorded in the range", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn vod(
    State(inner): State<Arc<Inner>>,
    Extension(auth): Extension<HttpAuth>,
    Extension(peer): Extension<Peer>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    let answer = in_range(
        inner,
        &auth,
        peer,
        &headers,
        q,
        |inner, path, start, end| {
            let segments = inner.index.segments(path, start, end).map_err(internal)?;
            let parts = vod_parts(path, &segments, start, end);
            if parts.is_empty() {
                return Err(problem(
                    StatusCode::NOT_FOUND,
                    "nothing recorded in the range",
                ));
            }
            Ok(vod_playlist(&parts))
        },
    )
    .await;
    match answer {
        Ok(text) => (
            [
                (header::CONTENT_TYPE, "application/vnd.apple.mpegurl"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            text,
        )
            .into_response(),
        Err(r) => r,
    }
}

fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Whether `next` continues `prev` without a break a player must be told of: the same init
/// (codec parameters), no gap in wall time, and decode times going on from where `prev`'s
/// ended (a segment the writer cut on duration; a restarted recorder starts a new timeline,
/// so the first segment after a crash or a restart is a discontinuity even when it abuts).
fn continues(prev: &SegmentRecord, next: &SegmentRecord) -> bool {
    let apart = |a: Duration, b: Duration| a.max(b) - a.min(b);
    let wall_gap = match next.start_wall.duration_since(prev.end_wall) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    prev.init_id == next.init_id
        && wall_gap <= ABUT
        && apart(
            prev.media_base.saturating_add(prev.media_end),
            next.media_base,
        ) <= CONTINUES
}

/// The VOD's media segments: per file, runs of parts from a keyframe part to the next,
/// within `[start, end)` (from the keyframe part at or before `start`). A file with the
/// same init as the file before shares its `EXT-X-MAP`; a discontinuity precedes a file
/// that does not [continue](continues) the one before.
fn vod_parts(
    path: &str,
    segments: &[SegmentRecord],
    start: SystemTime,
    end: SystemTime,
) -> Vec<VodPart> {
    let mut out: Vec<VodPart> = Vec::new();
    // The last file that gave parts, and the map its parts use.
    let mut prev: Option<(&SegmentRecord, (String, u64))> = None;
    for rec in segments {
        let uri = format!(
            "segment.mp4?path={}&segment={}",
            query_escape(path),
            micros(rec.start_wall)
        );
        let init_len = rec.parts.first().map_or(0, |p| p.offset);
        let (discontinuity, init) = match &prev {
            Some((p, map)) if p.init_id == rec.init_id && map.1 == init_len => {
                (!continues(p, rec), map.clone())
            }
            Some(_) => (true, (uri.clone(), init_len)),
            None => (false, (uri.clone(), init_len)),
        };
        let from = rec
            .parts
            .iter()
            .rposition(|p| p.keyframe && p.wall_start <= start)
            .unwrap_or(0);
        let mut new_file = true;
        for p in rec.parts.iter().skip(from) {
            if p.wall_start >= end {
                break;
            }
            let duration = p.media_end.saturating_sub(p.media_start);
            let extend = !new_file && !p.keyframe;
            match out.last_mut() {
                Some(last) if extend && last.offset + last.len == p.offset => {
                    last.len += p.len;
                    last.duration += duration;
                }
                _ => out.push(VodPart {
                    uri: uri.clone(),
                    offset: p.offset,
                    len: p.len,
                    duration,
                    wall: p.wall_start,
                    init: init.clone(),
                    discontinuity: new_file && discontinuity,
                }),
            }
            new_file = false;
        }
        if !new_file {
            prev = Some((rec, init));
        }
    }
    out
}

/// One segment file of a path (what the VOD playlist's byte ranges point into).
#[utoipa::path(
    get,
    path = "/v1/recordings/segment.mp4",
    tag = "recordings",
    params(SegmentQuery),
    security((), ("basic" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The segment file (fMP4)", content_type = "video/mp4"),
        (status = 206, description = "A byte range of it", content_type = "video/mp4"),
        (status = 400, description = "A missing or malformed query parameter", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No playback permission on the path", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such segment", body = Problem, content_type = "application/problem+json"),
        (status = 416, description = "The byte range is outside the file", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn segment(
    State(inner): State<Arc<Inner>>,
    Extension(auth): Extension<HttpAuth>,
    Extension(peer): Extension<Peer>,
    method: Method,
    headers: HeaderMap,
    Query(q): Query<SegmentQuery>,
) -> Response {
    if let Err(r) = permit(&auth, peer, &headers, &q.path) {
        return r;
    }
    let found = blocking(move || {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(q.segment);
        let rec = inner
            .index
            .get(&q.path, at)
            .map_err(internal)?
            .ok_or_else(|| problem(StatusCode::NOT_FOUND, "no such segment"))?;
        let hold = inner.index.hold(&q.path, rec.start_wall);
        let file = file_of(&inner, &rec)?;
        // Complete parts only: an open segment's file may grow past its last indexed part.
        let len = rec.parts.last().map_or(rec.bytes, |p| p.offset + p.len);
        let etag = format!("\"{:x}-{len:x}\"", q.segment);
        Ok((file, len, etag, hold))
    })
    .await;
    let (file, len, etag, hold) = match found {
        Ok(f) => f,
        Err(r) => return r,
    };
    ranged(
        &method,
        &headers,
        len,
        &etag,
        "video/mp4",
        |from, to| vec![Source::File(file, from, to - from)],
        hold,
    )
}

#[cfg(test)]
mod tests;

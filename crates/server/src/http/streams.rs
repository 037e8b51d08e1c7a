//! Routes under a stream's name: `/<path>/index.m3u8` (HLS), `/<path>/whep` (WebRTC),
//! `/<path>/` (the player page) and whatever else a module serves per stream.
//!
//! Path names may hold `/` (`cams/front`), so such URLs cannot be axum routes. A module
//! registers a [`Marker`] instead: the segment (or file extension) where its part of the
//! URL begins. The listener splits an otherwise unmatched URL at the rightmost marker into
//! the stream's name and the module's tail, checks the client's `read` or `publish`
//! permission on that name exactly as RTSP does, and hands the module's router a request
//! for the tail alone, with a [`StreamTarget`] extension naming the stream and the user.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;

use super::access::{Access, Peer, Verdict};
use super::problem::Problem;
use crate::auth::Action;
use crate::config::is_reserved_path;

/// Where a module's part of a stream URL begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// A segment equal to this word (`whep`): the tail is that segment and all after it
    /// (`/whep`, `/whep/<session>`).
    Segment(&'static str),
    /// A last segment ending in `.` + one of these extensions (`m3u8`, `mp4`): the tail is
    /// that last segment (`/index.m3u8`).
    Extension(&'static [&'static str]),
    /// A URL ending in `/` (`/cams/front/`): the tail is `/`.
    Index,
}

/// What a per-stream route needs: the action to check for a request's method and tail,
/// or `None` when the route does its own checks (a session resource whose URL is its
/// secret, a CORS preflight).
pub type NeedFn = fn(&Method, &str) -> Option<Action>;

/// The stream a per-stream request is for, and who asked (an extension of the request
/// the module's router receives).
#[derive(Debug, Clone)]
pub struct StreamTarget {
    /// The path name (`cams/front`), without leading or trailing `/`.
    pub path: String,
    /// The user the permission was granted to (`any` when none was needed).
    pub user: String,
    /// The client.
    pub peer: Peer,
}

/// The access policy as modules may ask it: who a request's client is and what they may
/// do on a path (an extension of every request the listener serves).
#[derive(Clone)]
pub struct HttpAuth(pub(crate) Arc<Access>);

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpAuth")
    }
}

impl HttpAuth {
    /// Checks `action` on `path` for the client and its `Authorization` header: the user
    /// it is granted to, or the 401 (with Basic and Bearer challenges) or 403 to answer.
    pub fn check(
        &self,
        action: Action,
        path: &str,
        peer: Peer,
        authorization: Option<&str>,
    ) -> Result<String, Response> {
        match self.0.judge(action, Some(path), peer, authorization) {
            (Verdict::Allow, user) => Ok(user),
            (refused, _) => Err(self.0.refusal(refused)),
        }
    }

    /// Who the client is, checking its credentials but no permission: `Ok(None)` for an
    /// anonymous client (no `Authorization`), `Ok(Some(user))` for credentials that hold,
    /// else the 401 (with Basic and Bearer challenges) or 403 to answer. For pages that
    /// show each user what they may see (the player page's list of paths).
    pub fn identify(
        &self,
        peer: Peer,
        authorization: Option<&str>,
    ) -> Result<Option<String>, Response> {
        self.0
            .identify(peer, authorization)
            .map_err(|v| self.0.refusal(v))
    }

    /// A 401 problem carrying the Basic and Bearer challenges, so that a browser asks
    /// for credentials.
    pub fn unauthorized(&self, why: String) -> Response {
        self.0.refusal(Verdict::Unauthorized(why))
    }

    /// Whether no `[[users]]` are configured: then every client may read every path and
    /// nobody is asked for credentials.
    pub fn is_open(&self) -> bool {
        self.0.is_open()
    }

    /// Whether `user` may do `action` on `path` from the client's address (no
    /// credentials checked: `user` comes from an earlier [`HttpAuth::check`]).
    pub fn may(&self, user: &str, action: Action, path: &str, peer: Peer) -> bool {
        self.0.may_on(user, action, path, peer.addr.ip())
    }
}

struct Entry {
    marker: Marker,
    need: NeedFn,
    router: Router,
}

/// The per-stream routes of all modules, tried in registration order.
#[derive(Clone, Default)]
pub(crate) struct StreamRoutes {
    entries: Arc<Vec<Entry>>,
}

impl StreamRoutes {
    pub(crate) fn new(entries: Vec<(Marker, NeedFn, Router)>) -> StreamRoutes {
        StreamRoutes {
            entries: Arc::new(
                entries
                    .into_iter()
                    .map(|(marker, need, router)| Entry {
                        marker,
                        need,
                        router,
                    })
                    .collect(),
            ),
        }
    }
}

/// Splits a URL path (`/cams/front/whep/abc`) at `marker` into the stream's name
/// (`cams/front`) and the tail (`/whep/abc`).
pub(crate) fn split(marker: Marker, path: &str) -> Option<(&str, &str)> {
    let inner = path.strip_prefix('/')?;
    let (name, tail) = match marker {
        Marker::Index => (inner.strip_suffix('/')?, "/"),
        Marker::Extension(exts) => {
            let cut = inner.rfind('/')?;
            let last = &inner[cut + 1..];
            let (_, ext) = last.rsplit_once('.')?;
            if !exts.contains(&ext) {
                return None;
            }
            (&inner[..cut], &path[cut + 1..])
        }
        Marker::Segment(word) => {
            // The rightmost `/<word>` followed by `/` or the end, with a name before it.
            let mut at = None;
            let mut search = inner;
            let mut offset = 0;
            while let Some(i) = search.find('/') {
                let seg_start = offset + i + 1;
                let rest = &inner[seg_start..];
                let seg = rest.split('/').next().unwrap_or("");
                if seg == word {
                    at = Some(seg_start);
                }
                offset = seg_start;
                search = &inner[seg_start..];
            }
            let at = at?;
            (&inner[..at - 1], &path[at..])
        }
    };
    if name.is_empty()
        || name.starts_with('/')
        || name.ends_with('/')
        || name.contains("//")
        || is_reserved_path(name)
    {
        return None;
    }
    Some((name, tail))
}

/// The listener's fallback: a per-stream route if one claims the URL, else 404.
pub(crate) async fn dispatch(
    axum::extract::State(routes): axum::extract::State<StreamRoutes>,
    mut req: Request<Body>,
) -> Response {
    let path = req.uri().path().to_owned();
    let Some((entry, name, tail)) = routes.entries.iter().find_map(|e| {
        let (name, tail) = split(e.marker, &path)?;
        Some((e, name.to_owned(), tail.to_owned()))
    }) else {
        return super::problem::not_found(req).await.into_response();
    };
    let Some(peer) = req.extensions().get::<Peer>().copied() else {
        return Problem::new(StatusCode::FORBIDDEN, "unknown client address").into_response();
    };
    let user = match (entry.need)(req.method(), &tail) {
        None => "any".to_owned(),
        Some(action) => {
            let Some(auth) = req.extensions().get::<HttpAuth>().cloned() else {
                return Problem::new(StatusCode::FORBIDDEN, "no access policy").into_response();
            };
            let authorization = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            match auth.check(action, &name, peer, authorization) {
                Ok(user) => user,
                Err(res) => return res,
            }
        }
    };
    let uri = match req.uri().query() {
        Some(q) => format!("{tail}?{q}"),
        None => tail,
    };
    match uri.parse::<Uri>() {
        Ok(uri) => *req.uri_mut() = uri,
        Err(_) => return Problem::new(StatusCode::BAD_REQUEST, "bad URL").into_response(),
    }
    req.extensions_mut().insert(StreamTarget {
        path: name,
        user,
        peer,
    });
    match entry.router.clone().oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_at_the_rightmost_marker() {
        let whep = Marker::Segment("whep");
        assert_eq!(split(whep, "/cam/whep"), Some(("cam", "/whep")));
        assert_eq!(
            split(whep, "/cams/front/whep/abc"),
            Some(("cams/front", "/whep/abc"))
        );
        assert_eq!(split(whep, "/a/whep/b/whep"), Some(("a/whep/b", "/whep")));
        assert_eq!(split(whep, "/whep"), None);
        assert_eq!(split(whep, "/cam/whepx"), None);
        let hls = Marker::Extension(&["m3u8", "mp4"]);
        assert_eq!(
            split(hls, "/cams/front/index.m3u8"),
            Some(("cams/front", "/index.m3u8"))
        );
        assert_eq!(split(hls, "/index.m3u8"), None);
        assert_eq!(split(hls, "/cam/x.ts"), None);
        assert_eq!(
            split(Marker::Index, "/cams/front/"),
            Some(("cams/front", "/"))
        );
        assert_eq!(split(Marker::Index, "/"), None);
        assert_eq!(split(Marker::Index, "/v1/"), None);
        assert_eq!(split(Marker::Index, "/a//"), None);
    }
}

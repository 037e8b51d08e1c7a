//! Who may use the HTTP listener.
//!
//! - `/openapi.json`, `/v1/health` and `/v1/ready` are public (probes and tooling).
//! - `/v1/…` reads (`GET`, `HEAD`) need the action `api` (or `api_write`); other methods
//!   need `api_write`. `/metrics` needs `metrics`.
//! - Routes contributed by other modules (HLS, WHEP, …) do their own checks, and so do
//!   the recordings' playback routes (`/v1/recordings/timeline`, `export.mp4`,
//!   `index.m3u8`, `segment.mp4`: `playback` on the asked path).
//!
//! With no `[[users]]` configured, loopback clients may do everything, other addresses
//! may read the API and the metrics (as they may read every stream) but get 401 on
//! writes. With users, every client is checked like on RTSP: the anonymous user `any`
//! grants what it lists, others authenticate with Basic (`user:password`) or Bearer (a
//! token of `[[http.tokens]]`, stored as `sha256:<hex>`). Over plain HTTP, credentials
//! from a non-loopback address are only accepted with `auth.allow_basic_without_tls`
//! (they would cross the network in clear). Failed logins count towards
//! `auth.max_failures` like RTSP's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::problem::Problem;
use crate::auth::{Action, Authenticator};
use crate::config::{parse_token_hash, Config};

/// The client of a request, inserted by the listener for each connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether the connection is HTTPS.
    pub tls: bool,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Nothing,
    Action(Action),
}

fn need(method: &Method, path: &str) -> Need {
    match path {
        "/openapi.json" | "/v1/health" | "/v1/ready" => Need::Nothing,
        // Recordings played back: `playback` on the asked path, checked by their module.
        "/v1/recordings/timeline"
        | "/v1/recordings/export.mp4"
        | "/v1/recordings/index.m3u8"
        | "/v1/recordings/segment.mp4" => Need::Nothing,
        "/metrics" => Need::Action(Action::Metrics),
        p if p == "/v1" || p.starts_with("/v1/") => {
            if *method == Method::GET || *method == Method::HEAD {
                Need::Action(Action::Api)
            } else {
                Need::Action(Action::ApiWrite)
            }
        }
        _ => Need::Nothing,
    }
}

/// The access policy: the users (shared with RTSP) and the API tokens.
pub(crate) struct Access {
    auth: Arc<Authenticator>,
    realm: String,
    allow_clear_credentials: bool,
    tokens: Vec<([u8; 32], String)>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// Whether `ip` is this host (an IPv4-mapped loopback included).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The outcome for one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// 401: no or wrong credentials.
    Unauthorized(String),
    /// 403: known but not permitted.
    Forbidden(String),
}

impl Access {
    pub(crate) fn new(config: &Config, auth: Arc<Authenticator>) -> Access {
        let tokens = config
            .http
            .tokens
            .iter()
            .filter_map(|t| Some((parse_token_hash(&t.hash).ok()?, t.user.clone())))
            .collect();
        Access {
            auth,
            realm: config.auth.realm.clone(),
            allow_clear_credentials: config.auth.allow_basic_without_tls,
            tokens,
        }
    }

    /// The user a Bearer token stands for: every configured hash is compared (in
    /// constant time) so the answer's timing does not tell which one matched.
    fn token_user(&self, token: &str) -> Option<&str> {
        let got: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, user) in &self.tokens {
            if bool::from(hash.ct_eq(&got)) {
                found = Some(user.as_str());
            }
        }
        found
    }

    fn permits(&self, user: &str, action: Action, path: Option<&str>, ip: IpAddr) -> bool {
        match path {
            Some(path) => self.auth.user_may_on(user, action, path, ip),
            None => {
                self.auth.user_may(user, action, ip)
                    || (action == Action::Api && self.auth.user_may(user, Action::ApiWrite, ip))
            }
        }
    }

    /// Whether `user` (already identified) may do `action` on `path` from `ip`.
    pub(crate) fn may_on(&self, user: &str, action: Action, path: &str, ip: IpAddr) -> bool {
        self.permits(user, action, Some(path), ip)
    }

    fn decide(&self, action: Action, peer: Peer, authorization: Option<&str>) -> Verdict {
        self.judge(action, None, peer, authorization).0
    }

    /// The verdict for `action` (on `path` for `read`/`publish`) and the user it was
    /// decided for (`any` when no credentials were needed or given).
    pub(crate) fn judge(
        &self,
        action: Action,
        path: Option<&str>,
        peer: Peer,
        authorization: Option<&str>,
    ) -> (Verdict, String) {
        let any = || "any".to_owned();
        let ip = peer.addr.ip();
        let loopback = is_loopback(ip);
        if self.auth.is_open() {
            return if loopback || action != Action::ApiWrite {
                (Verdict::Allow, any())
            } else {
                (
                    Verdict::Unauthorized(format!(
                        "API writes from {ip} need a user with api_write ([[users]])"
                    )),
                    any(),
                )
            };
        }
        if self.permits("any", action, path, ip) {
            return (Verdict::Allow, any());
        }
        let user = match self.identify(peer, authorization) {
            Ok(Some(user)) => user,
            Ok(None) => {
                let what = path.map_or(String::new(), |p| format!(" {p:?}"));
                return (
                    Verdict::Unauthorized(format!("{action}{what} needs credentials")),
                    any(),
                );
            }
            Err(verdict) => return (verdict, any()),
        };
        if self.permits(&user, action, path, ip) {
            (Verdict::Allow, user)
        } else {
            let what = path.map_or(String::new(), |p| format!(" {p:?}"));
            let why = format!("user {user:?} may not {action}{what} from {ip}");
            (Verdict::Forbidden(why), user)
        }
    }

    /// The user an `Authorization` header's credentials (Basic or Bearer) stand for, or
    /// the verdict to answer: 403 while `peer` is refused for failed logins, 401 for
    /// wrong credentials (counted like RTSP's).
    fn authenticate(&self, peer: Peer, value: &str) -> Result<String, Verdict> {
        let ip = peer.addr.ip();
        let now = Instant::now();
        if self.auth.is_refusing(ip, now) {
            return Err(Verdict::Forbidden(format!(
                "too many failed logins from {ip}"
            )));
        }
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        let user = if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            match decoded.as_deref().and_then(|s| s.split_once(':')) {
                Some((u, p)) if self.auth.verify_password(u, p) => Some(u.to_owned()),
                Some((u, _)) => {
                    self.auth.login_failed(ip, u, now);
                    None
                }
                None => {
                    self.auth.login_failed(ip, "?", now);
                    None
                }
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let user = self.token_user(rest.trim()).map(str::to_owned);
            if user.is_none() {
                self.auth.login_failed(ip, "(token)", now);
            }
            user
        } else {
            None
        };
        user.ok_or_else(|| Verdict::Unauthorized("wrong credentials".into()))
    }

    /// Who a client is, without checking a permission: `None` for an anonymous client
    /// (no `Authorization`), the authenticated user, or the verdict (401/403) for
    /// credentials that do not hold or may not be used (clear text from afar).
    pub(crate) fn identify(
        &self,
        peer: Peer,
        authorization: Option<&str>,
    ) -> Result<Option<String>, Verdict> {
        let Some(value) = authorization else {
            return Ok(None);
        };
        let ip = peer.addr.ip();
        if !peer.tls && !is_loopback(ip) && !self.allow_clear_credentials {
            return Err(Verdict::Unauthorized(
                "credentials are only accepted over HTTPS (or with auth.allow_basic_without_tls)"
                    .into(),
            ));
        }
        self.authenticate(peer, value).map(Some)
    }

    /// Whether no `[[users]]` are configured (everyone may read every path).
    pub(crate) fn is_open(&self) -> bool {
        self.auth.is_open()
    }

    pub(crate) fn anonymous_may(&self, method: &Method, path: &str) -> bool {
        match need(method, path) {
            Need::Nothing => true,
            Need::Action(action) => {
                self.auth.is_open()
                    || self.permits("any", action, None, IpAddr::from([127, 0, 0, 1]))
            }
        }
    }

    /// The answer to a verdict that refuses: 403, or 401 carrying the Basic and Bearer
    /// challenges (so that a browser asks for credentials); `Allow` cannot be refused and
    /// gets a 401 too.
    pub(crate) fn refusal(&self, verdict: Verdict) -> Response {
        let why = match verdict {
            Verdict::Forbidden(why) => {
                return Problem::new(StatusCode::FORBIDDEN, why).into_response()
            }
            Verdict::Unauthorized(why) => why,
            Verdict::Allow => "credentials needed".into(),
        };
        let mut res = Problem::new(StatusCode::UNAUTHORIZED, why).into_response();
        for v in self.challenge() {
            res.headers_mut().append(header::WWW_AUTHENTICATE, v);
        }
        res
    }

    fn challenge(&self) -> [HeaderValue; 2] {
        let realm = self.realm.replace(['"', '\\'], "");
        [
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
                .unwrap_or(HeaderValue::from_static("Basic")),
            HeaderValue::from_str(&format!("Bearer realm=\"{realm}\""))
                .unwrap_or(HeaderValue::from_static("Bearer")),
        ]
    }
}

/// Middleware: applies the policy; 401 answers carry `WWW-Authenticate` for Basic and
/// Bearer.
pub(crate) async fn check(
    State(access): State<Arc<Access>>,
    mut req: Request<Body>,
    next: Next,
) -> Response {
    req.extensions_mut()
        .insert(super::streams::HttpAuth(access.clone()));
    let Need::Action(action) = need(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let Some(peer) = req.extensions().get::<Peer>().copied() else {
        return Problem::new(StatusCode::FORBIDDEN, "unknown client address").into_response();
    };
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match access.decide(action, peer, authorization) {
        Verdict::Allow => next.run(req).await,
        refused => access.refusal(refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(toml: &str) -> Access {
        let c = Config::from_toml(toml).unwrap();
        let auth = Arc::new(Authenticator::new(&c.users, c.auth.clone()).unwrap());
        Access::new(&c, auth)
    }

    fn peer(ip: [u8; 4], tls: bool) -> Peer {
        Peer {
            addr: SocketAddr::from((ip, 40000)),
            tls,
        }
    }

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    #[test]
    fn requests_need_what_their_route_says() {
        assert_eq!(need(&Method::GET, "/v1/health"), Need::Nothing);
        assert_eq!(need(&Method::GET, "/openapi.json"), Need::Nothing);
        assert_eq!(need(&Method::GET, "/v1/info"), Need::Action(Action::Api));
        assert_eq!(
            need(&Method::POST, "/v1/info"),
            Need::Action(Action::ApiWrite)
        );
        assert_eq!(
            need(&Method::GET, "/metrics"),
            Need::Action(Action::Metrics)
        );
        assert_eq!(need(&Method::GET, "/cam/index.m3u8"), Need::Nothing);
        // Recordings played back: `playback` on the path, checked by their module.
        for r in [
            "/v1/recordings/timeline",
            "/v1/recordings/export.mp4",
            "/v1/recordings/index.m3u8",
            "/v1/recordings/segment.mp4",
        ] {
            assert_eq!(need(&Method::GET, r), Need::Nothing, "{r}");
        }
        assert_eq!(
            need(&Method::GET, "/v1/recordings"),
            Need::Action(Action::Api)
        );
    }

    #[test]
    fn loopback_includes_ipv6_and_mapped_addresses() {
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.1.2.3".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn without_users_loopback_may_all_and_others_may_read() {
        let a = access("");
        let lo = peer([127, 0, 0, 1], false);
        let far = peer([10, 0, 0, 9], false);
        assert_eq!(a.decide(Action::ApiWrite, lo, None), Verdict::Allow);
        assert_eq!(a.decide(Action::Api, far, None), Verdict::Allow);
        assert_eq!(a.decide(Action::Metrics, far, None), Verdict::Allow);
        assert!(matches!(
            a.decide(Action::ApiWrite, far, None),
            Verdict::Unauthorized(_)
        ));
    }

    #[test]
    fn users_basic_and_bearer() {
        // sha256("s3cret-token")
        let hash = format!("{:x}", Sha256::digest(b"s3cret-token"))
            .chars()
            .collect::<String>();
        let a = access(&format!(
            r#"
            [[users]]
            user = "ops"
            pass = "pw"
            permissions = [{{ action = "api_write" }}, {{ action = "metrics" }}]
            [[users]]
            user = "viewer"
            pass = "pw2"
            permissions = [{{ action = "api" }}]
            [[http.tokens]]
            user = "viewer"
            hash = "sha256:{hash}"
            "#
        ));
        let lo = peer([127, 0, 0, 1], false);
        assert!(matches!(
            a.decide(Action::Api, lo, None),
            Verdict::Unauthorized(_)
        ));
        assert_eq!(
            a.decide(Action::ApiWrite, lo, Some(&basic("ops", "pw"))),
            Verdict::Allow
        );
        assert_eq!(
            a.decide(Action::Api, lo, Some(&basic("ops", "pw"))),
            Verdict::Allow
        );
        assert_eq!(
            a.decide(Action::Api, lo, Some(&basic("viewer", "pw2"))),
            Verdict::Allow
        );
        assert!(matches!(
            a.decide(Action::ApiWrite, lo, Some(&basic("viewer", "pw2"))),
            Verdict::Forbidden(_)
        ));
        assert!(matches!(
            a.decide(Action::Metrics, lo, Some(&basic("viewer", "pw2"))),
            Verdict::Forbidden(_)
        ));
        assert!(matches!(
            a.decide(Action::Api, lo, Some(&basic("ops", "nope"))),
            Verdict::Unauthorized(_)
        ));
        assert_eq!(
            a.decide(Action::Api, lo, Some("Bearer s3cret-token")),
            Verdict::Allow
        );
        assert!(matches!(
            a.decide(Action::ApiWrite, lo, Some("Bearer s3cret-token")),
            Verdict::Forbidden(_)
        ));
        assert!(matches!(
            a.decide(Action::Api, lo, Some("Bearer wrong")),
            Verdict::Unauthorized(_)
        ));
        // Credentials in clear from another host are refused; over TLS they work.
        assert!(matches!(
            a.decide(
                Action::Api,
                peer([10, 0, 0, 9], false),
                Some(&basic("ops", "pw"))
            ),
            Verdict::Unauthorized(_)
        ));
        assert_eq!(
            a.decide(
                Action::Api,
                peer([10, 0, 0, 9], true),
                Some(&basic("ops", "pw"))
            ),
            Verdict::Allow
        );
    }
}

//! The authorization webhook: an HTTP endpoint, kept by a deployment that manages its
//! users elsewhere, that decides whether a user may read or publish a path.
//!
//! For each RTSP request that needs a permission, Sluice POSTs JSON
//! `{"user", "password", "ip", "action", "path", "protocol"}` (user and password from the
//! client's Basic credentials, empty when it sent none). A 2xx answer allows; 401 or 403
//! refuses; anything else, or no answer within the timeout, counts as the configured
//! failure mode (closed: refuse; open: allow). Answers are cached for `cache_ttl` per
//! user, password, address, action and path, so a player's DESCRIBE, SETUP and PLAY
//! cost one call.
//!
//! The RTSP connection asks synchronously (its state machine is sans-IO and its
//! authenticator a plain function): the call runs on the connection's runtime worker
//! with `block_in_place`, which hands the worker's other tasks to another thread for
//! that long, and is bounded by the timeout.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

/// `[auth.webhook]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthWebhookConfig {
    /// The endpoint (`http://` or `https://`).
    pub url: String,
    /// How long an answer may take.
    #[serde(
        default = "default_timeout",
        deserialize_with = "crate::config::de_duration"
    )]
    pub timeout: Duration,
    /// What an error or a timeout means: `closed` (refuse, the default) or `open` (allow).
    #[serde(default)]
    pub fail: FailMode,
    /// How long an answer is reused for the same question.
    #[serde(
        default = "default_ttl",
        deserialize_with = "crate::config::de_duration"
    )]
    pub cache_ttl: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_ttl() -> Duration {
    Duration::from_secs(30)
}

/// What an unanswered question means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Refuse.
    #[default]
    Closed,
    /// Allow.
    Open,
}

/// One question to the webhook.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    /// The user (empty: anonymous).
    pub user: &'a str,
    /// Its password (empty: none).
    pub password: &'a str,
    /// The client's address.
    pub ip: IpAddr,
    /// `read` or `publish`.
    pub action: &'a str,
    /// The path.
    pub path: &'a str,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Most answers kept; past it the oldest half is forgotten (a bound, not an LRU).
const CACHE_MAX: usize = 10_000;

/// The webhook and its cache.
pub struct AuthWebhook {
    config: AuthWebhookConfig,
    url: hyper::Uri,
    client: HttpClient,
    cache: Mutex<HashMap<[u8; 32], (bool, Instant)>>,
}

impl std::fmt::Debug for AuthWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthWebhook")
            .field("url", &self.config.url)
            .finish()
    }
}

impl AuthWebhook {
    /// The webhook of `config`; an error names what is wrong with the URL.
    pub fn new(config: &AuthWebhookConfig) -> Result<AuthWebhook, String> {
        let url: hyper::Uri = config
            .url
            .parse()
            .map_err(|e| format!("auth.webhook.url: {e}"))?;
        match url.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err("auth.webhook.url: must be http:// or https://".into()),
        }
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err("auth.webhook.url: credentials do not belong in the URL".into());
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(AuthWebhook {
            config: config.clone(),
            url,
            client: Client::builder(TokioExecutor::new()).build(https),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the webhook allows `q` (asked now, or cached).
    pub fn allows(&self, q: &Question<'_>, now: Instant) -> bool {
        let key = cache_key(q);
        if let Some(&(verdict, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            if now.saturating_duration_since(at) < self.config.cache_ttl {
                return verdict;
            }
        }
        let answer = self.ask(q);
        let verdict = match answer {
            Some(v) => v,
            None => self.config.fail == FailMode::Open,
        };
        if answer.is_some() {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() >= CACHE_MAX {
                let mut ages: Vec<Instant> = cache.values().map(|(_, t)| *t).collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                cache.retain(|_, (_, t)| *t > cut);
            }
            cache.insert(key, (verdict, now));
        }
        verdict
    }

    /// One call: Some(allowed) for a 2xx/401/403 answer, None otherwise.
    fn ask(&self, q: &Question<'_>) -> Option<bool> {
        let body = serde_json::json!({
            "user": q.user,
            "password": q.password,
            "ip": q.ip.to_string(),
            "action": q.action,
            "path": q.path,
            "protocol": "rtsp",
        })
        .to_string();
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header("content-type", "application/json")
            .header("user-agent", concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .ok()?;
        let call = tokio::time::timeout(self.config.timeout, self.client.request(req));
        let handle = tokio::runtime::Handle::try_current().ok()?;
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            warn!("authorization webhook needs the multi-threaded runtime; failing as configured");
            return None;
        }
        let status = match tokio::task::block_in_place(|| handle.block_on(call)) {
            Ok(Ok(res)) => res.status(),
            Ok(Err(e)) => {
                warn!(url = %self.config.url, error = %e, "authorization webhook unreachable");
                return None;
            }
            Err(_) => {
                warn!(url = %self.config.url, timeout = ?self.config.timeout, "authorization webhook did not answer in time");
                return None;
            }
        };
        let verdict = if status.is_success() {
            Some(true)
        } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            Some(false)
        } else {
            warn!(url = %self.config.url, status = status.as_u16(), "authorization webhook answered neither yes nor no");
            None
        };
        if let Some(v) = verdict {
            info!(user = q.user, ip = %q.ip, action = q.action, path = q.path, allowed = v, "authorization webhook answered");
        }
        verdict
    }
}

/// The cache key: a hash of the whole question (the password never stored as such).
fn cache_key(q: &Question<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [q.user, q.password, &q.ip.to_string(), q.action, q.path] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

//! `[[hooks.webhook]]`: each event a JSON POST, signed, retried until it is accepted or
//! the attempts run out.
//!
//! The request carries `X-Sluice-Event` (the event's name), `X-Sluice-Event-Id` (its bus
//! id: the same on every retry, so a receiver can de-duplicate) and, with a `secret`,
//! `X-Sluice-Signature: sha256=<hex HMAC-SHA256 of the exact body, keyed with the
//! secret>`. A 2xx answer delivers; 5xx, 429, a timeout or a connection error is tried
//! again after an exponential backoff with jitter; any other answer fails at once.
//!
//! The client is hyper-util's pooled legacy client with hyper-rustls: both are already
//! part of the server (hyper serves the HTTP listener, rustls its TLS), so webhooks add
//! no second HTTP stack and no second TLS library (reqwest would bring both).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use sluice_hub::Record;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Outcomes;
use crate::config::WebhookConfig;

/// The pooled HTTP(S) client every webhook target shares.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The first retry's delay before jitter; each further one doubles it.
pub const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// The longest delay between two attempts, before jitter.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// A client for http:// and https:// URLs (Mozilla's roots, rustls with ring).
pub(crate) fn client() -> Result<HttpClient, rustls::Error> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// `sha256=<hex>` of `body` keyed with `secret`: the `X-Sluice-Signature` value.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The delay before attempt `attempt + 1` (after `attempt` failed, from 1):
/// `BACKOFF_BASE · 2^(attempt-1)`, capped at [`BACKOFF_CAP`], scaled by `jitter` in
/// [0, 1) into its upper half ("equal jitter": never less than half the nominal delay, so
/// retries stay spread out, never synchronized across targets).
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let nominal = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_CAP);
    nominal.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// 2xx.
    Delivered,
    /// Worth trying again: 5xx, 429, a timeout, a connection error (said here).
    Retry(String),
    /// Refused for good (another status).
    Refused(StatusCode),
}

/// Classifies an answer's status.
pub fn classify(status: StatusCode) -> Attempt {
    if status.is_success() {
        Attempt::Delivered
    } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Attempt::Retry(format!("status {status}"))
    } else {
        Attempt::Refused(status)
    }
}

/// One webhook target: where, how, and its counters.
#[derive(Debug)]
pub(crate) struct Target {
    label: String,
    url: String,
    secret: Option<Vec<u8>>,
    timeout: Duration,
    max_attempts: u32,
    outcomes: Arc<Outcomes>,
}

impl Target {
    pub(crate) fn new(label: String, c: &WebhookConfig, outcomes: Arc<Outcomes>) -> Target {
        Target {
            label,
            url: c.url.clone(),
            secret: c.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            timeout: c.timeout,
            max_attempts: c.max_attempts.max(1),
            outcomes,
        }
    }

    fn request(&self, record: &Record, body: &Bytes) -> Result<Request<Full<Bytes>>, String> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(&self.url)
            .header("content-type", "application/json")
            .header("user-agent", concat!("sluice/", env!("CARGO_PKG_VERSION")))
            .header("x-sluice-event", record.event.name())
            .header("x-sluice-event-id", record.id.to_string());
        if let Some(secret) = &self.secret {
            req = req.header("x-sluice-signature", signature(secret, body));
        }
        req.body(Full::new(body.clone()))
            .map_err(|e| format!("cannot build the request: {e}"))
    }

    async fn attempt(&self, client: &HttpClient, record: &Record, body: &Bytes) -> Attempt {
        let req = match self.request(record, body) {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(e),
        };
        match tokio::time::timeout(self.timeout, client.request(req)).await {
            Err(_) => Attempt::Retry(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => Attempt::Retry(format!("{e}")),
            Ok(Ok(res)) => classify(res.status()),
        }
    }

    /// Delivers `record`: up to `max_attempts` attempts, the same body and id each time.
    pub(crate) async fn deliver(&self, client: &HttpClient, record: &Record) {
        let body = Bytes::from(record.to_json());
        let name = record.event.name();
        for attempt in 1..=self.max_attempts {
            match self.attempt(client, record, &body).await {
                Attempt::Delivered => {
                    Outcomes::add(&self.outcomes.delivered);
                    return;
                }
                Attempt::Refused(status) => {
                    Outcomes::add(&self.outcomes.failed);
                    warn!(hook = %self.label, event = name, id = record.id, %status, "webhook refused the event");
                    return;
                }
                Attempt::Retry(why) if attempt < self.max_attempts => {
                    Outcomes::add(&self.outcomes.retried);
                    let wait = backoff(attempt, rand::random::<f64>());
                    info!(hook = %self.label, event = name, id = record.id, attempt, %why, ?wait, "webhook attempt failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Attempt::Retry(why) => {
                    Outcomes::add(&self.outcomes.failed);
                    warn!(hook = %self.label, event = name, id = record.id, attempts = attempt, %why, "webhook delivery failed; giving up");
                }
            }
        }
    }
}

/// The target's worker: its queue's events, one at a time, in order.
pub(crate) async fn deliver(
    target: Target,
    mut queue: mpsc::Receiver<Arc<Record>>,
    client: HttpClient,
) {
    while let Some(record) = queue.recv().await {
        target.deliver(&client, &record).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_rfc_4231_and_a_receivers_check() {
        // RFC 4231 test case 2: key "Jefe".
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let body = br#"{"id":1,"type":"path_ready"}"#;
        let sig = signature(b"s3cret", body);
        assert_eq!(sig.len(), 7 + 64);
        assert_ne!(sig, signature(b"other", body), "the key matters");
        assert_ne!(sig, signature(b"s3cret", b"{}"), "the body matters");
    }

    #[test]
    fn backoff_doubles_from_the_base_caps_and_jitters_within_the_upper_half() {
        // Virtual time: the schedule is a pure function of the attempt and the jitter.
        let nominal: Vec<Duration> = (1..=10).map(|a| backoff(a, 1.0)).collect();
        assert_eq!(nominal[0], Duration::from_millis(250));
        assert_eq!(nominal[1], Duration::from_millis(500));
        assert_eq!(nominal[2], Duration::from_secs(1));
        assert_eq!(nominal[7], Duration::from_secs(30), "capped");
        assert_eq!(nominal[9], Duration::from_secs(30));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(125));
        assert_eq!(backoff(3, 0.5), Duration::from_millis(750));
        assert_eq!(backoff(u32::MAX, 0.0), Duration::from_secs(15));
        for a in 1..8 {
            assert!(backoff(a, 0.999) <= nominal[a as usize - 1]);
            assert!(backoff(a, 0.0) >= nominal[a as usize - 1] / 2);
        }
    }

    #[test]
    fn server_errors_and_429_retry_other_refusals_do_not() {
        assert_eq!(classify(StatusCode::OK), Attempt::Delivered);
        assert_eq!(classify(StatusCode::NO_CONTENT), Attempt::Delivered);
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE),
            Attempt::Retry(_)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS),
            Attempt::Retry(_)
        ));
        assert_eq!(
            classify(StatusCode::NOT_FOUND),
            Attempt::Refused(StatusCode::NOT_FOUND)
        );
    }
}

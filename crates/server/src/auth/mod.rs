//! Who may do what: users, their passwords and address ranges, their permissions per
//! path and action, and the RTSP authentication exchange (RFC 7616 Digest with SHA-256 or
//! MD5, RFC 7617 Basic) that establishes who a client is.
//!
//! With no `[[users]]` configured everything is open (the default, logged once at start).
//! Digest needs the plain password on the server; users stored as `sha256:` or `argon2:`
//! hashes can only use Basic, which is offered over TLS (or anywhere when
//! `auth.allow_basic_without_tls` is set). Nonces are random, bound to the connection that
//! received them, and expire (`stale=true`). Wrong credentials are counted per client IP;
//! past `auth.max_failures` within a minute the IP is refused for that minute.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use ipnet::IpNet;
use regex::Regex;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use sluice_rtsp::auth::{
    format_challenge, parse_authorization, verify_digest, Authorization, Challenge,
    DigestAlgorithm, Secret,
};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

pub mod webhook;

/// What a client wants to do on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// DESCRIBE, SETUP and PLAY of a path (live, pulled, stored, or the demo).
    Read,
    /// ANNOUNCE and RECORD to a path.
    Publish,
    /// HTTP: read the API (`GET` under `/v1`); takes no path.
    Api,
    /// HTTP: change things through the API (and read it); takes no path.
    #[serde(rename = "api_write")]
    ApiWrite,
    /// HTTP: scrape `/metrics`; takes no path.
    Metrics,
    /// HTTP: play a path's recordings back (`/v1/recordings/timeline`, `export.mp4`,
    /// `index.m3u8`): per path, like `read`.
    Playback,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Read => "read",
            Action::Publish => "publish",
            Action::Api => "api",
            Action::ApiWrite => "api_write",
            Action::Metrics => "metrics",
            Action::Playback => "playback",
        })
    }
}

/// One permission of a user: an action on a path (exact name, `~regex`, or all paths).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// The action granted.
    pub action: Action,
    /// The path: an exact name, `~` + regular expression, or omitted for every path.
    #[serde(default)]
    pub path: Option<String>,
}

/// `[[users]]`: one user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name; `any` means every client, authenticated or not.
    pub user: String,
    /// Password: plain text, `sha256:<base64 of SHA-256(password)>`, or `argon2:<PHC string>`.
    #[serde(default)]
    pub pass: String,
    /// Client addresses allowed for this user (CIDR); omitted means any.
    #[serde(default)]
    pub ips: Vec<String>,
    /// What the user may do.
    #[serde(default)]
    pub permissions: Vec<Permission>,
}

/// `[auth]`: how authentication behaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Realm in challenges.
    pub realm: String,
    /// How long a Digest nonce is valid.
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub nonce_lifetime: Duration,
    /// Failed logins per client IP within a minute before the IP is refused for a minute.
    pub max_failures: u32,
    /// Offer and accept Basic over plain RTSP (passwords then cross the network in clear).
    pub allow_basic_without_tls: bool,
    /// Ask an HTTP endpoint instead of `[[users]]` whether a client may read or publish a
    /// path (`[auth.webhook]`).
    pub webhook: Option<webhook::AuthWebhookConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: "Sluice".to_owned(),
            nonce_lifetime: Duration::from_secs(60),
            max_failures: 5,
            allow_basic_without_tls: false,
            webhook: None,
        }
    }
}

/// Why a user configuration was refused.
pub fn validate_users(users: &[UserConfig]) -> Result<(), String> {
    for u in users {
        if u.user.is_empty() {
            return Err("users: empty user name".into());
        }
        if u.user == "any" && !u.pass.is_empty() {
            return Err("users: user \"any\" (anonymous) takes no pass".into());
        }
        if u.user != "any" && u.pass.is_empty() {
            return Err(format!("users: user {:?} needs a pass", u.user));
        }
        Secret2::parse(&u.pass).map_err(|e| format!("users: {:?}: {e}", u.user))?;
        for ip in &u.ips {
            parse_net(ip).map_err(|e| format!("users: {:?}: ips: {e}", u.user))?;
        }
        for p in &u.permissions {
            if matches!(p.action, Action::Api | Action::ApiWrite | Action::Metrics)
                && p.path.is_some()
            {
                return Err(format!(
                    "users: {:?}: action {} takes no path",
                    u.user, p.action
                ));
            }
            if let Some(re) = p.path.as_deref().and_then(|p| p.strip_prefix('~')) {
                Regex::new(re).map_err(|e| format!("users: {:?}: path regex: {e}", u.user))?;
            }
        }
        if u.permissions.is_empty() {
            return Err(format!("users: user {:?} has no permissions", u.user));
        }
    }
    Ok(())
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("invalid address range {s:?}"))
}

/// A stored password.
enum Secret2 {
    Plain(String),
    Sha256([u8; 32]),
    Argon2(String),
}

impl Secret2 {
    fn parse(s: &str) -> Result<Secret2, String> {
        if let Some(b64) = s.strip_prefix("sha256:") {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| "sha256: hash is not base64".to_string())?;
            let arr: [u8; 32] = bytes
                .try_into()
                .map_err(|_| "sha256: hash must be 32 bytes".to_string())?;
            return Ok(Secret2::Sha256(arr));
        }
        if let Some(phc) = s.strip_prefix("argon2:") {
            argon2::PasswordHash::new(phc).map_err(|e| format!("argon2: {e}"))?;
            return Ok(Secret2::Argon2(phc.to_owned()));
        }
        Ok(Secret2::Plain(s.to_owned()))
    }

    /// Constant-time check of a clear-text password (Basic).
    fn verify(&self, password: &str) -> bool {
        match self {
            Secret2::Plain(p) => p.as_bytes().ct_eq(password.as_bytes()).into(),
            Secret2::Sha256(h) => {
                let got: [u8; 32] = Sha256::digest(password.as_bytes()).into();
                h.ct_eq(&got).into()
            }
            Secret2::Argon2(phc) => {
                use argon2::PasswordVerifier;
                argon2::PasswordHash::new(phc).is_ok_and(|hash| {
                    argon2::Argon2::default()
                        .verify_password(password.as_bytes(), &hash)
                        .is_ok()
                })
            }
        }
    }

    fn plain(&self) -> Option<&str> {
        match self {
            Secret2::Plain(p) => Some(p),
            _ => None,
        }
    }
}

struct User {
    name: String,
    secret: Secret2,
    ips: Vec<IpNet>,
    permissions: Vec<(Action, PathMatch)>,
}

enum PathMatch {
    All,
    Exact(String),
    Regex(Regex),
}

impl PathMatch {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::All => true,
            PathMatch::Exact(p) => p == path,
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

impl User {
    fn allows(&self, action: Action, path: &str, ip: IpAddr) -> bool {
        (self.ips.is_empty() || self.ips.iter().any(|n| n.contains(&ip)))
            && self
                .permissions
                .iter()
                .any(|(a, p)| *a == action && p.matches(path))
    }
}

/// Whether a Digest `uri` names the request's URI: equal, or the same path (clients
/// differ in sending the absolute URL or only its path).
fn same_request_uri(signed: &str, request: &str) -> bool {
    fn path(u: &str) -> &str {
        match u.split_once("://") {
            Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
            None => u,
        }
    }
    signed == request || path(signed).trim_end_matches('/') == path(request).trim_end_matches('/')
}

/// Nonces issued on one connection.
#[derive(Debug, Default)]
pub struct Nonces {
    issued: Vec<(String, Instant)>,
}

impl Nonces {
    fn issue(&mut self, now: Instant) -> String {
        let nonce = format!("{:032x}", rand::random::<u128>());
        if self.issued.len() >= 8 {
            self.issued.remove(0);
        }
        self.issued.push((nonce.clone(), now));
        nonce
    }

    /// Some(true) valid, Some(false) expired (stale), None unknown.
    fn check(&self, nonce: &str, now: Instant, lifetime: Duration) -> Option<bool> {
        self.issued
            .iter()
            .find(|(n, _)| n.as_bytes().ct_eq(nonce.as_bytes()).into())
            .map(|(_, at)| now.duration_since(*at) < lifetime)
    }
}

/// The outcome of checking a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, as this principal (`any` for anonymous access).
    Allowed(String),
    /// Credentials missing or wrong: answer 401 with these WWW-Authenticate values.
    Challenge(Vec<String>),
    /// Authenticated but not permitted, or the IP is rate-limited: 403.
    Forbidden(String),
}

/// The users and the authentication policy.
pub struct Authenticator {
    /// The users and settings in force, swapped whole by [`Authenticator::replace`].
    rules: std::sync::RwLock<Arc<Rules>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// Users and settings, parsed and checked.
struct Rules {
    users: Vec<User>,
    config: AuthConfig,
    webhook: Option<Arc<webhook::AuthWebhook>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.rules().users.len())
            .finish()
    }
}

impl Authenticator {
    /// Builds the checker from validated configuration.
    pub fn new(users: &[UserConfig], config: AuthConfig) -> Result<Authenticator, String> {
        let rules = Rules::parse(users, config)?;
        if rules.users.is_empty() && rules.webhook.is_none() {
            info!("no [[users]] configured: anyone may read and publish any path");
        }
        Ok(Authenticator {
            rules: std::sync::RwLock::new(Arc::new(rules)),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// A reload: `users` and `config` are in force from the next check on (a request in
    /// progress finishes under the old ones). Nothing changes if they are invalid.
    pub fn replace(&self, users: &[UserConfig], config: AuthConfig) -> Result<(), String> {
        let rules = Rules::parse(users, config)?;
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        Ok(())
    }

    /// The authorization webhook, when `[auth.webhook]` is configured.
    pub fn webhook(&self) -> Option<Arc<webhook::AuthWebhook>> {
        self.rules().webhook.clone()
    }

    /// The users and settings in force.
    fn rules(&self) -> Arc<Rules> {
        self.rules.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Rules {
    fn parse(users: &[UserConfig], config: AuthConfig) -> Result<Rules, String> {
        validate_users(users)?;
        let users = users
            .iter()
            .map(|u| {
                Ok(User {
                    name: u.user.clone(),
                    secret: Secret2::parse(&u.pass)?,
                    ips: u
                        .ips
                        .iter()
                        .map(|s| parse_net(s))
                        .collect::<Result<_, _>>()?,
                    permissions: u
                        .permissions
                        .iter()
                        .map(|p| {
                            let m = match p.path.as_deref() {
                                None | Some("") => PathMatch::All,
                                Some(s) => match s.strip_prefix('~') {
                                    Some(re) => {
                                        PathMatch::Regex(Regex::new(re).map_err(|e| e.to_string())?)
                                    }
                                    None => PathMatch::Exact(s.to_owned()),
                                },
                            };
                            Ok::<_, String>((p.action, m))
                        })
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let webhook = match &config.webhook {
            Some(w) => Some(Arc::new(webhook::AuthWebhook::new(w)?)),
            None => None,
        };
        Ok(Rules {
            users,
            config,
            webhook,
        })
    }
}

impl Authenticator {
    /// Whether access is open to everyone (no users configured).
    pub fn is_open(&self) -> bool {
        self.rules().users.is_empty()
    }

    /// HTTP: whether `password` is `user`'s (never true for `any`), in constant time.
    pub fn verify_password(&self, user: &str, password: &str) -> bool {
        self.rules()
            .users
            .iter()
            .find(|u| u.name == user && u.name != "any")
            .is_some_and(|u| u.secret.verify(password))
    }

    /// HTTP: whether `user` (`any` for anonymous, which every client also is) may do a
    /// path-less `action` (`api`, `api_write`, `metrics`) from `ip`.
    pub fn user_may(&self, user: &str, action: Action, ip: IpAddr) -> bool {
        self.rules()
            .users
            .iter()
            .any(|u| (u.name == user || u.name == "any") && u.allows(action, "", ip))
    }

    /// HTTP: whether `user` (`any` for anonymous, which every client also is) may do a
    /// path's `action` (`read`, `publish`) on `path` from `ip`: what HLS, WHEP, WHIP and
    /// the player page ask, with the rules RTSP uses.
    pub fn user_may_on(&self, user: &str, action: Action, path: &str, ip: IpAddr) -> bool {
        self.is_open()
            || self
                .rules()
                .users
                .iter()
                .any(|u| (u.name == user || u.name == "any") && u.allows(action, path, ip))
    }

    /// HTTP: whether `ip` is refused for too many failed logins.
    pub fn is_refusing(&self, ip: IpAddr, now: Instant) -> bool {
        self.rate_limited(ip, now)
    }

    /// HTTP: counts a failed login of `user` from `ip` (see `auth.max_failures`).
    pub fn login_failed(&self, ip: IpAddr, user: &str, now: Instant) {
        self.record_failure(ip, user, now);
    }

    fn basic_allowed(&self, tls: bool) -> bool {
        tls || self.rules().config.allow_basic_without_tls
    }

    fn challenges(&self, nonces: &mut Nonces, stale: bool, tls: bool, now: Instant) -> Vec<String> {
        let nonce = nonces.issue(now);
        let realm = self.rules().config.realm.clone();
        let mut v: Vec<String> = [DigestAlgorithm::Sha256, DigestAlgorithm::Md5]
            .into_iter()
            .map(|algorithm| {
                format_challenge(&Challenge::Digest {
                    realm: realm.clone(),
                    nonce: nonce.clone(),
                    opaque: None,
                    algorithm,
                    // RFC 7616 requires qop; without it some clients (retina's http-auth)
                    // answer RFC 2069 style without naming the algorithm.
                    qop: vec!["auth".to_owned()],
                    stale,
                })
            })
            .collect();
        if self.basic_allowed(tls) {
            v.push(format_challenge(&Challenge::Basic { realm }));
        }
        v
    }

    fn rate_limited(&self, ip: IpAddr, now: Instant) -> bool {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match f.get(&ip) {
            Some((n, since)) if now.duration_since(*since) < Duration::from_secs(60) => {
                *n >= self.rules().config.max_failures
            }
            _ => false,
        }
    }

    fn record_failure(&self, ip: IpAddr, user: &str, now: Instant) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() > 100_000 {
            f.retain(|_, (_, since)| now.duration_since(*since) < Duration::from_secs(60));
        }
        let entry = f.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= Duration::from_secs(60) {
            *entry = (0, now);
        }
        entry.0 += 1;
        if entry.0 == self.rules().config.max_failures {
            warn!(%ip, user, failures = entry.0, "too many failed logins; refusing this address for a minute");
        } else {
            warn!(%ip, user, "failed login");
        }
    }

    /// Decides whether a request for `action` on `path` from `ip` may proceed, given its
    /// `Authorization` header (if any). `method` and `uri` are the request's (Digest
    /// signs them); `nonces` are this connection's.
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        authorization: Option<&str>,
        method: &str,
        request_uri: &str,
        action: Action,
        path: &str,
        ip: IpAddr,
        tls: bool,
        nonces: &mut Nonces,
        now: Instant,
    ) -> Decision {
        if self.is_open() {
            return Decision::Allowed("any".into());
        }
        // Anonymous grants need no credentials.
        if self
            .rules()
            .users
            .iter()
            .any(|u| u.name == "any" && u.allows(action, path, ip))
        {
            return Decision::Allowed("any".into());
        }
        if self.rate_limited(ip, now) {
            return Decision::Forbidden(format!("too many failed logins from {ip}"));
        }
        let Some(value) = authorization else {
            return Decision::Challenge(self.challenges(nonces, false, tls, now));
        };
        let Ok(auth) = parse_authorization(value) else {
            self.record_failure(ip, "?", now);
            return Decision::Challenge(self.challenges(nonces, false, tls, now));
        };
        let (name, verified, stale) = match &auth {
            Authorization::Basic { username, password } => {
                if !self.basic_allowed(tls) {
                    return Decision::Challenge(self.challenges(nonces, false, tls, now));
                }
                let ok = self
                    .rules()
                    .users
                    .iter()
                    .find(|u| u.name == *username && u.name != "any")
                    .is_some_and(|u| u.secret.verify(password));
                (username.clone(), ok, false)
            }
            Authorization::Digest {
                username,
                realm,
                nonce,
                uri,
                ..
            } => match nonces.check(nonce, now, self.rules().config.nonce_lifetime) {
                None => (username.clone(), false, false),
                // The signed URI must be this request's (RFC 7616 §3.4.6).
                Some(_) if !same_request_uri(uri, request_uri) => (username.clone(), false, false),
                Some(false) => (username.clone(), false, true),
                Some(true) => {
                    let ok = *realm == self.rules().config.realm
                        && self
                            .rules()
                            .users
                            .iter()
                            .find(|u| u.name == *username && u.name != "any")
                            .and_then(|u| u.secret.plain())
                            .is_some_and(|p| verify_digest(&auth, method, Secret::Password(p)));
                    (username.clone(), ok, false)
                }
            },
        };
        if stale {
            return Decision::Challenge(self.challenges(nonces, true, tls, now));
        }
        if !verified {
            self.record_failure(ip, &name, now);
            return Decision::Challenge(self.challenges(nonces, false, tls, now));
        }
        let permitted = self
            .rules()
            .users
            .iter()
            .any(|u| u.name == name && u.allows(action, path, ip));
        if permitted {
            Decision::Allowed(name)
        } else {
            Decision::Forbidden(format!("user {name:?} may not {action} {path:?} from {ip}"))
        }
    }
}

/// The [`Authenticator`] as one connection's RTSP state asks it: the client's address
/// and TLS-ness and the nonces issued on this connection are fixed, so the sans-IO
/// [`sluice_rtsp::server::ServerConnection`] can check each request itself.
#[derive(Debug)]
pub struct ConnectionAuth {
    auth: std::sync::Arc<Authenticator>,
    peer: IpAddr,
    tls: bool,
    nonces: Nonces,
}

impl ConnectionAuth {
    /// The authenticator for a connection from `peer` (`tls` for RTSPS).
    pub fn new(auth: std::sync::Arc<Authenticator>, peer: IpAddr, tls: bool) -> ConnectionAuth {
        ConnectionAuth {
            auth,
            peer,
            tls,
            nonces: Nonces::default(),
        }
    }
}

impl ConnectionAuth {
    /// The webhook decides (`[auth.webhook]`): with the client's Basic credentials when it
    /// sent them (and Basic is allowed on this connection), else anonymously; an
    /// anonymous refusal asks for credentials, a refusal of credentials is final.
    fn ask_webhook(
        &mut self,
        hook: &webhook::AuthWebhook,
        query: &sluice_rtsp::server::AuthQuery<'_>,
        action: Action,
        now: Instant,
    ) -> sluice_rtsp::server::AuthVerdict {
        use sluice_rtsp::server::AuthVerdict;
        let basic = self.auth.basic_allowed(self.tls);
        let credentials = query
            .authorization
            .and_then(|v| parse_authorization(v).ok())
            .and_then(|a| match a {
                Authorization::Basic { username, password } if basic => Some((username, password)),
                _ => None,
            });
        let (user, password) = credentials
            .as_ref()
            .map_or(("", ""), |(u, p)| (u.as_str(), p.as_str()));
        let q = webhook::Question {
            user,
            password,
            ip: self.peer,
            action: match action {
                Action::Read => "read",
                _ => "publish",
            },
            path: query.path,
        };
        if hook.allows(&q, now) {
            return AuthVerdict::Allowed(if user.is_empty() { "any" } else { user }.to_owned());
        }
        if credentials.is_none() && basic {
            let realm = self.auth.rules().config.realm.clone();
            return AuthVerdict::Challenge(vec![format_challenge(&Challenge::Basic { realm })]);
        }
        let why = if basic {
            format!(
                "the authorization webhook refuses {user:?} to {action} {:?}",
                query.path
            )
        } else {
            format!(
                "the authorization webhook refuses anonymous {action} of {:?}; credentials need RTSPS or auth.allow_basic_without_tls",
                query.path
            )
        };
        AuthVerdict::Forbidden(why)
    }
}

impl sluice_rtsp::server::Authenticator for ConnectionAuth {
    fn check(
        &mut self,
        query: &sluice_rtsp::server::AuthQuery<'_>,
        now: Instant,
    ) -> sluice_rtsp::server::AuthVerdict {
        use sluice_rtsp::server::{Access, AuthVerdict};
        let action = match query.access {
            Access::Read => Action::Read,
            Access::Publish => Action::Publish,
        };
        if let Some(hook) = self.auth.webhook() {
            return self.ask_webhook(&hook, query, action, now);
        }
        let decision = self.auth.check(
            query.authorization,
            query.method.as_str(),
            query.uri,
            action,
            query.path,
            self.peer,
            self.tls,
            &mut self.nonces,
            now,
        );
        match decision {
            Decision::Allowed(who) => AuthVerdict::Allowed(who),
            Decision::Challenge(values) => AuthVerdict::Challenge(values),
            Decision::Forbidden(why) => AuthVerdict::Forbidden(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_rtsp::auth::{parse_www_authenticate, ClientAuth, Credentials};

    fn users() -> Vec<UserConfig> {
        toml::from_str::<std::collections::HashMap<String, Vec<UserConfig>>>(
            r#"
            users = [
              { user = "viewer", pass = "secret", ips = ["127.0.0.1/32"], permissions = [ { action = "read", path = "cam1" } ] },
              { user = "pub", pass = "sha256:9S+9MrKzuG/4jvbEkGKChfSCrxXdyylUH5S89Saj9sc=", permissions = [ { action = "publish", path = "~^live/.*$" } ] },
              { user = "any", permissions = [ { action = "read", path = "demo" } ] },
            ]
            "#,
        )
        .unwrap()
        .remove("users")
        .unwrap()
    }

    fn auth() -> Authenticator {
        Authenticator::new(&users(), AuthConfig::default()).unwrap()
    }

    const URI: &str = "rtsp://127.0.0.1/cam1";
    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn digest_for(decision: &Decision, user: &str, pass: &str, method: &str, uri: &str) -> String {
        let Decision::Challenge(values) = decision else {
            panic!("{decision:?}")
        };
        let challenges: Vec<Challenge> = values
            .iter()
            .flat_map(|v| parse_www_authenticate(v).unwrap())
            .collect();
        let mut c = ClientAuth::new(
            Credentials {
                username: user.into(),
                password: pass.into(),
            },
            &challenges,
        )
        .unwrap();
        c.authorization(method, uri)
    }

    #[test]
    fn digest_login_and_permissions() {
        let a = auth();
        let mut n = Nonces::default();
        let now = Instant::now();
        let uri = "rtsp://127.0.0.1/cam1";
        let d = a.check(
            None,
            "DESCRIBE",
            URI,
            Action::Read,
            "cam1",
            LOCAL,
            false,
            &mut n,
            now,
        );
        let Decision::Challenge(v) = &d else { panic!() };
        assert!(v[0].contains("SHA-256") && v[1].contains("MD5"));
        assert!(
            !v.iter().any(|c| c.starts_with("Basic")),
            "no Basic over plain RTSP"
        );
        let h = digest_for(&d, "viewer", "secret", "DESCRIBE", uri);
        assert_eq!(
            a.check(
                Some(&h),
                "DESCRIBE",
                URI,
                Action::Read,
                "cam1",
                LOCAL,
                false,
                &mut n,
                now
            ),
            Decision::Allowed("viewer".into())
        );
        // Right user, wrong action or path: 403.
        assert!(matches!(
            a.check(
                Some(&h),
                "DESCRIBE",
                URI,
                Action::Read,
                "cam2",
                LOCAL,
                false,
                &mut n,
                now
            ),
            Decision::Forbidden(_)
        ));
        // From another address: the ips list refuses.
        let other: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(matches!(
            a.check(
                Some(&h),
                "DESCRIBE",
                URI,
                Action::Read,
                "cam1",
                other,
                false,
                &mut n,
                now
            ),
            Decision::Forbidden(_)
        ));
        // A nonce from another connection is unknown.
        let mut other_conn = Nonces::default();
        assert!(matches!(
            a.check(
                Some(&h),
                "DESCRIBE",
                URI,
                Action::Read,
                "cam1",
                LOCAL,
                false,
                &mut other_conn,
                now
            ),
            Decision::Challenge(_)
        ));
    }

    #[test]
    fn expired_nonce_is_stale() {
        let a = auth();
        let mut n = Nonces::default();
        let t0 = Instant::now();
        let d = a.check(
            None,
            "DESCRIBE",
            URI,
            Action::Read,
            "cam1",
            LOCAL,
            false,
            &mut n,
            t0,
        );
        let h = digest_for(&d, "viewer", "secret", "DESCRIBE", "rtsp://h/cam1");
        let later = t0 + Duration::from_secs(61);
        let Decision::Challenge(v) = a.check(
            Some(&h),
            "DESCRIBE",
            URI,
            Action::Read,
            "cam1",
            LOCAL,
            false,
            &mut n,
            later,
        ) else {
            panic!()
        };
        assert!(v[0].to_ascii_lowercase().contains("stale=true"), "{v:?}");
    }

    #[test]
    fn basic_only_over_tls_and_hashes_work() {
        let a = auth();
        let mut n = Nonces::default();
        let now = Instant::now();
        // "pub" has a sha256 hash of "hunter2"; Basic is its only way in.
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("pub:hunter2")
        );
        assert!(matches!(
            a.check(
                Some(&basic),
                "ANNOUNCE",
                URI,
                Action::Publish,
                "live/x",
                LOCAL,
                false,
                &mut n,
                now
            ),
            Decision::Challenge(_)
        ));
        assert_eq!(
            a.check(
                Some(&basic),
                "ANNOUNCE",
                URI,
                Action::Publish,
                "live/x",
                LOCAL,
                true,
                &mut n,
                now
            ),
            Decision::Allowed("pub".into())
        );
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("pub:nope")
        );
        assert!(matches!(
            a.check(
                Some(&wrong),
                "ANNOUNCE",
                URI,
                Action::Publish,
                "live/x",
                LOCAL,
                true,
                &mut n,
                now
            ),
            Decision::Challenge(_)
        ));
    }

    #[test]
    fn argon2_hashes_verify_basic() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let phc = argon2::Argon2::default()
            .hash_password(b"s3cret", &salt)
            .unwrap()
            .to_string();
        let users: Vec<UserConfig> = vec![UserConfig {
            user: "a".into(),
            pass: format!("argon2:{phc}"),
            ips: vec![],
            permissions: vec![Permission {
                action: Action::Read,
                path: None,
            }],
        }];
        let a = Authenticator::new(&users, AuthConfig::default()).unwrap();
        let mut n = Nonces::default();
        let now = Instant::now();
        let enc = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(
            a.check(
                Some(&enc("a:s3cret")),
                "DESCRIBE",
                URI,
                Action::Read,
                "x",
                LOCAL,
                true,
                &mut n,
                now
            ),
            Decision::Allowed("a".into())
        );
        assert!(matches!(
            a.check(
                Some(&enc("a:wrong")),
                "DESCRIBE",
                URI,
                Action::Read,
                "x",
                LOCAL,
                true,
                &mut n,
                now
            ),
            Decision::Challenge(_)
        ));
    }

    #[test]
    fn anonymous_grants_and_rate_limit() {
        let a = auth();
        let mut n = Nonces::default();
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            a.check(
                None,
                "DESCRIBE",
                URI,
                Action::Read,
                "demo",
                ip,
                false,
                &mut n,
                now
            ),
            Decision::Allowed("any".into())
        );
        let d = a.check(
            None,
            "DESCRIBE",
            URI,
            Action::Read,
            "cam1",
            ip,
            false,
            &mut n,
            now,
        );
        let bad = digest_for(&d, "viewer", "guess", "DESCRIBE", "rtsp://h/cam1");
        for _ in 0..5 {
            assert!(matches!(
                a.check(
                    Some(&bad),
                    "DESCRIBE",
                    URI,
                    Action::Read,
                    "cam1",
                    ip,
                    false,
                    &mut n,
                    now
                ),
                Decision::Challenge(_)
            ));
        }
        assert!(matches!(
            a.check(
                Some(&bad),
                "DESCRIBE",
                URI,
                Action::Read,
                "cam1",
                ip,
                false,
                &mut n,
                now
            ),
            Decision::Forbidden(_)
        ));
        // A minute later the address may try again.
        assert!(matches!(
            a.check(
                None,
                "DESCRIBE",
                URI,
                Action::Read,
                "cam1",
                ip,
                false,
                &mut n,
                now + Duration::from_secs(61)
            ),
            Decision::Challenge(_)
        ));
    }

    #[test]
    fn bad_user_configs_are_refused() {
        let bad = |t: &str| {
            let u: std::collections::HashMap<String, Vec<UserConfig>> = toml::from_str(t).unwrap();
            validate_users(&u["users"]).unwrap_err()
        };
        assert!(
            bad(r#"users = [ { user = "a", permissions = [ { action = "read" } ] } ]"#)
                .contains("needs a pass")
        );
        assert!(bad(r#"users = [ { user = "a", pass = "sha256:xx", permissions = [ { action = "read" } ] } ]"#).contains("sha256"));
        assert!(bad(r#"users = [ { user = "a", pass = "p", ips = ["300.1.1.1"], permissions = [ { action = "read" } ] } ]"#).contains("address"));
        assert!(bad(r#"users = [ { user = "a", pass = "p" } ]"#).contains("no permissions"));
        assert!(
            toml::from_str::<std::collections::HashMap<String, Vec<UserConfig>>>(
                r#"users = [ { user = "a", pass = "p", permissions = [ { action = "record" } ] } ]"#
            )
            .is_err()
        );
        assert!(bad(r#"users = [ { user = "a", pass = "p", permissions = [ { action = "metrics", path = "x" } ] } ]"#).contains("takes no path"));
    }
}

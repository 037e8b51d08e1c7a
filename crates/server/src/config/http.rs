//! `[http]`: the HTTP listener that serves the REST API, the OpenAPI document and the
//! metrics (and, later, the player page, HLS, WHEP and recording playback), and the path
//! names it reserves.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// First path segments the HTTP listener keeps for itself. A stream path whose first
/// segment is one of these would be shadowed on HTTP (HLS and WHEP serve streams at
/// `/<path>/…`), so configuration refuses such path names and the RTSP module refuses
/// publishing to them.
pub const RESERVED_FIRST_SEGMENTS: &[&str] = &["v1", "openapi.json", "metrics", "static", "assets"];

/// Whether `path` (a stream path, without leading `/`) starts with a reserved segment.
pub fn is_reserved_path(path: &str) -> bool {
    let first = path.split('/').next().unwrap_or("");
    RESERVED_FIRST_SEGMENTS.contains(&first)
}

/// `[http]`: the HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// Address of the listener (default `0.0.0.0:8080`).
    pub listen: SocketAddr,
    /// PEM certificate chain for HTTPS; with `tls_key`. When neither is set but
    /// `tls_from_rtsps` is, the `[rtsps]` pair is used.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS; with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with the `[rtsps]` certificate and key (when `tls_cert`/`tls_key` are unset).
    pub tls_from_rtsps: bool,
    /// Origins (`https://dash.example.com`) whose pages may call the API from a browser;
    /// `*` allows any origin. Empty: no CORS headers (same-origin only).
    pub cors_origins: Vec<String>,
    /// Largest request body accepted (bytes); larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a request may take before it is answered 408.
    #[serde(deserialize_with = "super::de_duration")]
    pub request_timeout: Duration,
    /// Bearer tokens: each authenticates as one of the `[[users]]` and gets that user's
    /// permissions.
    pub tokens: Vec<TokenConfig>,
    /// Also export a series per live session (`sluice_session_*{session=…}`), removed
    /// when the session ends. Off by default: the number of series then grows with the
    /// number of clients.
    pub session_metrics: bool,
}

/// `[[http.tokens]]`: an API token standing for a user.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The `[[users]]` entry whose permissions the token carries.
    pub user: String,
    /// `sha256:<hex of SHA-256(token)>`: the token itself is never stored.
    pub hash: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            enabled: true,
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8080)),
            tls_cert: None,
            tls_key: None,
            tls_from_rtsps: false,
            cors_origins: Vec::new(),
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            tokens: Vec::new(),
            session_metrics: false,
        }
    }
}

/// Parses a `sha256:<64 hex digits>` token hash.
pub fn parse_token_hash(s: &str) -> Result<[u8; 32], String> {
    let hex = s
        .strip_prefix("sha256:")
        .ok_or_else(|| "hash must be \"sha256:<64 hex digits>\"".to_string())?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("hash must be \"sha256:<64 hex digits>\"".into());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "hash must be \"sha256:<64 hex digits>\"".to_string())?;
    }
    Ok(out)
}

impl HttpConfig {
    /// The certificate and key HTTPS uses, if any.
    pub fn tls_pair(&self, rtsps: &super::RtspsConfig) -> Option<(PathBuf, PathBuf)> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ if self.tls_from_rtsps => rtsps.cert.clone().zip(rtsps.key.clone()),
            _ => None,
        }
    }

    /// Checks `[http]` against the rest of the configuration.
    pub(super) fn validate(&self, config: &super::Config) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("http.tls_cert and http.tls_key go together".into());
        }
        for f in [&self.tls_cert, &self.tls_key].into_iter().flatten() {
            if !f.is_file() {
                return bad(format!(
                    "http.tls_cert/tls_key: {} does not exist",
                    f.display()
                ));
            }
        }
        if self.tls_from_rtsps && self.tls_cert.is_none() && !config.rtsps.enabled() {
            return bad("http.tls_from_rtsps needs rtsps.cert and rtsps.key".into());
        }
        if self.max_body_bytes < 1024 {
            return bad(format!(
                "http.max_body_bytes must be at least 1024, got {}",
                self.max_body_bytes
            ));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return bad("http.request_timeout must be at least 100ms".into());
        }
        for o in &self.cors_origins {
            let ok = o == "*"
                || ((o.starts_with("http://") || o.starts_with("https://"))
                    && !o
                        .trim_end_matches('/')
                        .contains(|c: char| c.is_whitespace())
                    && o.parse::<axum::http::HeaderValue>().is_ok());
            if !ok {
                return bad(format!(
                    "http.cors_origins: {o:?} is not an origin such as \"https://dash.example.com\" or \"*\""
                ));
            }
        }
        for t in &self.tokens {
            parse_token_hash(&t.hash).map_err(|e| {
                ConfigError::Invalid(format!("http.tokens: user {:?}: {e}", t.user))
            })?;
            if !config
                .users
                .iter()
                .any(|u| u.user == t.user && u.user != "any")
            {
                return bad(format!(
                    "http.tokens: user {:?} is not one of the [[users]]",
                    t.user
                ));
            }
        }
        for name in config.paths.keys() {
            if !name.starts_with('~') && is_reserved_path(name) {
                return bad(format!(
                    "paths.{name:?}: the first segment is reserved for HTTP ({})",
                    RESERVED_FIRST_SEGMENTS.join(", ")
                ));
            }
        }
        if config.demo.enabled && is_reserved_path(&config.demo.path) {
            return bad(format!(
                "demo.path {:?}: the first segment is reserved for HTTP ({})",
                config.demo.path,
                RESERVED_FIRST_SEGMENTS.join(", ")
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    #[test]
    fn defaults_and_reserved_names() {
        let c = Config::from_toml("").unwrap();
        assert!(c.http.enabled);
        assert_eq!(c.http.listen.to_string(), "0.0.0.0:8080");
        for name in ["v1", "metrics/x", "openapi.json", "static", "assets/a"] {
            let e = Config::from_toml(&format!("[paths.{name:?}]\nsource = \"rtsp://x/\"\n"))
                .unwrap_err();
            assert!(e.to_string().contains("reserved for HTTP"), "{name}: {e}");
        }
        assert!(Config::from_toml("[paths.v1x]\nsource = \"rtsp://x/\"\n").is_ok());
        let e = Config::from_toml("[demo]\npath = \"metrics\"\n").unwrap_err();
        assert!(e.to_string().contains("demo.path"), "{e}");
    }

    #[test]
    fn bad_http_values_name_the_key() {
        for (toml, key) in [
            ("[http]\nmax_body_bytes = 10\n", "http.max_body_bytes"),
            ("[http]\nrequest_timeout = \"1ms\"\n", "http.request_timeout"),
            ("[http]\ncors_origins = [\"nope\"]\n", "http.cors_origins"),
            ("[http]\ntls_cert = \"/x\"\n", "http.tls_cert"),
            ("[http]\ntls_from_rtsps = true\n", "http.tls_from_rtsps"),
            (
                "[[http.tokens]]\nuser = \"ops\"\nhash = \"sha256:00\"\n",
                "http.tokens",
            ),
            (
                "[[http.tokens]]\nuser = \"ops\"\nhash = \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"\n",
                "not one of the [[users]]",
            ),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert!(e.to_string().contains(key), "{toml}: {e}");
        }
        let c = Config::from_toml(
            "[http]\ncors_origins = [\"https://a.example\", \"*\"]\nrequest_timeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(c.http.cors_origins.len(), 2);
    }

    #[test]
    fn https_takes_its_own_pair_or_the_rtsps_one() {
        let dir = std::env::temp_dir().join(format!("sluice-http-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["c.pem", "k.pem", "hc.pem", "hk.pem"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let p = |f: &str| dir.join(f).display().to_string();
        let rtsps = format!("[rtsps]\ncert = {:?}\nkey = {:?}\n", p("c.pem"), p("k.pem"));
        let c = Config::from_toml(&rtsps).unwrap();
        assert_eq!(c.http.tls_pair(&c.rtsps), None, "plain HTTP unless asked");
        let c = Config::from_toml(&format!("{rtsps}[http]\ntls_from_rtsps = true\n")).unwrap();
        assert_eq!(
            c.http.tls_pair(&c.rtsps),
            Some((dir.join("c.pem"), dir.join("k.pem")))
        );
        let c = Config::from_toml(&format!(
            "{rtsps}[http]\ntls_from_rtsps = true\ntls_cert = {:?}\ntls_key = {:?}\n",
            p("hc.pem"),
            p("hk.pem")
        ))
        .unwrap();
        assert_eq!(
            c.http.tls_pair(&c.rtsps),
            Some((dir.join("hc.pem"), dir.join("hk.pem")))
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

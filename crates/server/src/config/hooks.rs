//! `[hooks]`: what the server tells the outside world about its events — signed JSON
//! POSTs to webhooks (`[[hooks.webhook]]`) and programs run per event
//! (`[[hooks.command]]`, argv without a shell, for MediaMTX's `runOn…` migrants).

use std::time::Duration;

use serde::Deserialize;
use sluice_hub::ServerEvent;

use super::ConfigError;

/// `[hooks]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HooksConfig {
    /// Webhook targets.
    pub webhook: Vec<WebhookConfig>,
    /// Command hooks.
    pub command: Vec<CommandConfig>,
    /// How many command hooks may run at once (all hooks together); events wait in
    /// each hook's queue meanwhile.
    pub max_concurrent_commands: usize,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            webhook: Vec::new(),
            command: Vec::new(),
            max_concurrent_commands: 4,
        }
    }
}

/// `[[hooks.webhook]]`: one receiver of JSON POSTs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The target's name in metrics and logs (default: `webhook-<index>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Where to POST: an `http://` or `https://` URL.
    pub url: String,
    /// The event names it gets (see the README); empty: every event.
    #[serde(default)]
    pub events: Vec<String>,
    /// Key of the `X-Sluice-Signature: sha256=<hex HMAC-SHA256 of the body>` header;
    /// without it requests are not signed.
    #[serde(default)]
    pub secret: Option<String>,
    /// How long one attempt may take (connect, send, answer).
    #[serde(
        default = "default_webhook_timeout",
        deserialize_with = "super::de_duration"
    )]
    pub timeout: Duration,
    /// Attempts per event, the first included (retries follow 5xx, 429, timeouts and
    /// connection errors, with exponential backoff and jitter).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Events waiting for this target; more are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

/// `[[hooks.command]]`: a program run for each matching event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The hook's name in metrics and logs (default: `command-<index>`).
    #[serde(default)]
    pub name: Option<String>,
    /// The program and its arguments, run without a shell. The event's JSON comes on
    /// its standard input; `SLUICE_EVENT`, `SLUICE_EVENT_ID`, `SLUICE_PATH` and
    /// `SLUICE_SESSION` are set.
    pub argv: Vec<String>,
    /// The event names it runs for; empty: every event.
    #[serde(default)]
    pub events: Vec<String>,
    /// A run still going after this is killed.
    #[serde(
        default = "default_command_timeout",
        deserialize_with = "super::de_duration"
    )]
    pub timeout: Duration,
    /// Events waiting for a run; more are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_webhook_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_command_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_attempts() -> u32 {
    5
}

fn default_queue() -> usize {
    256
}

/// Largest per-hook queue and attempt count accepted (memory and time stay bounded).
const MAX_QUEUE: usize = 65536;
const MAX_ATTEMPTS: u32 = 20;

impl WebhookConfig {
    /// The target's label: its name, or `webhook-<index>`.
    pub fn label(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("webhook-{index}"))
    }
}

impl CommandConfig {
    /// The hook's label: its name, or `command-<index>`.
    pub fn label(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("command-{index}"))
    }
}

fn check_events(key: &str, events: &[String]) -> Result<(), ConfigError> {
    for e in events {
        if !ServerEvent::NAMES.contains(&e.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "{key}.events: unknown event {e:?}; known: {}",
                ServerEvent::NAMES.join(", ")
            )));
        }
    }
    Ok(())
}

/// Checks the URL is `http(s)://host…`.
fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::Invalid(format!("{key}.url {url:?}: {why}"));
    let uri: axum::http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(bad("only http:// and https:// are supported")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad(
            "credentials in the URL are not sent; sign with `secret` instead",
        ));
    }
    Ok(())
}

impl HooksConfig {
    /// Checks URLs, event names, argv, bounds and that labels are unique.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut labels = std::collections::HashSet::new();
        for (i, w) in self.webhook.iter().enumerate() {
            let key = format!("hooks.webhook[{i}]");
            check_url(&key, &w.url)?;
            check_events(&key, &w.events)?;
            if w.max_attempts == 0 || w.max_attempts > MAX_ATTEMPTS {
                return Err(ConfigError::Invalid(format!(
                    "{key}.max_attempts must be 1..={MAX_ATTEMPTS}"
                )));
            }
            if w.queue == 0 || w.queue > MAX_QUEUE {
                return Err(ConfigError::Invalid(format!(
                    "{key}.queue must be 1..={MAX_QUEUE}"
                )));
            }
            if w.timeout.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{key}.timeout must be above 0"
                )));
            }
            if !labels.insert(w.label(i)) {
                return Err(ConfigError::Invalid(format!(
                    "{key}.name {:?} is used twice",
                    w.label(i)
                )));
            }
        }
        for (i, c) in self.command.iter().enumerate() {
            let key = format!("hooks.command[{i}]");
            if c.argv.first().is_none_or(|p| p.is_empty()) {
                return Err(ConfigError::Invalid(format!(
                    "{key}.argv must name a program"
                )));
            }
            check_events(&key, &c.events)?;
            if c.queue == 0 || c.queue > MAX_QUEUE {
                return Err(ConfigError::Invalid(format!(
                    "{key}.queue must be 1..={MAX_QUEUE}"
                )));
            }
            if c.timeout.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{key}.timeout must be above 0"
                )));
            }
            if !labels.insert(c.label(i)) {
                return Err(ConfigError::Invalid(format!(
                    "{key}.name {:?} is used twice",
                    c.label(i)
                )));
            }
        }
        if self.max_concurrent_commands == 0 {
            return Err(ConfigError::Invalid(
                "hooks.max_concurrent_commands must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn webhooks_need_http_urls_and_known_events() {
        let ok = Config::from_toml(
            "[[hooks.webhook]]\nurl = \"https://example.com/hook\"\nevents = [\"reader_started\"]\nsecret = \"s\"\n\
             [[hooks.command]]\nargv = [\"/bin/true\"]\n",
        )
        .unwrap();
        assert_eq!(ok.hooks.webhook[0].max_attempts, 5);
        assert_eq!(ok.hooks.command[0].label(0), "command-0");
        for bad in [
            "[[hooks.webhook]]\nurl = \"ftp://example.com/\"\n",
            "[[hooks.webhook]]\nurl = \"not a url\"\n",
            "[[hooks.webhook]]\nurl = \"/relative\"\n",
            "[[hooks.webhook]]\nurl = \"http://u:p@x/\"\n",
            "[[hooks.webhook]]\nurl = \"http://x/\"\nevents = [\"nope\"]\n",
            "[[hooks.webhook]]\nurl = \"http://x/\"\nmax_attempts = 0\n",
            "[[hooks.webhook]]\nurl = \"http://x/\"\nname = \"a\"\n[[hooks.webhook]]\nurl = \"http://y/\"\nname = \"a\"\n",
            "[[hooks.command]]\nargv = []\n",
            "[[hooks.command]]\nargv = [\"/bin/true\"]\nshell = true\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }
}

//! Server configuration: the TOML file's schema, its built-in defaults and its validation.
//!
//! Every table rejects unknown keys so that a typo is a start-up error naming the key,
//! never a silently ignored setting.

pub mod tls;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer};

use crate::auth::validate_users;
pub use crate::auth::{AuthConfig, Permission, UserConfig};

mod http;
pub use http::{
    is_reserved_path, parse_token_hash, HttpConfig, TokenConfig, RESERVED_FIRST_SEGMENTS,
};
mod hls;
pub use hls::HlsConfig;
mod hooks;
mod layers;
mod record;
mod webrtc;
pub use hooks::{CommandConfig, HooksConfig, WebhookConfig};
pub use layers::{check_toml, ConfigSource, Diagnostic};
pub use record::{parse_size, Fsync, MinFree, PathRecordSettings, RecordConfig, RecordOverrides};
pub use webrtc::{BFramePolicy, WebrtcConfig};
pub mod reload;
pub use reload::{ConfigControl, ReloadStatus, Reloader};

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys or bad values.
    #[error("invalid config: {0}")]
    Parse(#[from] toml::de::Error),
    /// The values parse but do not make sense together.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The RTSP listener and its media transports.
    pub rtsp: RtspConfig,
    /// Logging.
    pub log: LogConfig,
    /// Stored media served on demand under `vod/`.
    pub vod: VodConfig,
    /// The built-in demo stream.
    pub demo: DemoConfig,
    /// Paths with a configured source, by name.
    pub paths: BTreeMap<String, PathConfig>,
    /// Users and their permissions; none means open access.
    pub users: Vec<UserConfig>,
    /// Authentication behaviour.
    pub auth: AuthConfig,
    /// Resource limits.
    pub limits: LimitsConfig,
    /// RTSP over TLS.
    pub rtsps: RtspsConfig,
    /// The HTTP listener (API, metrics).
    pub http: HttpConfig,
    /// Webhooks and command hooks.
    pub hooks: HooksConfig,
    /// LL-HLS delivery of live paths.
    pub hls: HlsConfig,
    /// WebRTC delivery (WHEP) and ingest (WHIP).
    pub webrtc: WebrtcConfig,
    /// Server-side recording.
    pub record: RecordConfig,
    /// Where the values came from (file, environment, flags); not a TOML key.
    #[serde(skip)]
    pub source: ConfigSource,
}

/// `[vod]`: files below `dir` are served at `rtsp://HOST:PORT/vod/<relative path>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VodConfig {
    /// Serve files at all (needs `dir`).
    pub enabled: bool,
    /// The directory served; unset means no files are served.
    pub dir: Option<PathBuf>,
}

impl Default for VodConfig {
    fn default() -> Self {
        VodConfig {
            enabled: true,
            dir: None,
        }
    }
}

/// `[demo]`: a short looping clip built into the binary, so a fresh install has a stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Offer the demo stream.
    pub enabled: bool,
    /// The path it is served at.
    pub path: String,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: true,
            path: "demo".to_owned(),
        }
    }
}

/// `[paths.NAME]`: a path fed by a configured source rather than by a publisher, or (with
/// `source = "publisher"`, the default) a published path's own settings, such as
/// `record = true`.
///
/// A name starting with `~` is a regular expression matched against requested paths;
/// `$1`, `$name`, … in `source` are replaced by its captures (e.g.
/// `[paths."~^relay/(.+)$"] source = "rtsp://origin:8554/$1"`). Regex paths are always
/// started on demand. Exact names win over regexes; regexes are tried in name order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathConfig {
    /// Where the media comes from: `file:///abs/path.mp4` (or `file://relative.mkv`,
    /// relative to the working directory) plays a file as a live stream shared by all
    /// readers; `rtsp://[user:pass@]host[:port]/path` pulls from a camera or another server;
    /// `publisher` (the default) leaves the path to publishers (RTSP RECORD, WHIP).
    #[serde(default = "default_source")]
    pub source: String,
    /// File sources: start again at the end, with continuous timestamps.
    #[serde(rename = "loop", default)]
    pub looping: bool,
    /// RTSP sources: user name (instead of, or overriding, one in the URL).
    #[serde(default)]
    pub source_user: Option<String>,
    /// RTSP sources: password (instead of, or overriding, one in the URL).
    #[serde(default)]
    pub source_pass: Option<String>,
    /// RTSP sources: connect only while readers want the path (default false; regex
    /// paths are always on demand).
    #[serde(default)]
    pub source_on_demand: Option<bool>,
    /// On-demand sources: how long a reader's DESCRIBE waits for the source to start.
    #[serde(default = "default_start_timeout", deserialize_with = "de_duration")]
    pub source_on_demand_start_timeout: Duration,
    /// On-demand sources: how long after the last reader leaves the source is closed.
    #[serde(default = "default_close_after", deserialize_with = "de_duration")]
    pub source_on_demand_close_after: Duration,
    /// RTSP sources: `auto` (UDP first, TCP when UDP is refused or no packet arrives
    /// within 3 s), `udp` or `tcp`.
    #[serde(default)]
    pub source_transport: SourceTransport,
    /// RTSP sources: the cap of the reconnect backoff (1 s doubling, with jitter).
    #[serde(default = "default_reconnect_max", deserialize_with = "de_duration")]
    pub source_reconnect_max: Duration,
    /// RTSP sources: a playing upstream that sends no RTP packet for this long (its
    /// connection may stay open, e.g. a hung camera) is dropped and reconnected, over TCP
    /// and UDP alike; readers keep their sessions and continuous sequence numbers.
    /// Default 5 s (see [`PathConfig::source_timeout`]); refused on file sources.
    #[serde(
        default,
        rename = "source_timeout",
        deserialize_with = "de_opt_duration"
    )]
    pub source_timeout_set: Option<Duration>,
    /// Record this path (true) or never (false, even if `[record] paths` matches it).
    #[serde(default)]
    pub record: Option<bool>,
    /// Overrides `[record] part_duration` for this path.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub record_part_duration: Option<Duration>,
    /// Overrides `[record] segment_duration` for this path.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub record_segment_duration: Option<Duration>,
    /// Overrides `[record] fsync` for this path.
    #[serde(default)]
    pub record_fsync: Option<Fsync>,
    /// Overrides `[record] retain_age` for this path.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub record_retain_age: Option<Duration>,
    /// Overrides `[record] retain_bytes` for this path (a size: `"10GB"`, `"512MiB"`).
    #[serde(default, deserialize_with = "record::de_opt_size")]
    pub record_retain_bytes: Option<u64>,
    /// Overrides `[record] pre_roll` for this path.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub record_pre_roll: Option<Duration>,
}

fn default_source() -> String {
    "publisher".to_owned()
}

fn default_start_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_close_after() -> Duration {
    Duration::from_secs(10)
}
fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
/// `source_timeout` when the path does not set it.
const DEFAULT_SOURCE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bounds of `source_timeout`: shorter would mistake a normal gap between frames (a 2 fps
/// camera) for a hung upstream; longer leaves readers on a frozen picture for minutes.
const SOURCE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(500)..=Duration::from_secs(600);

/// How a pull source asks its upstream for media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceTransport {
    /// UDP first, TCP when UDP is refused or silent.
    #[default]
    Auto,
    /// UDP only.
    Udp,
    /// TCP interleaved only.
    Tcp,
}

/// What kind of source a path has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A file played as a live stream.
    File(PathBuf),
    /// An RTSP pull.
    Rtsp(String),
    /// Publishers feed it (the entry only holds the path's settings).
    Publisher,
}

impl PathConfig {
    /// This path's `record*` keys.
    pub fn recording(&self) -> RecordOverrides {
        RecordOverrides {
            record: self.record,
            record_part_duration: self.record_part_duration,
            record_segment_duration: self.record_segment_duration,
            record_fsync: self.record_fsync,
            record_retain_age: self.record_retain_age,
            record_retain_bytes: self.record_retain_bytes,
            record_pre_roll: self.record_pre_roll,
        }
    }

    /// RTSP sources: how long a playing upstream may send no RTP before it is dropped and
    /// reconnected (`source_timeout`, default 5 s).
    pub fn source_timeout(&self) -> Duration {
        self.source_timeout_set.unwrap_or(DEFAULT_SOURCE_TIMEOUT)
    }

    /// The file of a `file://` source.
    pub fn file(&self) -> Option<PathBuf> {
        self.source.strip_prefix("file://").map(PathBuf::from)
    }

    /// The source's kind, or why it is not supported.
    pub fn kind(&self) -> Result<SourceKind, String> {
        if let Some(f) = self.file() {
            return Ok(SourceKind::File(f));
        }
        if self.source.starts_with("rtsp://") {
            return Ok(SourceKind::Rtsp(self.source.clone()));
        }
        if self.source == "publisher" {
            return Ok(SourceKind::Publisher);
        }
        Err(format!(
            "unsupported source {:?}; supported: file://, rtsp://, publisher",
            self.source
        ))
    }

    /// Whether an RTSP source is started only on demand.
    pub fn on_demand(&self, is_regex: bool) -> bool {
        is_regex || self.source_on_demand.unwrap_or(false)
    }
}

/// A configured path resolved for a requested name: regex captures substituted.
#[derive(Debug, Clone)]
pub struct ResolvedPath {
    /// The configuration name it came from (the regex for regex paths).
    pub name: String,
    /// The configuration with `source` expanded.
    pub config: PathConfig,
    /// Whether it came from a regex path.
    pub is_regex: bool,
}

impl Config {
    /// The configured source for a requested path: the exact name, else the first
    /// matching regex path (in name order) with its captures expanded into `source`.
    pub fn resolve_path(&self, path: &str) -> Option<ResolvedPath> {
        if let Some(p) = self.paths.get(path) {
            return Some(ResolvedPath {
                name: path.to_owned(),
                config: p.clone(),
                is_regex: false,
            });
        }
        for (name, p) in &self.paths {
            let Some(pattern) = name.strip_prefix('~') else {
                continue;
            };
            let Ok(re) = regex::Regex::new(pattern) else {
                continue;
            };
            if let Some(caps) = re.captures(path) {
                let mut source = String::new();
                caps.expand(&p.source, &mut source);
                let mut config = p.clone();
                config.source = source;
                return Some(ResolvedPath {
                    name: name.clone(),
                    config,
                    is_regex: true,
                });
            }
        }
        None
    }
}

/// A media transport a reader or publisher may ask for in SETUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// RTP over UDP unicast, server ports `rtp_port`/`rtp_port + 1`.
    Udp,
    /// RTP over UDP multicast, groups from `multicast_range` (readers only).
    Multicast,
    /// RTP interleaved in the RTSP TCP connection.
    Tcp,
}

/// `[rtsp]`: the RTSP listener and its media transports.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtspConfig {
    /// Address of the RTSP (TCP) listener.
    pub listen: SocketAddr,
    /// Server UDP port for RTP; RTCP uses `rtp_port + 1`. Must be even.
    pub rtp_port: u16,
    /// IPv4 range multicast groups are handed out from, one group per path.
    #[serde(deserialize_with = "de_ipv4net")]
    pub multicast_range: Ipv4Net,
    /// UDP port of a path's first track in its multicast group; track `i` uses
    /// `multicast_rtp_port + 2*i` for RTP and one more for RTCP. Must be even.
    pub multicast_rtp_port: u16,
    /// IP TTL of multicast packets.
    pub multicast_ttl: u8,
    /// Transports offered to clients; others get 461 Unsupported Transport.
    pub transports: Vec<TransportKind>,
    /// A session with no request, RTCP (or, for publishers, RTP) for this long is ended.
    #[serde(deserialize_with = "de_duration")]
    pub session_timeout: Duration,
    /// When true, a new publisher on a path that already has one replaces it;
    /// when false it is refused with 455 (the path is busy).
    pub override_publisher: bool,
    /// Packets queued per reader before a slow reader loses packets (UDP) or is
    /// disconnected (TCP, once the queue stays full for `slow_reader_timeout`).
    pub reader_queue: usize,
    /// How long a TCP reader's queue may stay full before it is disconnected.
    #[serde(deserialize_with = "de_duration")]
    pub slow_reader_timeout: Duration,
    /// Keep each live path's packets since its last video keyframe, so new readers start
    /// decoding at once (bounded: 4096 packets / 8 MiB per path).
    pub gop_cache: bool,
    /// Live streams (publishers, pulls): collect up to this much media, from a batch's
    /// first packet, before handing it to the readers, instead of a frame at a time.
    /// Each reader then gets several frames per send (one vectored `sendmsg` per TCP reader), which
    /// saves CPU per reader, for up to this much added latency. 0 (the default): a batch
    /// per frame. At most [`MAX_FANOUT_WINDOW`].
    #[serde(deserialize_with = "de_duration")]
    pub fanout_window: Duration,
}

/// Longest `rtsp.fanout_window`: a live stream held longer would stall players.
pub const MAX_FANOUT_WINDOW: Duration = Duration::from_millis(200);

impl Default for RtspConfig {
    fn default() -> Self {
        RtspConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8554)),
            rtp_port: 8000,
            multicast_range: Ipv4Net::new(Ipv4Addr::new(239, 255, 0, 0), 16)
                .unwrap_or_else(|_| unreachable!("16 is a valid prefix length")),
            multicast_rtp_port: 8002,
            multicast_ttl: 1,
            transports: vec![
                TransportKind::Udp,
                TransportKind::Multicast,
                TransportKind::Tcp,
            ],
            session_timeout: Duration::from_secs(60),
            override_publisher: false,
            reader_queue: 4096,
            slow_reader_timeout: Duration::from_secs(5),
            gop_cache: true,
            fanout_window: Duration::ZERO,
        }
    }
}

/// `[limits]`: bounds on what clients may make the server hold. Each, when exceeded,
/// gets a clear status or a close, and a log line.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open RTSP/RTSPS connections in total; more are closed at once.
    pub max_connections: usize,
    /// Open connections per client IP.
    pub max_connections_per_ip: usize,
    /// Live sessions (readers and publishers); more get 503.
    pub max_sessions: usize,
    /// Reader sessions per path; more get 453 Not Enough Bandwidth.
    pub max_readers_per_path: usize,
    /// Largest request head (request line + headers), bytes; larger gets 400 and a close.
    pub max_head_bytes: usize,
    /// Most header lines in a request.
    pub max_headers: usize,
    /// Largest request body (e.g. ANNOUNCE SDP), bytes; larger gets 413 and a close.
    pub max_body_bytes: usize,
    /// Time a client has to finish a request once it started sending it (slowloris); 408.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// A connection without sessions that sends nothing for this long is closed.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 20_000,
            max_connections_per_ip: 1_000,
            max_sessions: 20_000,
            max_readers_per_path: 10_000,
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// `[rtsps]`: RTSP over TLS. Enabled when `cert` and `key` are given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtspsConfig {
    /// Address of the RTSPS listener.
    pub listen: SocketAddr,
    /// PEM certificate chain file.
    pub cert: Option<PathBuf>,
    /// PEM private key file.
    pub key: Option<PathBuf>,
    /// Refuse everything but OPTIONS over plain RTSP (clients must use rtsps://).
    pub require_tls: bool,
}

impl Default for RtspsConfig {
    fn default() -> Self {
        RtspsConfig {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8322)),
            cert: None,
            key: None,
            require_tls: false,
        }
    }
}

impl RtspsConfig {
    /// Whether RTSPS is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() && self.key.is_some()
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `sluice_server=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
        }
    }
}

impl Config {
    /// Parses and validates a configuration from TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text)
    }

    /// Checks the relations between values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.hooks.validate()?;
        let r = &self.rtsp;
        if r.rtp_port % 2 != 0 || r.rtp_port == u16::MAX {
            return Err(ConfigError::Invalid(format!(
                "rtsp.rtp_port must be even and below 65535, got {}",
                r.rtp_port
            )));
        }
        if r.multicast_rtp_port % 2 != 0 || r.multicast_rtp_port > 65000 {
            return Err(ConfigError::Invalid(format!(
                "rtsp.multicast_rtp_port must be even and at most 65000, got {}",
                r.multicast_rtp_port
            )));
        }
        if !r.multicast_range.network().is_multicast() {
            return Err(ConfigError::Invalid(format!(
                "rtsp.multicast_range {} is not an IPv4 multicast range",
                r.multicast_range
            )));
        }
        if r.transports.is_empty() {
            return Err(ConfigError::Invalid(
                "rtsp.transports must list at least one of udp, multicast, tcp".into(),
            ));
        }
        if r.session_timeout < Duration::from_secs(1) {
            return Err(ConfigError::Invalid(
                "rtsp.session_timeout must be at least 1s".into(),
            ));
        }
        if r.reader_queue < 16 {
            return Err(ConfigError::Invalid(
                "rtsp.reader_queue must be at least 16".into(),
            ));
        }
        if r.fanout_window > MAX_FANOUT_WINDOW {
            return Err(ConfigError::Invalid(format!(
                "rtsp.fanout_window must be at most {}ms, got {:?}",
                MAX_FANOUT_WINDOW.as_millis(),
                r.fanout_window
            )));
        }
        if let (true, Some(dir)) = (self.vod.enabled, &self.vod.dir) {
            if !dir.is_dir() {
                return Err(ConfigError::Invalid(format!(
                    "vod.dir {} is not a directory",
                    dir.display()
                )));
            }
        }
        for (name, p) in &self.paths {
            let is_regex = name.starts_with('~');
            let bad = |why: String| Err(ConfigError::Invalid(format!("paths.{name:?}: {why}")));
            if is_regex {
                if let Err(e) = regex::Regex::new(&name[1..]) {
                    return bad(format!("invalid regular expression: {e}"));
                }
            } else {
                if sluice_rtsp::server::url::request_path(&format!("rtsp://h/{name}"))
                    .ok()
                    .as_deref()
                    != Some(name.as_str())
                {
                    return bad("not a valid path name".into());
                }
                if name == "vod" || name.starts_with("vod/") {
                    return bad("vod/ is reserved for stored files".into());
                }
            }
            match p.kind() {
                Err(why) => return bad(why),
                Ok(SourceKind::File(f)) => {
                    if !is_regex && !f.is_file() {
                        return bad(format!("source file {} does not exist", f.display()));
                    }
                    let rtsp_only = p.source_user.is_some()
                        || p.source_pass.is_some()
                        || p.source_on_demand.is_some()
                        || p.source_transport != SourceTransport::Auto
                        || p.source_timeout_set.is_some();
                    if rtsp_only {
                        return bad("source_user/source_pass/source_on_demand/source_transport/source_timeout apply to rtsp:// sources only".into());
                    }
                }
                Ok(SourceKind::Publisher) => {
                    let source_only = p.looping
                        || p.source_user.is_some()
                        || p.source_pass.is_some()
                        || p.source_on_demand.is_some()
                        || p.source_transport != SourceTransport::Auto
                        || p.source_timeout_set.is_some();
                    if source_only {
                        return bad(
                            "loop and source_* keys need a file:// or rtsp:// source".into()
                        );
                    }
                    if is_regex {
                        return bad("a regex path needs a source (record published paths by pattern with [record] paths)".into());
                    }
                }
                Ok(SourceKind::Rtsp(_)) => {
                    if p.looping {
                        return bad("loop applies to file:// sources only".into());
                    }
                    if is_regex && p.source_on_demand == Some(false) {
                        return bad("regex paths are always on demand".into());
                    }
                    if p.source_reconnect_max < Duration::from_secs(1) {
                        return bad("source_reconnect_max must be at least 1s".into());
                    }
                    if !SOURCE_TIMEOUT_RANGE.contains(&p.source_timeout()) {
                        return bad(format!(
                            "source_timeout must be between 500ms and 10m, got {}",
                            humantime::format_duration(p.source_timeout())
                        ));
                    }
                }
            }
        }
        validate_users(&self.users).map_err(ConfigError::Invalid)?;
        if self.demo.enabled && self.paths.contains_key(&self.demo.path) {
            return Err(ConfigError::Invalid(format!(
                "demo.path {:?} is also configured under [paths]",
                self.demo.path
            )));
        }
        let l = &self.limits;
        if l.max_head_bytes < 1024 || l.max_headers < 8 || l.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits: max_head_bytes and max_body_bytes must be at least 1024, max_headers at least 8".into(),
            ));
        }
        if l.max_connections == 0
            || l.max_connections_per_ip == 0
            || l.max_sessions == 0
            || l.max_readers_per_path == 0
        {
            return Err(ConfigError::Invalid(
                "limits: maxima must be at least 1".into(),
            ));
        }
        if self.rtsps.cert.is_some() != self.rtsps.key.is_some() {
            return Err(ConfigError::Invalid(
                "rtsps: cert and key go together".into(),
            ));
        }
        for f in [&self.rtsps.cert, &self.rtsps.key].into_iter().flatten() {
            if !f.is_file() {
                return Err(ConfigError::Invalid(format!(
                    "rtsps: {} does not exist",
                    f.display()
                )));
            }
        }
        if self.rtsps.require_tls && !self.rtsps.enabled() {
            return Err(ConfigError::Invalid(
                "rtsps.require_tls needs rtsps.cert and rtsps.key".into(),
            ));
        }
        self.http.validate(self)?;
        self.hls.validate()?;
        self.webrtc.validate()?;
        let overrides: Vec<(&str, RecordOverrides)> = self
            .paths
            .iter()
            .map(|(n, p)| (n.as_str(), p.recording()))
            .collect();
        self.record
            .validate(overrides.iter().map(|(n, o)| (*n, o)))?;
        Ok(())
    }

    /// Whether clients may use `kind`.
    pub fn allows(&self, kind: TransportKind) -> bool {
        self.rtsp.transports.contains(&kind)
    }
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {s:?} ({e}); use e.g. \"60s\" or \"1m\""
        ))
    })
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_ipv4net<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Net, D::Error> {
    let s = String::deserialize(d)?;
    s.parse().map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid IPv4 range {s:?} ({e}); use e.g. \"239.255.0.0/16\""
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.rtsp.listen.to_string(), "0.0.0.0:8554");
        assert_eq!(c.rtsp.rtp_port, 8000);
        assert_eq!(c.rtsp.multicast_rtp_port, 8002);
        assert_eq!(c.rtsp.multicast_range.to_string(), "239.255.0.0/16");
        assert_eq!(c.rtsp.session_timeout, Duration::from_secs(60));
        assert_eq!(c.rtsp.transports.len(), 3);
    }

    #[test]
    fn the_issue_example_parses() {
        let c = Config::from_toml(
            r#"
            [rtsp]
            listen = "0.0.0.0:8554"
            rtp_port = 8000
            multicast_range = "239.255.0.0/16"
            multicast_rtp_port = 8002
            transports = ["udp", "multicast", "tcp"]
            session_timeout = "60s"
            "#,
        )
        .unwrap();
        assert!(c.allows(TransportKind::Multicast));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = Config::from_toml("[rtsp]\nlisten_addr = \"0.0.0.0:1\"\n").unwrap_err();
        assert!(e.to_string().contains("listen_addr"), "{e}");
        let e = Config::from_toml("[rtps]\n").unwrap_err();
        assert!(e.to_string().contains("rtps"), "{e}");
    }

    #[test]
    fn paths_and_vod() {
        let dir = std::env::temp_dir();
        let file = dir.join(format!("sluice-cfg-{}.mp4", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let c = Config::from_toml(&format!(
            "[vod]\ndir = {:?}\n[paths.cam]\nsource = \"file://{}\"\nloop = true\n",
            dir.display().to_string(),
            file.display()
        ))
        .unwrap();
        assert!(c.paths["cam"].looping);
        assert_eq!(c.paths["cam"].file().unwrap(), file);
        let c = Config::from_toml(
            "[paths.cam1]\nsource = \"rtsp://u:p@10.0.0.5:554/s\"\nsource_on_demand = true\nsource_transport = \"tcp\"\n\
             [paths.\"~^relay/(.+)$\"]\nsource = \"rtsp://origin:8554/$1\"\n",
        )
        .unwrap();
        let r = c.resolve_path("relay/cam/a").unwrap();
        assert!(r.is_regex && r.config.on_demand(true));
        assert_eq!(r.config.source, "rtsp://origin:8554/cam/a");
        assert_eq!(
            c.resolve_path("cam1").unwrap().config.source_transport,
            SourceTransport::Tcp
        );
        assert!(c.resolve_path("other").is_none());
        assert_eq!(
            c.paths["cam1"].source_on_demand_close_after,
            Duration::from_secs(10)
        );
        assert_eq!(c.paths["cam1"].source_timeout(), Duration::from_secs(5));
        let c =
            Config::from_toml("[paths.cam]\nsource = \"rtsp://x/\"\nsource_timeout = \"1500ms\"\n")
                .unwrap();
        assert_eq!(c.paths["cam"].source_timeout(), Duration::from_millis(1500));
        for bad in ["100ms", "1h"] {
            let e = Config::from_toml(&format!(
                "[paths.cam]\nsource = \"rtsp://x/\"\nsource_timeout = \"{bad}\"\n"
            ))
            .unwrap_err();
            assert!(e.to_string().contains("source_timeout"), "{bad}: {e}");
        }
        let e = Config::from_toml(&format!(
            "[paths.cam]\nsource = \"file://{}\"\nsource_timeout = \"5s\"\n",
            file.display()
        ))
        .unwrap_err();
        assert!(e.to_string().contains("rtsp:// sources only"), "{e}");
        let e = Config::from_toml("[paths.\"~^(\"]\nsource = \"rtsp://x/\"\n").unwrap_err();
        assert!(e.to_string().contains("regular expression"), "{e}");
        let e = Config::from_toml("[paths.a]\nsource = \"rtsp://x/\"\nloop = true\n").unwrap_err();
        assert!(e.to_string().contains("file:// sources only"), "{e}");
        let e = Config::from_toml("[paths.cam]\nsource = \"rtmp://x\"\n").unwrap_err();
        assert!(e.to_string().contains("unsupported source"), "{e}");
        let e =
            Config::from_toml("[paths.cam]\nsource = \"file:///nonexistent.mp4\"\n").unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e =
            Config::from_toml("[paths.cam]\nsource = \"file:///x\"\nloops = true\n").unwrap_err();
        assert!(e.to_string().contains("loops"), "{e}");
        let e = Config::from_toml("[vod]\ndir = \"/nonexistent-dir\"\n").unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(Config::from_toml("[rtsp]\nrtp_port = 8001\n").is_err());
        assert!(Config::from_toml("[rtsp]\nsession_timeout = \"soon\"\n").is_err());
        assert!(Config::from_toml("[rtsp]\nmulticast_range = \"10.0.0.0/8\"\n").is_err());
        assert!(Config::from_toml("[rtsp]\ntransports = [\"quic\"]\n").is_err());
        assert!(Config::from_toml("[rtsp]\ntransports = []\n").is_err());
        let e = Config::from_toml("[rtsp]\nfanout_window = \"1s\"\n").unwrap_err();
        assert!(e.to_string().contains("fanout_window"), "{e}");
    }

    #[test]
    fn fanout_window_is_off_by_default_and_takes_a_duration() {
        assert_eq!(
            Config::from_toml("").unwrap().rtsp.fanout_window,
            Duration::ZERO
        );
        let c = Config::from_toml("[rtsp]\nfanout_window = \"40ms\"\n").unwrap();
        assert_eq!(c.rtsp.fanout_window, Duration::from_millis(40));
    }
}

//! RTSP authentication: `Basic` (RFC 7617) and `Digest` (RFC 7616, RFC 2617)
//! challenge parsing, response computation and verification.
//!
//! The client side ([`ClientAuth`]) answers a camera's `401 Unauthorized`;
//! the server side ([`parse_authorization`], [`verify_digest`],
//! [`verify_basic`]) checks what a client sent. Only `qop=auth` (or no qop,
//! RFC 2069 style) is implemented; `auth-int` is never chosen.
//!
//! Nothing here reads a clock or a socket; the client's `cnonce` comes from
//! `rand` unless the caller installs its own source
//! ([`ClientAuth::with_cnonce_source`]).

use std::fmt;

use base64::Engine as _;
use md5::Md5;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

/// Longest offending value reproduced in an [`AuthError`].
const MAX_ECHO: usize = 80;

/// Truncates `s` for error messages.
fn echo(s: &str) -> String {
    s.chars().take(MAX_ECHO).collect()
}

/// An authentication header could not be used.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The header value was empty.
    #[error("empty authentication header")]
    Empty,
    /// No challenge with a supported scheme and algorithm was found.
    #[error("no supported authentication challenge in {0:?}")]
    NoSupportedChallenge(String),
    /// The scheme is neither `Basic` nor `Digest`.
    #[error("unsupported authentication scheme {0:?}")]
    UnsupportedScheme(String),
    /// The `algorithm` parameter names an unsupported hash.
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A required parameter is missing.
    #[error("missing {0} parameter")]
    MissingParameter(&'static str),
    /// The value is malformed (for example invalid base64 in `Basic`).
    #[error("malformed authentication header {0:?}")]
    Malformed(String),
}

/// A Digest hash algorithm (RFC 7616 §3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// `MD5`, the default when `algorithm` is absent.
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256`.
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
}

impl DigestAlgorithm {
    /// Parses an `algorithm` value case-insensitively (quotes already removed).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        [
            DigestAlgorithm::Md5,
            DigestAlgorithm::Md5Sess,
            DigestAlgorithm::Sha256,
            DigestAlgorithm::Sha256Sess,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(s))
    }

    /// The canonical token: `MD5`, `MD5-sess`, `SHA-256`, `SHA-256-sess`.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Md5 => "MD5",
            DigestAlgorithm::Md5Sess => "MD5-sess",
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    /// True for the `-sess` variants (HA1 bound to nonce and cnonce).
    pub fn is_session(self) -> bool {
        matches!(self, DigestAlgorithm::Md5Sess | DigestAlgorithm::Sha256Sess)
    }

    /// Lowercase hex digest of `data` with this algorithm's hash.
    pub fn hex_hash(self, data: &[u8]) -> String {
        match self {
            DigestAlgorithm::Md5 | DigestAlgorithm::Md5Sess => hex(&Md5::digest(data)),
            DigestAlgorithm::Sha256 | DigestAlgorithm::Sha256Sess => hex(&Sha256::digest(data)),
        }
    }

    /// Preference rank used by [`ClientAuth::new`]: higher is stronger.
    fn strength(self) -> u8 {
        match self {
            DigestAlgorithm::Sha256 => 5,
            DigestAlgorithm::Sha256Sess => 4,
            DigestAlgorithm::Md5 => 3,
            DigestAlgorithm::Md5Sess => 2,
        }
    }
}

impl fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lowercase hexadecimal encoding.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="…"`.
    Basic {
        /// Protection space (empty when the server omitted it).
        realm: String,
    },
    /// `Digest realm="…", nonce="…", …`.
    Digest {
        /// Protection space.
        realm: String,
        /// Server nonce.
        nonce: String,
        /// Opaque value to echo back.
        opaque: Option<String>,
        /// Hash algorithm (`MD5` when absent).
        algorithm: DigestAlgorithm,
        /// Offered qop values, lowercased (`auth`, `auth-int`); empty when
        /// absent (RFC 2069 compatibility).
        qop: Vec<String>,
        /// `stale=true`: the previous nonce expired but the credentials were
        /// right; retry with the new nonce.
        stale: bool,
    },
}

impl Challenge {
    /// Preference rank: Digest SHA-256 > Digest MD5 > Basic.
    fn strength(&self) -> u8 {
        match self {
            Challenge::Basic { .. } => 1,
            Challenge::Digest { algorithm, .. } => algorithm.strength(),
        }
    }
}

/// A lexed piece of an authentication header.
#[derive(Debug, PartialEq)]
enum Item {
    /// A bare token: an authentication scheme name.
    Scheme(String),
    /// `name=value` (name lowercased, value unquoted).
    Param(String, String),
}

/// Lexes `scheme param=value, param="quoted", scheme2 …`.
///
/// Tolerates missing commas between parameters, stray commas, spaces around
/// `=`, unterminated quotes (the value runs to the end) and backslash
/// escapes inside quotes. Never panics.
fn lex(value: &str) -> Vec<Item> {
    let chars: Vec<char> = value.chars().collect();
    let mut items = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
    };
    while i < chars.len() {
        while chars
            .get(i)
            .is_some_and(|c| c.is_whitespace() || *c == ',' || *c == ';')
        {
            i += 1;
        }
        let start = i;
        while chars
            .get(i)
            .is_some_and(|c| !c.is_whitespace() && !matches!(c, '=' | ',' | '"' | ';'))
        {
            i += 1;
        }
        let name: String = chars.get(start..i).unwrap_or_default().iter().collect();
        if name.is_empty() {
            // Junk such as a stray quote or '='; skip one character.
            if i < chars.len() {
                i += 1;
            }
            continue;
        }
        let after_name = i;
        skip_ws(&mut i);
        if chars.get(i) != Some(&'=') {
            i = after_name;
            items.push(Item::Scheme(name));
            continue;
        }
        i += 1;
        skip_ws(&mut i);
        let mut val = String::new();
        if chars.get(i) == Some(&'"') {
            i += 1;
            while let Some(&c) = chars.get(i) {
                i += 1;
                match c {
                    '"' => break,
                    '\\' => {
                        if let Some(&n) = chars.get(i) {
                            val.push(n);
                            i += 1;
                        }
                    }
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.get(i) {
                if c.is_whitespace() || c == ',' || c == ';' {
                    break;
                }
                val.push(c);
                i += 1;
            }
        }
        items.push(Item::Param(name.to_ascii_lowercase(), val));
    }
    items
}

/// Groups lexed items into `(scheme, params)` pairs; parameters before any
/// scheme are dropped.
fn group(items: Vec<Item>) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for item in items {
        match item {
            Item::Scheme(s) => out.push((s, Vec::new())),
            Item::Param(n, v) => {
                if let Some((_, params)) = out.last_mut() {
                    params.push((n, v));
                }
            }
        }
    }
    out
}

/// The first value of parameter `name`.
fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Builds a challenge from one scheme and its parameters.
fn build_challenge(scheme: &str, params: &[(String, String)]) -> Result<Challenge, AuthError> {
    if scheme.eq_ignore_ascii_case("basic") {
        return Ok(Challenge::Basic {
            realm: param(params, "realm").unwrap_or_default().to_owned(),
        });
    }
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(AuthError::UnsupportedScheme(echo(scheme)));
    }
    let algorithm = match param(params, "algorithm") {
        None => DigestAlgorithm::Md5,
        Some(a) if a.trim().is_empty() => DigestAlgorithm::Md5,
        Some(a) => {
            DigestAlgorithm::parse(a).ok_or_else(|| AuthError::UnsupportedAlgorithm(echo(a)))?
        }
    };
    let nonce = param(params, "nonce").ok_or(AuthError::MissingParameter("nonce"))?;
    Ok(Challenge::Digest {
        realm: param(params, "realm").unwrap_or_default().to_owned(),
        nonce: nonce.to_owned(),
        opaque: param(params, "opaque").map(str::to_owned),
        algorithm,
        qop: param(params, "qop")
            .map(|q| {
                q.split(',')
                    .map(|v| v.trim().to_ascii_lowercase())
                    .filter(|v| !v.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        stale: param(params, "stale").is_some_and(|s| s.trim().eq_ignore_ascii_case("true")),
    })
}

/// Parses one `WWW-Authenticate` header value, which may hold several
/// challenges (`Digest realm="a", nonce="b", Basic realm="a"`).
///
/// Scheme, parameter and algorithm names are case-insensitive; unknown
/// parameters, unknown schemes and challenges with unsupported algorithms
/// are skipped. Returns an error only when no usable challenge remains.
/// Several `WWW-Authenticate` headers are parsed one by one and their
/// results concatenated.
pub fn parse_www_authenticate(value: &str) -> Result<Vec<Challenge>, AuthError> {
    if value.trim().is_empty() {
        return Err(AuthError::Empty);
    }
    let challenges: Vec<Challenge> = group(lex(value))
        .iter()
        .filter_map(|(scheme, params)| build_challenge(scheme, params).ok())
        .collect();
    if challenges.is_empty() {
        return Err(AuthError::NoSupportedChallenge(echo(value)));
    }
    Ok(challenges)
}

/// Writes `s` as a quoted-string, escaping `"` and `\`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Writes a challenge for a server's `WWW-Authenticate` header, e.g.
/// `Digest realm="cam", nonce="abc", algorithm=SHA-256, qop="auth"`.
pub fn format_challenge(c: &Challenge) -> String {
    match c {
        Challenge::Basic { realm } => format!("Basic realm={}", quote(realm)),
        Challenge::Digest {
            realm,
            nonce,
            opaque,
            algorithm,
            qop,
            stale,
        } => {
            let mut s = format!("Digest realm={}, nonce={}", quote(realm), quote(nonce));
            if let Some(o) = opaque {
                s.push_str(&format!(", opaque={}", quote(o)));
            }
            s.push_str(&format!(", algorithm={algorithm}"));
            if !qop.is_empty() {
                s.push_str(&format!(", qop={}", quote(&qop.join(","))));
            }
            if *stale {
                s.push_str(", stale=TRUE");
            }
            s
        }
    }
}

/// A user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The HA1 value `H(username:realm:password)` a server may store instead of
/// the password (for the non-`-sess` algorithms; see [`Secret::Ha1`]).
pub fn digest_ha1(
    algorithm: DigestAlgorithm,
    username: &str,
    realm: &str,
    password: &str,
) -> String {
    algorithm.hex_hash(format!("{username}:{realm}:{password}").as_bytes())
}

/// Inputs of a Digest response computation.
struct DigestInput<'a> {
    algorithm: DigestAlgorithm,
    /// `H(username:realm:password)`.
    ha1_base: &'a str,
    nonce: &'a str,
    method: &'a str,
    uri: &'a str,
    /// `(qop, nc, cnonce)` when a qop is in use.
    qop: Option<(&'a str, &'a str, &'a str)>,
    /// cnonce for `-sess` HA1 (also used without qop by some peers).
    cnonce: Option<&'a str>,
}

/// Computes the `response` value (RFC 7616 §3.4.1).
fn digest_response(i: &DigestInput<'_>) -> String {
    let h = |s: String| i.algorithm.hex_hash(s.as_bytes());
    let ha1 = if i.algorithm.is_session() {
        h(format!(
            "{}:{}:{}",
            i.ha1_base,
            i.nonce,
            i.cnonce.unwrap_or_default()
        ))
    } else {
        i.ha1_base.to_owned()
    };
    let ha2 = h(format!("{}:{}", i.method, i.uri));
    match i.qop {
        Some((qop, nc, cnonce)) => h(format!("{ha1}:{}:{nc}:{cnonce}:{qop}:{ha2}", i.nonce)),
        None => h(format!("{ha1}:{}:{ha2}", i.nonce)),
    }
}

/// The challenge chosen by a [`ClientAuth`].
#[derive(Clone, Debug)]
enum Chosen {
    Basic,
    Digest {
        realm: String,
        nonce: String,
        opaque: Option<String>,
        algorithm: DigestAlgorithm,
        /// `qop=auth` was offered and will be used.
        qop_auth: bool,
        /// Nonce count for the current nonce.
        nc: u32,
    },
}

/// A source of client nonces.
type CnonceSource = Box<dyn FnMut() -> String + Send>;

/// Client-side authenticator: picks the strongest offered challenge (Digest
/// SHA-256 > Digest MD5 > Basic) and computes `Authorization` values.
///
/// With `qop=auth` each call uses a fresh `cnonce` and an incremented `nc`.
pub struct ClientAuth {
    creds: Credentials,
    chosen: Chosen,
    cnonce: CnonceSource,
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("creds", &self.creds)
            .field("chosen", &self.chosen)
            .finish_non_exhaustive()
    }
}

/// Picks the strongest challenge (first one wins ties).
fn choose(challenges: &[Challenge]) -> Option<Chosen> {
    let mut best: Option<&Challenge> = None;
    for c in challenges {
        if best.is_none_or(|b| c.strength() > b.strength()) {
            best = Some(c);
        }
    }
    Some(match best? {
        Challenge::Basic { .. } => Chosen::Basic,
        Challenge::Digest {
            realm,
            nonce,
            opaque,
            algorithm,
            qop,
            ..
        } => Chosen::Digest {
            realm: realm.clone(),
            nonce: nonce.clone(),
            opaque: opaque.clone(),
            algorithm: *algorithm,
            qop_auth: qop.iter().any(|q| q == "auth"),
            nc: 0,
        },
    })
}

/// A random 16-hex-digit client nonce.
fn random_cnonce() -> String {
    format!("{:016x}", rand::random::<u64>())
}

impl ClientAuth {
    /// Chooses the strongest of `challenges`; fails when none is usable.
    pub fn new(creds: Credentials, challenges: &[Challenge]) -> Result<Self, AuthError> {
        let chosen =
            choose(challenges).ok_or_else(|| AuthError::NoSupportedChallenge(String::new()))?;
        Ok(ClientAuth {
            creds,
            chosen,
            cnonce: Box::new(random_cnonce),
        })
    }

    /// Replaces the random cnonce generator (for reproducible tests or a
    /// caller-provided random source).
    pub fn with_cnonce_source(mut self, source: impl FnMut() -> String + Send + 'static) -> Self {
        self.cnonce = Box::new(source);
        self
    }

    /// Switches to a new set of challenges (for example a Digest challenge
    /// with `stale=true` carrying a fresh nonce); resets the nonce count.
    pub fn update(&mut self, challenges: &[Challenge]) -> Result<(), AuthError> {
        self.chosen =
            choose(challenges).ok_or_else(|| AuthError::NoSupportedChallenge(String::new()))?;
        Ok(())
    }

    /// True when `challenges` contains a Digest challenge with `stale=true`.
    pub fn is_stale(challenges: &[Challenge]) -> bool {
        challenges
            .iter()
            .any(|c| matches!(c, Challenge::Digest { stale: true, .. }))
    }

    /// The `Authorization` header value for a request.
    pub fn authorization(&mut self, method: &str, uri: &str) -> String {
        match &mut self.chosen {
            Chosen::Basic => {
                let raw = format!("{}:{}", self.creds.username, self.creds.password);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            Chosen::Digest {
                realm,
                nonce,
                opaque,
                algorithm,
                qop_auth,
                nc,
            } => {
                let ha1_base = digest_ha1(
                    *algorithm,
                    &self.creds.username,
                    realm,
                    &self.creds.password,
                );
                let need_cnonce = *qop_auth || algorithm.is_session();
                let cnonce = need_cnonce.then(|| sanitize_cnonce((self.cnonce)()));
                let nc_str = if *qop_auth {
                    *nc = nc.wrapping_add(1);
                    Some(format!("{:08x}", *nc))
                } else {
                    None
                };
                let qop = match (&nc_str, &cnonce) {
                    (Some(n), Some(c)) => Some(("auth", n.as_str(), c.as_str())),
                    _ => None,
                };
                let response = digest_response(&DigestInput {
                    algorithm: *algorithm,
                    ha1_base: &ha1_base,
                    nonce,
                    method,
                    uri,
                    qop,
                    cnonce: cnonce.as_deref(),
                });
                let mut s = format!(
                    "Digest username={}, realm={}, nonce={}, uri={}, response={}",
                    quote(&self.creds.username),
                    quote(realm),
                    quote(nonce),
                    quote(uri),
                    quote(&response)
                );
                // MD5 is the default; omitting it matches live555's client,
                // which old cameras are most tested against.
                if *algorithm != DigestAlgorithm::Md5 {
                    s.push_str(&format!(", algorithm={algorithm}"));
                }
                if let Some(c) = &cnonce {
                    s.push_str(&format!(", cnonce={}", quote(c)));
                }
                if let Some(n) = &nc_str {
                    s.push_str(&format!(", qop=auth, nc={n}"));
                }
                if let Some(o) = opaque {
                    s.push_str(&format!(", opaque={}", quote(o)));
                }
                s
            }
        }
    }
}

/// Keeps a caller-supplied cnonce printable and quote-free.
fn sanitize_cnonce(c: String) -> String {
    let c: String = c
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect();
    if c.is_empty() {
        random_cnonce()
    } else {
        c
    }
}

/// A parsed `Authorization` header (server side).
#[derive(Clone, PartialEq, Eq)]
pub enum Authorization {
    /// `Basic base64(user:pass)`.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `Digest username="…", …`.
    Digest {
        /// User name.
        username: String,
        /// Realm the client answered for.
        realm: String,
        /// Nonce the client used.
        nonce: String,
        /// Digest URI (the request URI the client hashed).
        uri: String,
        /// Hex response.
        response: String,
        /// Hash algorithm (`MD5` when absent).
        algorithm: DigestAlgorithm,
        /// `qop` the client chose.
        qop: Option<String>,
        /// Nonce count (8 hex digits).
        nc: Option<String>,
        /// Client nonce.
        cnonce: Option<String>,
        /// Echoed opaque value.
        opaque: Option<String>,
    },
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Authorization::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Authorization::Digest {
                username,
                realm,
                nonce,
                uri,
                response,
                algorithm,
                qop,
                nc,
                cnonce,
                opaque,
            } => f
                .debug_struct("Digest")
                .field("username", username)
                .field("realm", realm)
                .field("nonce", nonce)
                .field("uri", uri)
                .field("response", response)
                .field("algorithm", algorithm)
                .field("qop", qop)
                .field("nc", nc)
                .field("cnonce", cnonce)
                .field("opaque", opaque)
                .finish(),
        }
    }
}

/// Parses an `Authorization` header value (`Basic …` or `Digest …`).
pub fn parse_authorization(value: &str) -> Result<Authorization, AuthError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(AuthError::Empty);
    }
    let (scheme, rest) = value
        .split_once(|c: char| c.is_whitespace())
        .unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .map_err(|_| AuthError::Malformed(echo(value)))?;
        let text = String::from_utf8(decoded).map_err(|_| AuthError::Malformed(echo(value)))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| AuthError::Malformed(echo(value)))?;
        return Ok(Authorization::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        });
    }
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(AuthError::UnsupportedScheme(echo(scheme)));
    }
    let params: Vec<(String, String)> = lex(rest)
        .into_iter()
        .filter_map(|i| match i {
            Item::Param(n, v) => Some((n, v)),
            Item::Scheme(_) => None,
        })
        .collect();
    let req = |name: &'static str| {
        param(&params, name)
            .map(str::to_owned)
            .ok_or(AuthError::MissingParameter(name))
    };
    let opt = |name: &str| param(&params, name).map(str::to_owned);
    let algorithm = match param(&params, "algorithm") {
        None => DigestAlgorithm::Md5,
        Some(a) => {
            DigestAlgorithm::parse(a).ok_or_else(|| AuthError::UnsupportedAlgorithm(echo(a)))?
        }
    };
    Ok(Authorization::Digest {
        username: req("username")?,
        realm: req("realm")?,
        nonce: req("nonce")?,
        uri: req("uri")?,
        response: req("response")?,
        algorithm,
        qop: opt("qop"),
        nc: opt("nc"),
        cnonce: opt("cnonce"),
        opaque: opt("opaque"),
    })
}

/// The secret a server holds for a user.
#[derive(Clone, Copy)]
pub enum Secret<'a> {
    /// The plain password.
    Password(&'a str),
    /// Precomputed `H(username:realm:password)` in hex (see [`digest_ha1`]),
    /// with the hash of the client's algorithm.
    Ha1(&'a str),
}

impl fmt::Debug for Secret<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Password(_) => f.write_str("Password(<redacted>)"),
            Secret::Ha1(_) => f.write_str("Ha1(<redacted>)"),
        }
    }
}

/// Verifies a Digest `Authorization` against the stored secret, comparing
/// the response in constant time.
///
/// Returns false for a `Basic` authorization, an unsupported qop
/// (`auth-int`) or a qop without `nc`/`cnonce`. Checking that the nonce is
/// one the server issued (and is fresh), that the realm is the server's and
/// that `uri` matches the request line is the caller's job.
pub fn verify_digest(a: &Authorization, method: &str, password_or_ha1: Secret<'_>) -> bool {
    let Authorization::Digest {
        username,
        realm,
        nonce,
        uri,
        response,
        algorithm,
        qop,
        nc,
        cnonce,
        ..
    } = a
    else {
        return false;
    };
    let ha1_base = match password_or_ha1 {
        Secret::Password(p) => digest_ha1(*algorithm, username, realm, p),
        Secret::Ha1(h) => h.trim().to_ascii_lowercase(),
    };
    let qop = match qop.as_deref() {
        None => None,
        Some(q) if q.eq_ignore_ascii_case("auth") => match (nc, cnonce) {
            (Some(n), Some(c)) => Some(("auth", n.as_str(), c.as_str())),
            _ => return false,
        },
        Some(_) => return false,
    };
    if algorithm.is_session() && cnonce.is_none() {
        return false;
    }
    let expected = digest_response(&DigestInput {
        algorithm: *algorithm,
        ha1_base: &ha1_base,
        nonce,
        method,
        uri,
        qop,
        cnonce: cnonce.as_deref(),
    });
    let got = response.trim().to_ascii_lowercase();
    bool::from(expected.as_bytes().ct_eq(got.as_bytes()))
}

/// Verifies a `Basic` authorization against a username and password, in
/// constant time with respect to the password. False for `Digest`.
pub fn verify_basic(a: &Authorization, username: &str, password: &str) -> bool {
    let Authorization::Basic {
        username: u,
        password: p,
    } = a
    else {
        return false;
    };
    let user_ok = u.as_bytes().ct_eq(username.as_bytes());
    let pass_ok = p.as_bytes().ct_eq(password.as_bytes());
    bool::from(user_ok & pass_ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    fn digest(
        realm: &str,
        nonce: &str,
        opaque: Option<&str>,
        algorithm: DigestAlgorithm,
        qop: &[&str],
    ) -> Challenge {
        Challenge::Digest {
            realm: realm.into(),
            nonce: nonce.into(),
            opaque: opaque.map(Into::into),
            algorithm,
            qop: qop.iter().map(|q| q.to_string()).collect(),
            stale: false,
        }
    }

    fn param_of(header: &str, name: &str) -> Option<String> {
        let rest = header.split_once(' ').map(|(_, r)| r).unwrap_or_default();
        lex(rest).into_iter().find_map(|i| match i {
            Item::Param(n, v) if n == name => Some(v),
            _ => None,
        })
    }

    /// RFC 7616 §3.9.1: the same challenge with SHA-256 and MD5.
    const RFC7616_HEADER: &str = r#"Digest
    realm="http-auth@example.org",
    qop="auth, auth-int",
    algorithm=SHA-256,
    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    Digest
    realm="http-auth@example.org",
    qop="auth, auth-int",
    algorithm=MD5,
    nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;

    #[test]
    fn rfc7616_example_both_algorithms() {
        let ch = parse_www_authenticate(RFC7616_HEADER).unwrap_or_default();
        assert_eq!(ch.len(), 2);
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let opaque = Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS");
        assert_eq!(
            ch[0],
            digest(
                "http-auth@example.org",
                nonce,
                opaque,
                DigestAlgorithm::Sha256,
                &["auth", "auth-int"]
            )
        );
        assert_eq!(
            ch[1],
            digest(
                "http-auth@example.org",
                nonce,
                opaque,
                DigestAlgorithm::Md5,
                &["auth", "auth-int"]
            )
        );
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        // SHA-256 is preferred even though it is listed... first here; check
        // preference with the order reversed too.
        for order in [[0usize, 1], [1, 0]] {
            let list = [ch[order[0]].clone(), ch[order[1]].clone()];
            let mut auth = ClientAuth::new(creds("Mufasa", "Circle of Life"), &list)
                .map(|a| a.with_cnonce_source(move || cnonce.to_owned()));
            let Ok(auth) = auth.as_mut() else {
                panic!("no auth")
            };
            let h = auth.authorization("GET", "/dir/index.html");
            assert_eq!(
                param_of(&h, "response").as_deref(),
                Some("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
                "{h}"
            );
            assert_eq!(param_of(&h, "nc").as_deref(), Some("00000001"));
            assert_eq!(param_of(&h, "algorithm").as_deref(), Some("SHA-256"));
            // The header verifies on the server side.
            let parsed = parse_authorization(&h).unwrap_or_else(|e| panic!("{e}"));
            assert!(verify_digest(
                &parsed,
                "GET",
                Secret::Password("Circle of Life")
            ));
            assert!(!verify_digest(
                &parsed,
                "GET",
                Secret::Password("circle of life")
            ));
        }
        // MD5 alone.
        let mut auth = ClientAuth::new(creds("Mufasa", "Circle of Life"), &ch[1..])
            .unwrap_or_else(|e| panic!("{e}"))
            .with_cnonce_source(move || cnonce.to_owned());
        let h = auth.authorization("GET", "/dir/index.html");
        assert_eq!(
            param_of(&h, "response").as_deref(),
            Some("8ca523f5e9506fed4657c9700eebdbec")
        );
        assert_eq!(param_of(&h, "algorithm"), None);
        assert_eq!(param_of(&h, "opaque").as_deref(), opaque);
        // Second request: nc increments.
        let h2 = auth.authorization("GET", "/dir/index.html");
        assert_eq!(param_of(&h2, "nc").as_deref(), Some("00000002"));
    }

    /// RFC 2617 §3.5 example (MD5, qop=auth).
    #[test]
    fn rfc2617_example() {
        let ch = parse_www_authenticate(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap_or_default();
        let mut auth = ClientAuth::new(creds("Mufasa", "Circle Of Life"), &ch)
            .unwrap_or_else(|e| panic!("{e}"))
            .with_cnonce_source(|| "0a4f113b".to_owned());
        let h = auth.authorization("GET", "/dir/index.html");
        assert_eq!(
            param_of(&h, "response").as_deref(),
            Some("6629fae49393a05397450978507c4ef1")
        );
        let a = parse_authorization(&h).unwrap_or_else(|e| panic!("{e}"));
        let ha1 = digest_ha1(
            DigestAlgorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert!(verify_digest(&a, "GET", Secret::Ha1(&ha1)));
        assert!(verify_digest(
            &a,
            "GET",
            Secret::Ha1(&ha1.to_ascii_uppercase())
        ));
        assert!(!verify_digest(&a, "POST", Secret::Ha1(&ha1)));
    }

    /// live555 servers send a bare MD5 challenge without qop or algorithm.
    #[test]
    fn live555_no_qop() {
        let ch = parse_www_authenticate(
            r#"Digest realm="LIVE555 Streaming Media", nonce="a4d9f3c1b2e0f8d7c6b5a4f3e2d1c0b9""#,
        )
        .unwrap_or_default();
        assert_eq!(
            ch,
            vec![digest(
                "LIVE555 Streaming Media",
                "a4d9f3c1b2e0f8d7c6b5a4f3e2d1c0b9",
                None,
                DigestAlgorithm::Md5,
                &[]
            )]
        );
        let mut auth =
            ClientAuth::new(creds("admin", "12345"), &ch).unwrap_or_else(|e| panic!("{e}"));
        let h = auth.authorization("DESCRIBE", "rtsp://10.0.0.5/stream");
        // RFC 2069 form: H(HA1:nonce:HA2), no cnonce/nc/qop.
        let ha1 = digest_ha1(
            DigestAlgorithm::Md5,
            "admin",
            "LIVE555 Streaming Media",
            "12345",
        );
        let ha2 = DigestAlgorithm::Md5.hex_hash(b"DESCRIBE:rtsp://10.0.0.5/stream");
        let expected = DigestAlgorithm::Md5
            .hex_hash(format!("{ha1}:a4d9f3c1b2e0f8d7c6b5a4f3e2d1c0b9:{ha2}").as_bytes());
        assert_eq!(param_of(&h, "response"), Some(expected));
        assert_eq!(param_of(&h, "cnonce"), None);
        assert_eq!(param_of(&h, "qop"), None);
        assert_eq!(
            h,
            format!(
                "Digest username=\"admin\", realm=\"LIVE555 Streaming Media\", nonce=\"a4d9f3c1b2e0f8d7c6b5a4f3e2d1c0b9\", uri=\"rtsp://10.0.0.5/stream\", response=\"{}\"",
                param_of(&h, "response").unwrap_or_default()
            )
        );
        let a = parse_authorization(&h).unwrap_or_else(|e| panic!("{e}"));
        assert!(verify_digest(&a, "DESCRIBE", Secret::Password("12345")));
    }

    /// Cameras (several Hikvision/Dahua-class firmwares) send a Digest and a
    /// Basic challenge as separate headers, odd algorithm case, unquoted
    /// values, no commas, and `stale=FALSE`.
    #[test]
    fn camera_quirks() {
        let ch = parse_www_authenticate(
            r#"digest realm="IP Camera(12345)" nonce="abc" algorithm=md5 stale="FALSE""#,
        )
        .unwrap_or_default();
        assert_eq!(
            ch,
            vec![digest(
                "IP Camera(12345)",
                "abc",
                None,
                DigestAlgorithm::Md5,
                &[]
            )]
        );
        let ch =
            parse_www_authenticate(r#"Digest realm=cam,nonce=n1,qop=auth,algorithm="Sha-256""#)
                .unwrap_or_default();
        assert_eq!(
            ch,
            vec![digest(
                "cam",
                "n1",
                None,
                DigestAlgorithm::Sha256,
                &["auth"]
            )]
        );
        let ch = parse_www_authenticate(r#"BASIC realm="/""#).unwrap_or_default();
        assert_eq!(ch, vec![Challenge::Basic { realm: "/".into() }]);
        // Unterminated quote runs to the end.
        let ch = parse_www_authenticate(r#"Digest realm="a\"b", nonce="xyz"#).unwrap_or_default();
        assert_eq!(
            ch,
            vec![digest("a\"b", "xyz", None, DigestAlgorithm::Md5, &[])]
        );
        // stale=true detection.
        let ch = parse_www_authenticate(r#"Digest realm="r", nonce="n2", stale=true"#)
            .unwrap_or_default();
        assert!(ClientAuth::is_stale(&ch));
    }

    /// ffmpeg's rtsp server side and GStreamer's rtsp-server send several
    /// challenges in one header; unknown schemes and algorithms are skipped.
    #[test]
    fn ffmpeg_and_gstreamer_styles() {
        let ch = parse_www_authenticate(
            r#"Negotiate abc==, Digest realm="GStreamer RTSP Server", nonce="9f0e", algorithm=SHA-512-256, Digest realm="GStreamer RTSP Server", nonce="9f0e", Basic realm="GStreamer RTSP Server""#,
        )
        .unwrap_or_default();
        assert_eq!(
            ch,
            vec![
                digest(
                    "GStreamer RTSP Server",
                    "9f0e",
                    None,
                    DigestAlgorithm::Md5,
                    &[]
                ),
                Challenge::Basic {
                    realm: "GStreamer RTSP Server".into()
                },
            ]
        );
        // Digest MD5 preferred over Basic regardless of order.
        let rev = [ch[1].clone(), ch[0].clone()];
        let mut a = ClientAuth::new(creds("u", "p"), &rev).unwrap_or_else(|e| panic!("{e}"));
        assert!(a.authorization("OPTIONS", "*").starts_with("Digest "));
        // Basic alone; ffmpeg style header output.
        let mut a = ClientAuth::new(creds("Aladdin", "open sesame"), &ch[1..])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a.authorization("OPTIONS", "*"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(
            parse_authorization("basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Ok(Authorization::Basic {
                username: "Aladdin".into(),
                password: "open sesame".into()
            })
        );
        let b = parse_authorization("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(verify_basic(&b, "Aladdin", "open sesame"));
        assert!(!verify_basic(&b, "Aladdin", "open sesamE"));
        assert!(!verify_digest(&b, "GET", Secret::Password("open sesame")));
    }

    #[test]
    fn errors() {
        assert_eq!(parse_www_authenticate("  "), Err(AuthError::Empty));
        assert!(matches!(
            parse_www_authenticate("Bearer x=1"),
            Err(AuthError::NoSupportedChallenge(_))
        ));
        assert!(matches!(
            parse_www_authenticate("Digest realm=x"),
            Err(AuthError::NoSupportedChallenge(_))
        ));
        assert!(ClientAuth::new(creds("a", "b"), &[]).is_err());
        assert!(matches!(
            parse_authorization("Bearer abc"),
            Err(AuthError::UnsupportedScheme(_))
        ));
        assert!(matches!(
            parse_authorization("Basic !!!"),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            parse_authorization("Basic YWJj"),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(
            parse_authorization(r#"Digest username="a", realm="r", nonce="n", uri="/""#),
            Err(AuthError::MissingParameter("response"))
        );
        assert!(matches!(
            parse_authorization(
                r#"Digest username="a", realm="r", nonce="n", uri="/", response="x", algorithm=SHA-1"#
            ),
            Err(AuthError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn sess_and_qop_variants_verify() {
        for alg in [DigestAlgorithm::Md5Sess, DigestAlgorithm::Sha256Sess] {
            let ch = [digest("r", "n", Some("o"), alg, &["auth"])];
            let mut a = ClientAuth::new(creds("u", "p"), &ch).unwrap_or_else(|e| panic!("{e}"));
            let h = a.authorization("PLAY", "rtsp://h/s");
            let p = parse_authorization(&h).unwrap_or_else(|e| panic!("{e}"));
            assert!(verify_digest(&p, "PLAY", Secret::Password("p")), "{h}");
            let ha1 = digest_ha1(alg, "u", "r", "p");
            assert!(verify_digest(&p, "PLAY", Secret::Ha1(&ha1)));
        }
        // auth-int claimed by a client is rejected.
        let h = r#"Digest username="u", realm="r", nonce="n", uri="/", response="00", qop=auth-int, nc=00000001, cnonce="c""#;
        let p = parse_authorization(h).unwrap_or_else(|e| panic!("{e}"));
        assert!(!verify_digest(&p, "GET", Secret::Password("p")));
        // qop=auth without nc is rejected.
        let h = r#"Digest username="u", realm="r", nonce="n", uri="/", response="00", qop=auth"#;
        let p = parse_authorization(h).unwrap_or_else(|e| panic!("{e}"));
        assert!(!verify_digest(&p, "GET", Secret::Password("p")));
    }

    #[test]
    fn format_round_trip_and_debug_redacts() {
        let c = Challenge::Digest {
            realm: "a \"q\" \\ b".into(),
            nonce: "n,1".into(),
            opaque: Some("o".into()),
            algorithm: DigestAlgorithm::Sha256Sess,
            qop: vec!["auth".into(), "auth-int".into()],
            stale: true,
        };
        let s = format_challenge(&c);
        assert_eq!(
            s,
            r#"Digest realm="a \"q\" \\ b", nonce="n,1", opaque="o", algorithm=SHA-256-sess, qop="auth,auth-int", stale=TRUE"#
        );
        assert_eq!(parse_www_authenticate(&s), Ok(vec![c]));
        assert_eq!(
            format_challenge(&Challenge::Basic { realm: "x".into() }),
            "Basic realm=\"x\""
        );
        let d = format!("{:?}", creds("u", "hunter2"));
        assert!(!d.contains("hunter2"));
        let d = format!(
            "{:?}",
            Authorization::Basic {
                username: "u".into(),
                password: "hunter2".into()
            }
        );
        assert!(!d.contains("hunter2"));
    }
}

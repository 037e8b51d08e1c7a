//! RTSP request methods (RFC 2326 §10).

use std::fmt;

/// An RTSP request method. Method names are case-sensitive.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `OPTIONS`
    Options,
    /// `DESCRIBE`
    Describe,
    /// `ANNOUNCE`
    Announce,
    /// `SETUP`
    Setup,
    /// `PLAY`
    Play,
    /// `PAUSE`
    Pause,
    /// `RECORD`
    Record,
    /// `TEARDOWN`
    Teardown,
    /// `GET_PARAMETER`
    GetParameter,
    /// `SET_PARAMETER`
    SetParameter,
    /// `REDIRECT`
    Redirect,
    /// Any other method token, kept verbatim.
    Extension(String),
}

impl Method {
    /// The method name as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Options => "OPTIONS",
            Method::Describe => "DESCRIBE",
            Method::Announce => "ANNOUNCE",
            Method::Setup => "SETUP",
            Method::Play => "PLAY",
            Method::Pause => "PAUSE",
            Method::Record => "RECORD",
            Method::Teardown => "TEARDOWN",
            Method::GetParameter => "GET_PARAMETER",
            Method::SetParameter => "SET_PARAMETER",
            Method::Redirect => "REDIRECT",
            Method::Extension(s) => s,
        }
    }

    /// Maps a method token to a [`Method`]; unknown tokens (including
    /// differently-cased standard names) become [`Method::Extension`].
    pub fn parse(s: &str) -> Method {
        match s {
            "OPTIONS" => Method::Options,
            "DESCRIBE" => Method::Describe,
            "ANNOUNCE" => Method::Announce,
            "SETUP" => Method::Setup,
            "PLAY" => Method::Play,
            "PAUSE" => Method::Pause,
            "RECORD" => Method::Record,
            "TEARDOWN" => Method::Teardown,
            "GET_PARAMETER" => Method::GetParameter,
            "SET_PARAMETER" => Method::SetParameter,
            "REDIRECT" => Method::Redirect,
            other => Method::Extension(other.to_owned()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_methods_round_trip() {
        for m in [
            Method::Options,
            Method::Describe,
            Method::Announce,
            Method::Setup,
            Method::Play,
            Method::Pause,
            Method::Record,
            Method::Teardown,
            Method::GetParameter,
            Method::SetParameter,
            Method::Redirect,
        ] {
            assert_eq!(Method::parse(m.as_str()), m);
            assert_eq!(m.to_string(), m.as_str());
        }
    }

    #[test]
    fn parse_is_case_sensitive() {
        assert_eq!(
            Method::parse("options"),
            Method::Extension("options".into())
        );
        assert_eq!(Method::parse("FOO"), Method::Extension("FOO".into()));
        assert_eq!(Method::Extension("FOO".into()).as_str(), "FOO");
    }
}

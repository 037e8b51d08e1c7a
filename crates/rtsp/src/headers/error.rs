//! Errors returned by the typed header parsers.

/// Longest offending value reproduced in an error message.
const MAX_ECHO: usize = 80;

/// A header value could not be parsed.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    /// The header value was empty (or only whitespace/separators).
    #[error("empty {header} header")]
    Empty {
        /// Header name.
        header: &'static str,
    },
    /// The header value as a whole is malformed.
    #[error("invalid {header} header value {value:?}")]
    Invalid {
        /// Header name.
        header: &'static str,
        /// Offending value (truncated).
        value: String,
    },
    /// One parameter of the header is malformed.
    #[error("invalid {param} parameter {value:?} in {header} header")]
    InvalidParameter {
        /// Header name.
        header: &'static str,
        /// Parameter name.
        param: String,
        /// Offending parameter value (truncated).
        value: String,
    },
}

/// Truncates `s` to at most [`MAX_ECHO`] characters for error messages.
pub(crate) fn echo(s: &str) -> String {
    s.chars().take(MAX_ECHO).collect()
}

impl HeaderError {
    /// Builds [`HeaderError::Invalid`] with a truncated value.
    pub(crate) fn invalid(header: &'static str, value: &str) -> Self {
        HeaderError::Invalid {
            header,
            value: echo(value),
        }
    }

    /// Builds [`HeaderError::InvalidParameter`] with truncated name and value.
    pub(crate) fn param(header: &'static str, param: &str, value: &str) -> Self {
        HeaderError::InvalidParameter {
            header,
            param: echo(param),
            value: echo(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_header_and_value() {
        let e = HeaderError::param("Transport", "client_port", "x");
        assert_eq!(
            e.to_string(),
            "invalid client_port parameter \"x\" in Transport header"
        );
        let long = "a".repeat(500);
        match HeaderError::invalid("Range", &long) {
            HeaderError::Invalid { value, .. } => assert_eq!(value.len(), MAX_ECHO),
            other => panic!("{other:?}"),
        }
    }
}

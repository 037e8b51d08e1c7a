//! RTSP status codes (RFC 2326 §7.1.1).

use std::fmt;

/// An RTSP status code. Any `u16` can be carried; encoders write it as three
/// digits, so only `100..=999` is meaningful on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct StatusCode(pub u16);

macro_rules! codes {
    ($($(#[$doc:meta])* $name:ident = $code:expr, $reason:expr;)*) => {
        impl StatusCode {
            $($(#[$doc])* pub const $name: StatusCode = StatusCode($code);)*

            /// The standard reason phrase, or `"Unknown"` for unlisted codes.
            pub fn reason(self) -> &'static str {
                match self.0 {
                    $($code => $reason,)*
                    _ => "Unknown",
                }
            }
        }
    };
}

codes! {
    /// 100 Continue
    CONTINUE = 100, "Continue";
    /// 200 OK
    OK = 200, "OK";
    /// 201 Created
    CREATED = 201, "Created";
    /// 250 Low on Storage Space
    LOW_ON_STORAGE_SPACE = 250, "Low on Storage Space";
    /// 300 Multiple Choices
    MULTIPLE_CHOICES = 300, "Multiple Choices";
    /// 301 Moved Permanently
    MOVED_PERMANENTLY = 301, "Moved Permanently";
    /// 302 Moved Temporarily
    MOVED_TEMPORARILY = 302, "Moved Temporarily";
    /// 303 See Other
    SEE_OTHER = 303, "See Other";
    /// 304 Not Modified
    NOT_MODIFIED = 304, "Not Modified";
    /// 305 Use Proxy
    USE_PROXY = 305, "Use Proxy";
    /// 400 Bad Request
    BAD_REQUEST = 400, "Bad Request";
    /// 401 Unauthorized
    UNAUTHORIZED = 401, "Unauthorized";
    /// 402 Payment Required
    PAYMENT_REQUIRED = 402, "Payment Required";
    /// 403 Forbidden
    FORBIDDEN = 403, "Forbidden";
    /// 404 Not Found
    NOT_FOUND = 404, "Not Found";
    /// 405 Method Not Allowed
    METHOD_NOT_ALLOWED = 405, "Method Not Allowed";
    /// 406 Not Acceptable
    NOT_ACCEPTABLE = 406, "Not Acceptable";
    /// 407 Proxy Authentication Required
    PROXY_AUTHENTICATION_REQUIRED = 407, "Proxy Authentication Required";
    /// 408 Request Time-out
    REQUEST_TIMEOUT = 408, "Request Time-out";
    /// 410 Gone
    GONE = 410, "Gone";
    /// 411 Length Required
    LENGTH_REQUIRED = 411, "Length Required";
    /// 412 Precondition Failed
    PRECONDITION_FAILED = 412, "Precondition Failed";
    /// 413 Request Entity Too Large
    REQUEST_ENTITY_TOO_LARGE = 413, "Request Entity Too Large";
    /// 414 Request-URI Too Long
    REQUEST_URI_TOO_LONG = 414, "Request-URI Too Long";
    /// 415 Unsupported Media Type
    UNSUPPORTED_MEDIA_TYPE = 415, "Unsupported Media Type";
    /// 451 Parameter Not Understood
    PARAMETER_NOT_UNDERSTOOD = 451, "Parameter Not Understood";
    /// 452 Conference Not Found
    CONFERENCE_NOT_FOUND = 452, "Conference Not Found";
    /// 453 Not Enough Bandwidth
    NOT_ENOUGH_BANDWIDTH = 453, "Not Enough Bandwidth";
    /// 454 Session Not Found
    SESSION_NOT_FOUND = 454, "Session Not Found";
    /// 455 Method Not Valid in This State
    METHOD_NOT_VALID_IN_THIS_STATE = 455, "Method Not Valid in This State";
    /// 456 Header Field Not Valid for Resource
    HEADER_FIELD_NOT_VALID = 456, "Header Field Not Valid for Resource";
    /// 457 Invalid Range
    INVALID_RANGE = 457, "Invalid Range";
    /// 458 Parameter Is Read-Only
    PARAMETER_IS_READ_ONLY = 458, "Parameter Is Read-Only";
    /// 459 Aggregate operation not allowed
    AGGREGATE_OPERATION_NOT_ALLOWED = 459, "Aggregate operation not allowed";
    /// 460 Only aggregate operation allowed
    ONLY_AGGREGATE_OPERATION_ALLOWED = 460, "Only aggregate operation allowed";
    /// 461 Unsupported transport
    UNSUPPORTED_TRANSPORT = 461, "Unsupported transport";
    /// 462 Destination unreachable
    DESTINATION_UNREACHABLE = 462, "Destination unreachable";
    /// 500 Internal Server Error
    INTERNAL_SERVER_ERROR = 500, "Internal Server Error";
    /// 501 Not Implemented
    NOT_IMPLEMENTED = 501, "Not Implemented";
    /// 502 Bad Gateway
    BAD_GATEWAY = 502, "Bad Gateway";
    /// 503 Service Unavailable
    SERVICE_UNAVAILABLE = 503, "Service Unavailable";
    /// 504 Gateway Time-out
    GATEWAY_TIMEOUT = 504, "Gateway Time-out";
    /// 505 RTSP Version not supported
    RTSP_VERSION_NOT_SUPPORTED = 505, "RTSP Version not supported";
    /// 551 Option not supported
    OPTION_NOT_SUPPORTED = 551, "Option not supported";
}

impl StatusCode {
    /// True for 2xx codes.
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.0)
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(StatusCode::OK.reason(), "OK");
        assert_eq!(StatusCode::SESSION_NOT_FOUND.0, 454);
        assert_eq!(
            StatusCode::UNSUPPORTED_TRANSPORT.reason(),
            "Unsupported transport"
        );
        assert_eq!(StatusCode(299).reason(), "Unknown");
        assert_eq!(StatusCode::NOT_FOUND.to_string(), "404 Not Found");
        assert!(StatusCode::OK.is_success());
        assert!(!StatusCode::BAD_REQUEST.is_success());
    }
}

//! The method × state table: which methods Sluice implements, which need a session, and
//! in which session states a method may act.
//!
//! RFC 2326 Appendix A.1 gives the server state machine; Sluice adds one rule: a session
//! keeps the role (player or recorder) its first SETUP gave it, so PLAY on a recorder and
//! RECORD on a player are 455 like any other method out of state.

use crate::server_session::Role;
use crate::Method;

/// What a method needs before it can act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: OPTIONS, DESCRIBE, ANNOUNCE.
    Nothing,
    /// An existing session of this connection when a `Session` header names one
    /// (SETUP, GET_PARAMETER, SET_PARAMETER).
    OptionalSession,
    /// A `Session` header naming a session of this connection (PLAY, PAUSE, RECORD,
    /// TEARDOWN); without one the answer is 454.
    Session,
}

/// The methods implemented, in the order OPTIONS' `Public` header lists them.
pub const IMPLEMENTED: [Method; 10] = [
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
];

/// The `Public` header value: every implemented method.
pub fn public() -> String {
    IMPLEMENTED
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `method` needs; `None` when Sluice does not implement it (501).
pub fn need(method: &Method) -> Option<Need> {
    match method {
        Method::Options | Method::Describe | Method::Announce => Some(Need::Nothing),
        Method::Setup | Method::GetParameter | Method::SetParameter => Some(Need::OptionalSession),
        Method::Play | Method::Pause | Method::Record | Method::Teardown => Some(Need::Session),
        Method::Redirect | Method::Extension(_) => None,
    }
}

/// Whether `method` may act on a session of `role`, otherwise 455. `setup_role` is the
/// role a SETUP asks for (`mode=record` or play): a session never changes role.
///
/// SETUP of a track not yet set up is refused while streaming by the session's own
/// state machine, which knows the tracks; PAUSE is valid in every state (a PAUSE in
/// Ready changes nothing).
pub fn allows(method: &Method, role: Role, setup_role: Option<Role>) -> bool {
    match method {
        Method::Setup => setup_role.is_none_or(|r| r == role),
        Method::Play => role == Role::Player,
        Method::Record => role == Role::Recorder,
        Method::Pause
        | Method::Teardown
        | Method::GetParameter
        | Method::SetParameter
        | Method::Options => true,
        Method::Describe | Method::Announce | Method::Redirect | Method::Extension(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use Role::*;
        assert!(allows(&Method::Play, Player, None));
        assert!(!allows(&Method::Play, Recorder, None));
        assert!(allows(&Method::Record, Recorder, None));
        assert!(!allows(&Method::Record, Player, None));
        assert!(allows(&Method::Pause, Recorder, None));
        assert!(!allows(&Method::Setup, Player, Some(Recorder)));
        assert!(allows(&Method::Setup, Recorder, Some(Recorder)));
        assert!(!allows(&Method::Describe, Player, None));
        assert_eq!(need(&Method::Redirect), None);
        assert_eq!(need(&Method::Extension("FOO".into())), None);
        assert_eq!(need(&Method::Teardown), Some(Need::Session));
        assert_eq!(
            public(),
            "OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, PAUSE, RECORD, TEARDOWN, GET_PARAMETER, SET_PARAMETER"
        );
    }
}

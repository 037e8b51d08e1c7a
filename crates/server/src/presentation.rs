//! A published presentation: the tracks a source announced and the SDP readers get. The
//! type lives in the hub ([`sluice_hub::presentation`]); re-exported here for the server's
//! modules.

pub use sluice_hub::presentation::{Presentation, PresentationError, Track, MAX_TRACKS};

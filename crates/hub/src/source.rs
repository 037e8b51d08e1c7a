//! A source's hold on its path: the stream it feeds, published under its claim, ended
//! when the source goes away.
//!
//! [`crate::Hub::publish_source`] creates one. The source pushes packets into
//! [`SourceHandle::stream`] (with the stream's batcher discipline: `note_input`,
//! hold/release around the input at hand, a timer on `poll_timeout`, or a flush per
//! sample), marks the path ready once media flows ([`SourceHandle::set_ready`]) and ends it
//! with a reason ([`SourceHandle::end`]). Dropping the handle ends the stream as
//! [`EndReason::SourceGone`], so a source that panics or returns early never leaves a
//! path claimed by a stream nobody feeds.

use std::sync::Arc;

use crate::hub::Hub;
use crate::packet::EndReason;
use crate::stream::Stream;

/// A published stream and the duty to end it.
#[derive(Debug)]
pub struct SourceHandle {
    hub: Arc<Hub>,
    stream: Arc<Stream>,
    ended: bool,
}

impl SourceHandle {
    /// The handle of `stream`, already published on `hub`.
    pub(crate) fn new(hub: Arc<Hub>, stream: Arc<Stream>) -> SourceHandle {
        SourceHandle {
            hub,
            stream,
            ended: false,
        }
    }

    /// The stream to push packets into.
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    /// Media flows: readers may DESCRIBE and PLAY the path, and watchers see it ready.
    pub fn set_ready(&self) {
        self.hub.set_ready(&self.stream);
    }

    /// Ends the stream for `reason` and frees the path if the stream still holds it.
    pub fn end(mut self, reason: EndReason) {
        self.ended = true;
        self.hub.end(&self.stream, reason);
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        if !self.ended {
            self.hub.end(&self.stream, EndReason::SourceGone);
        }
    }
}

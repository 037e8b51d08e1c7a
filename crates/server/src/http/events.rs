//! `GET /v1/events`: the hub's event bus as Server-Sent Events (for clients whose
//! `Accept` names `text/event-stream`, as `EventSource` does), or what the ring holds as
//! one JSON document (for everyone else: a poll that ends, which tools such as API
//! fuzzers and plain `curl` can consume).
//!
//! Each event is sent with `id:` (its bus id), `event:` (its name) and `data:` (its
//! JSON, the same as a webhook's body). Without `Last-Event-ID` the stream starts with
//! the next event; with it (a browser's `EventSource` sends it on reconnecting, `0` asks
//! for everything held) it resumes from the ring. When the ring no longer holds some of
//! the events asked for, a `gap` event without an id says how many were lost
//! (`{"missed": N}`). A comment line every 15 s keeps idle connections open through
//! proxies.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::Serialize;
use sluice_hub::Hub;
use utoipa::ToSchema;

#[allow(unused_imports)] // The OpenAPI annotation names it.
use super::problem::Problem;

/// How often an idle stream gets a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `GET /v1/events` without `Accept: text/event-stream`: the events the ring holds.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    /// The events after `Last-Event-ID` (all held without it), oldest first: each has
    /// `id`, `time_ms`, `type` and the event's fields.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// How many events after `Last-Event-ID` the ring no longer holds.
    pub missed: u64,
    /// The newest event's id (0 before the first): the `Last-Event-ID` of the next poll.
    pub last_id: u64,
}

/// The id in `Last-Event-ID`, if it is one.
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
}

/// Whether the client asks for an event stream.
fn wants_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// The poll's answer: the events after `Last-Event-ID` (0 without it).
fn list(hub: &Hub, headers: &HeaderMap) -> EventList {
    let since = hub.events().since(last_event_id(headers).unwrap_or(0));
    EventList {
        last_id: hub.events().last_id(),
        missed: since.missed,
        events: since
            .records
            .iter()
            .filter_map(|r| serde_json::to_value(&**r).ok())
            .collect(),
    }
}

/// Where a stream starts: after the `Last-Event-ID` asked for (an id this run never
/// gave counts as 0: everything held), or after the newest event without one.
fn start_after(hub: &Hub, headers: &HeaderMap) -> u64 {
    let newest = hub.events().last_id();
    match last_event_id(headers) {
        Some(id) if id <= newest => id,
        Some(_) => 0,
        None => newest,
    }
}

/// The events after `last` as SSE, forever (until the client goes).
fn stream_after(hub: Arc<Hub>, last: u64) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures_util::stream::unfold(
        (hub, last, VecDeque::new()),
        |(hub, mut last, mut pending)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((Ok(e), (hub, last, pending)));
                }
                let since = hub.events().since(last);
                if since.missed > 0 {
                    pending.push_back(
                        SseEvent::default()
                            .event("gap")
                            .data(format!("{{\"missed\":{}}}", since.missed)),
                    );
                }
                for r in since.records {
                    last = r.id;
                    pending.push_back(
                        SseEvent::default()
                            .id(r.id.to_string())
                            .event(r.event.name())
                            .data(r.to_json()),
                    );
                }
                if pending.is_empty() {
                    hub.events().next_after(last).await;
                }
            }
        },
    )
}

/// The server's events: server started/stopping, path ready/not ready, publisher and
/// reader started/stopped, session kicked, config reloaded/failed. With
/// `Accept: text/event-stream`, a Server-Sent Events stream that stays open: each event
/// has `id:` (resume with `Last-Event-ID`), `event:` (its name) and JSON `data:`
/// (`id`, `time_ms`, `type` and the event's fields), a `gap` event reports events the
/// ring no longer held. Otherwise one JSON document of the events the ring holds.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    security((), ("basic" = []), ("bearer" = [])),
    params(
        ("Last-Event-ID" = Option<String>, Header,
            description = "Resume after this event id (0: every event the ring holds). Without it a stream starts with the next event, a list with the oldest held"),
    ),
    responses(
        (status = 200, description = "The event stream (Accept: text/event-stream), or the events held", content(
            (EventList = "application/json"),
            (String = "text/event-stream"),
        )),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn events(State(hub): State<Arc<Hub>>, headers: HeaderMap) -> Response {
    if !wants_stream(&headers) {
        return Json(list(&hub, &headers)).into_response();
    }
    let last = start_after(&hub, &headers);
    Sse::new(stream_after(hub, last))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use sluice_hub::ServerEvent;

    fn ready(p: &str) -> ServerEvent {
        ServerEvent::PathReady {
            path: p.into(),
            source: 1,
        }
    }

    fn headers(last: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("last-event-id", last.parse().unwrap());
        h
    }

    #[tokio::test]
    async fn a_client_further_behind_than_the_ring_gets_a_gap_event_first() {
        let hub = Arc::new(Hub::with_events(
            Box::new(|| {}),
            sluice_hub::EventBus::new(2, Box::new(|| 0)),
        ));
        for p in ["a", "b", "c", "d", "e"] {
            hub.events().publish(ready(p));
        }
        let got: Vec<SseEvent> = stream_after(hub, 1)
            .take(3)
            .map(|e| e.unwrap())
            .collect()
            .await;
        // axum's Event has no getters: its Debug shows the wire form.
        let wire: Vec<String> = got.iter().map(|e| format!("{e:?}")).collect();
        assert!(
            wire[0].contains(r#"b"event: gap\ndata: {\"missed\":2}\n""#),
            "{wire:?}"
        );
        assert!(
            wire[1].contains(r#"b"id: 4\nevent: path_ready\n"#),
            "{wire:?}"
        );
        assert!(
            wire[2].contains(r#"b"id: 5\nevent: path_ready\n"#),
            "{wire:?}"
        );
        assert_eq!(got.len(), 3);
    }

    #[tokio::test]
    async fn streams_start_now_or_resume_after_the_last_event_id() {
        let hub = Arc::new(Hub::default());
        hub.events().publish(ready("a"));
        hub.events().publish(ready("b"));
        assert_eq!(start_after(&hub, &HeaderMap::new()), 2);
        assert_eq!(start_after(&hub, &headers("1")), 1);
        assert_eq!(start_after(&hub, &headers("77")), 0, "another run's id");
        assert_eq!(start_after(&hub, &headers("x")), 2, "garbage is ignored");
        let l = list(&hub, &headers("1"));
        assert_eq!((l.events.len(), l.missed, l.last_id), (1, 0, 2));
        assert_eq!(l.events[0]["path"], "b");
        assert_eq!(list(&hub, &HeaderMap::new()).events.len(), 2);
        assert!(!wants_stream(&headers("1")));
        let mut s = Box::pin(stream_after(hub.clone(), 1));
        assert!(s.next().await.is_some(), "b");
        let next = tokio::spawn(async move { s.next().await.is_some() });
        tokio::task::yield_now().await;
        hub.events().publish(ready("c"));
        assert!(tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .unwrap()
            .unwrap());
    }
}

//! `GET /v1/events`: the hub's event bus as Server-Sent Events.
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
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use sluice_hub::Hub;

#[allow(unused_imports)] // The OpenAPI annotation names it.
use super::problem::Problem;

/// How often an idle stream gets a keep-alive comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Where a stream starts: after the `Last-Event-ID` asked for (an id this run never
/// gave counts as 0: everything held), or after the newest event without one.
fn start_after(hub: &Hub, headers: &HeaderMap) -> u64 {
    let newest = hub.events().last_id();
    match headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
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

/// The server's events as a Server-Sent Events stream: server started/stopping, path
/// ready/not ready, publisher and reader started/stopped, session kicked, config
/// reloaded/failed. Each has `id:` (resume with `Last-Event-ID`), `event:` (its name)
/// and JSON `data:` with `id`, `time_ms`, `type` and the event's fields.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    security((), ("basic" = []), ("bearer" = [])),
    params(
        ("Last-Event-ID" = Option<String>, Header,
            description = "Resume after this event id (0: every event the ring holds); without it the stream starts with the next event"),
    ),
    responses(
        (status = 200, description = "The event stream (text/event-stream; a `gap` event reports events the ring no longer held)",
            body = String, content_type = "text/event-stream"),
        (status = 401, description = "Credentials needed", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not permitted", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn events(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let last = start_after(&hub, &headers);
    Sse::new(stream_after(hub, last)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
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
    async fn streams_start_now_or_resume_after_the_last_event_id() {
        let hub = Arc::new(Hub::default());
        hub.events().publish(ready("a"));
        hub.events().publish(ready("b"));
        assert_eq!(start_after(&hub, &HeaderMap::new()), 2);
        assert_eq!(start_after(&hub, &headers("1")), 1);
        assert_eq!(start_after(&hub, &headers("77")), 0, "another run's id");
        assert_eq!(start_after(&hub, &headers("x")), 2, "garbage is ignored");
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

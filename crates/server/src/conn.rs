//! One RTSP TCP connection: the read loop feeding the sans-IO decoder, and the writer
//! task that sends responses first and interleaved media in vectored batches.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use sluice_rtsp::{Decoder, Frame, Limits, Message, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::handler::Connection;
use crate::latency::EGRESS_LATENCY;
use crate::media_queue::{channel_of, MediaQueue, TcpOut};
use crate::server::Server;

/// Responses queued per connection before its requests stop being read.
const RESPONSE_QUEUE: usize = 16;
/// How long a response may wait for room in that queue before the connection is closed.
const RESPONSE_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// Most interleaved frames written in one vectored write.
const MAX_BATCH: usize = 64;

/// What other tasks hold of a connection: its outbound queues and a way to close it.
#[derive(Debug)]
pub struct ConnHandle {
    /// Connection number, for logs and session ownership.
    pub id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address the client connected to.
    pub local: SocketAddr,
    /// Whether the connection is RTSPS (TLS).
    pub tls: bool,
    ctrl: mpsc::Sender<Bytes>,
    /// Interleaved media queue (bounded; sinks push a frame at a time).
    pub media: Arc<MediaQueue>,
    close: Notify,
    closing: AtomicBool,
}

impl ConnHandle {
    /// Queues an encoded response (never dropped; requests are answered one at a time).
    pub async fn send_response(&self, response: &Response) {
        let mut out = BytesMut::with_capacity(256 + response.body.len());
        response.encode(&mut out);
        // Bounded: a client that sends requests but does not read the answers is not read
        // either (TCP backpressure); one that stalls too long is disconnected.
        match tokio::time::timeout(RESPONSE_QUEUE_WAIT, self.ctrl.send(out.freeze())).await {
            Ok(_) => {}
            Err(_) => {
                warn!(conn = self.id, peer = %self.peer, "client does not read its responses; closing");
                self.close("responses not read");
            }
        }
    }

    /// Asks the connection to close (idempotent).
    pub fn close(&self, why: &str) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            debug!(conn = self.id, why, "closing connection");
        }
        self.close.notify_one();
    }

    /// Whether a close was requested.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }
}

/// Where an accepted connection came from.
#[derive(Debug, Clone, Copy)]
pub struct Accepted {
    /// Connection number.
    pub id: u64,
    /// Client address.
    pub peer: SocketAddr,
    /// Local address.
    pub local: SocketAddr,
    /// Whether the stream is TLS.
    pub tls: bool,
}

/// Serves one accepted connection (plain TCP or TLS) until it closes.
pub async fn run<S>(server: Arc<Server>, socket: S, from: Accepted)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let Accepted {
        id,
        peer,
        local,
        tls,
    } = from;
    let (mut rd, wr) = tokio::io::split(socket);
    let (ctrl_tx, ctrl_rx) = mpsc::channel(RESPONSE_QUEUE);
    let media = Arc::new(MediaQueue::new(server.config().rtsp.reader_queue));
    let handle = Arc::new(ConnHandle {
        id,
        peer,
        local,
        tls,
        ctrl: ctrl_tx,
        media: media.clone(),
        close: Notify::new(),
        closing: AtomicBool::new(false),
    });
    info!(conn = id, %peer, tls, "connect");
    let writer = tokio::spawn(run_writer(wr, ctrl_rx, media, handle.clone()));

    let cfg = &server.config().limits;
    let limits = Limits {
        max_head_bytes: cfg.max_head_bytes,
        max_body_bytes: cfg.max_body_bytes,
        max_headers: cfg.max_headers,
    };
    let (request_timeout, idle_timeout) = (cfg.request_timeout, cfg.idle_timeout);
    let mut decoder = Decoder::new(limits);
    let mut conn = Connection::new(server.clone(), handle.clone());
    // Requests are small; the buffer grows for interleaved media from publishers.
    let mut buf = BytesMut::with_capacity(1024);
    let mut last_input = Instant::now();
    // When the unfinished request at the front of `buf` started arriving.
    let mut partial_since: Option<Instant> = None;
    'read: loop {
        let announced = conn.announced_stream();
        // A half-sent request must complete in time; an idle connection without sessions
        // is closed. Both come back here as a timer.
        let deadline = match partial_since {
            Some(t) => t + request_timeout,
            None if !conn.has_sessions() => last_input + idle_timeout,
            None => last_input + Duration::from_secs(3600),
        };
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break,
                Ok(_) => last_input = Instant::now(),
                Err(e) => {
                    debug!(conn = id, error = %e, "read error");
                    break;
                }
            },
            _ = handle.close.notified() => break,
            _ = async { match &announced { Some(s) => s.ended().await, None => std::future::pending().await } } => {
                info!(conn = id, "stream replaced or ended; closing publisher connection");
                break;
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if partial_since.is_some() {
                    warn!(conn = id, %peer, "request not completed in time; closing connection");
                    handle
                        .send_response(
                            &Response::new(StatusCode::REQUEST_TIMEOUT)
                                .with_header("Connection", "close"),
                        )
                        .await;
                } else if !conn.has_sessions() {
                    info!(conn = id, %peer, "idle connection closed");
                }
                if partial_since.is_some() || !conn.has_sessions() {
                    break;
                }
                continue;
            }
        }
        conn.handle_input();
        let mut decoded = 0usize;
        loop {
            let frame = decoder.decode(&mut buf);
            if matches!(frame, Ok(Some(_))) {
                decoded += 1;
            }
            match frame {
                Ok(Some(Frame::Message(Message::Request(req)))) => conn.handle_request(req).await,
                Ok(Some(Frame::Message(Message::Response(_)))) => {}
                Ok(Some(Frame::Interleaved { channel, payload })) => {
                    conn.handle_interleaved(channel, payload)
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(conn = id, %peer, error = %e, "malformed request; closing connection");
                    let mut resp = Response::new(e.status());
                    if let Some(cseq) = e.cseq() {
                        resp = resp.with_header("CSeq", cseq.to_string());
                    }
                    handle
                        .send_response(&resp.with_header("Connection", "close"))
                        .await;
                    break 'read;
                }
            }
            if handle.is_closing() {
                break 'read;
            }
        }
        // The clock runs for one unfinished message: a publisher streaming interleaved
        // frames whose reads end mid-frame makes progress, and restarts it.
        partial_since = if buf.is_empty() {
            None
        } else if decoded > 0 {
            Some(last_input)
        } else {
            partial_since.or(Some(last_input))
        };
    }
    conn.handle_closed();
    handle.close("connection ended");
    // Let the writer flush what is queued (e.g. a final error response), briefly; a
    // writer stuck on a peer that does not read is aborted, which closes the socket.
    handle.media.close();
    let mut writer = writer;
    if tokio::time::timeout(Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    info!(conn = id, %peer, "disconnect");
}

async fn run_writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut ctrl: mpsc::Receiver<Bytes>,
    media: Arc<MediaQueue>,
    handle: Arc<ConnHandle>,
) {
    let mut taken: Vec<TcpOut> = Vec::with_capacity(MAX_BATCH);
    let mut headers: Vec<[u8; 4]> = Vec::with_capacity(MAX_BATCH * 4);
    let mut scratch: Vec<IoSlice<'static>> = Vec::with_capacity(MAX_IOV);
    'run: loop {
        tokio::select! {
            biased;
            r = ctrl.recv() => match r {
                Some(bytes) => {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                    continue;
                }
                None => break,
            },
            _ = media.wait() => {}
        }
        // Everything queued goes out, in vectored writes; responses queued meanwhile go
        // first.
        loop {
            while let Ok(bytes) = ctrl.try_recv() {
                if wr.write_all(&bytes).await.is_err() {
                    break 'run;
                }
            }
            taken.clear();
            if media.take(&mut taken, MAX_BATCH) == 0 {
                break;
            }
            let close = taken.iter().any(|t| matches!(t, TcpOut::Close));
            let (oldest, frames) = frame_stats(&taken);
            if write_items(&mut wr, &taken, &mut headers, &mut scratch)
                .await
                .is_err()
            {
                break 'run;
            }
            if let Some(t) = oldest {
                EGRESS_LATENCY.record(Instant::now().saturating_duration_since(t), frames);
            }
            if close {
                // Responses queued before the close still go out.
                while let Ok(bytes) = ctrl.try_recv() {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                break 'run;
            }
        }
    }
    media.set_closed();
    let _ = wr.shutdown().await;
    handle.close("writer finished");
}

/// When the oldest relayed packet among `items` was received, and how many relayed
/// packets they hold (RTCP and other unstamped frames aside).
fn frame_stats(items: &[TcpOut]) -> (Option<Instant>, u64) {
    let mut oldest: Option<Instant> = None;
    let mut n = 0u64;
    let mut see = |t: Instant, k: u64| {
        oldest = Some(oldest.map_or(t, |o| o.min(t)));
        n += k;
    };
    for item in items {
        match item {
            TcpOut::Frame {
                received_at: Some(t),
                ..
            } => see(*t, 1),
            TcpOut::Batch { packets, .. } => {
                if let Some(t) = packets.iter().map(|p| p.received_at).min() {
                    see(t, item.frames() as u64);
                }
            }
            _ => {}
        }
    }
    (oldest, n)
}

/// The interleaved frames of `items` (up to a Close), as (channel, packet) pairs.
fn frames_of(items: &[TcpOut]) -> impl Iterator<Item = (u8, &[u8])> {
    items
        .iter()
        .take_while(|i| !matches!(i, TcpOut::Close))
        .flat_map(|item| {
            let (single, batch) = match item {
                TcpOut::Frame { channel, data, .. } => (Some((*channel, &data[..])), None),
                TcpOut::Batch {
                    packets, channels, ..
                } => (None, Some((packets, channels))),
                TcpOut::Close => (None, None),
            };
            single
                .into_iter()
                .chain(batch.into_iter().flat_map(|(packets, channels)| {
                    packets
                        .iter()
                        .filter_map(|p| Some((channel_of(channels, p.track)?, &p.data[..])))
                }))
        })
}

/// Most slices per vectored write (a 4-byte header and a payload per frame; IOV_MAX is 1024).
const MAX_IOV: usize = 512;

/// An empty vector of slices reusing `v`'s allocation (in-place collect), so the writer
/// keeps one scratch vector across writes whatever the slices borrow.
fn recycle<'b>(mut v: Vec<IoSlice<'_>>) -> Vec<IoSlice<'b>> {
    v.clear();
    v.into_iter().map(|_| IoSlice::new(&[])).collect()
}

/// Writes the interleaved frames of `items` with vectored writes of up to [`MAX_IOV`]
/// slices: a 4-byte header per frame plus the shared payload, so no payload is copied
/// and a frame's packets cost one syscall when the socket has room. `headers` and
/// `scratch` are kept across calls so that writing allocates nothing.
async fn write_items<W: AsyncWrite + Unpin>(
    wr: &mut W,
    items: &[TcpOut],
    headers: &mut Vec<[u8; 4]>,
    scratch: &mut Vec<IoSlice<'static>>,
) -> std::io::Result<()> {
    headers.clear();
    headers.extend(frames_of(items).map(|(channel, data)| {
        let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
        sluice_rtsp::interleaved::header(channel, len)
    }));
    let mut slices = recycle(std::mem::take(scratch));
    let mut frames = frames_of(items).zip(headers.iter()).peekable();
    let mut result = Ok(());
    while frames.peek().is_some() && result.is_ok() {
        slices.clear();
        while slices.len() + 2 <= MAX_IOV {
            let Some(((_, data), h)) = frames.next() else {
                break;
            };
            slices.push(IoSlice::new(&h[..]));
            slices.push(IoSlice::new(&data[..data.len().min(usize::from(u16::MAX))]));
        }
        result = write_all_vectored(wr, &mut slices).await;
    }
    *scratch = recycle(slices);
    result
}

/// Writes every byte of `slices` with vectored writes.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    wr: &mut W,
    slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    let mut rest = slices;
    while !rest.is_empty() {
        let n = wr.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    Ok(())
}

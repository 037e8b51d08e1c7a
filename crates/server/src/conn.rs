//! One RTSP TCP connection: the read loop feeding the sans-IO decoder, and the writer
//! task that sends responses and the interleaved media the fan-out could not write
//! directly (see [`crate::media_queue`]), in vectored batches.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sluice_rtsp::{Decoder, Frame, Limits, Message, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::handler::Connection;
use crate::media_queue::{
    frame_headers, gather, record_latency, recycle, MediaQueue, Taken, TcpOut,
};
use crate::server::Server;
use crate::stream::FrameHold;

/// How long a response may wait for room in the connection's queue before the
/// connection is closed (a client that sends requests but does not read the answers).
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
    /// Outbound queue: responses, and interleaved media (bounded; sinks push a frame at a
    /// time, written directly when the socket is free).
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
        match tokio::time::timeout(RESPONSE_QUEUE_WAIT, self.media.push_response(out.freeze()))
            .await
        {
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

/// Serves one accepted plain TCP connection until it closes. Its write side is shared
/// by the writer task and the fan-out's direct writes.
pub async fn run_tcp(server: Arc<Server>, socket: TcpStream, from: Accepted) {
    let (rd, wr) = socket.into_split();
    let wr = Arc::new(wr);
    serve(server, rd, SharedWrite(wr.clone()), Some(wr), from).await;
}

/// Serves one accepted connection of any stream (TLS) until it closes.
pub async fn run<S>(server: Arc<Server>, socket: S, from: Accepted)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (rd, wr) = tokio::io::split(socket);
    serve(server, rd, wr, None, from).await;
}

async fn serve<R, W>(
    server: Arc<Server>,
    mut rd: R,
    wr: W,
    direct: Option<Arc<OwnedWriteHalf>>,
    from: Accepted,
) where
    R: AsyncRead + Send + Unpin,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let Accepted {
        id,
        peer,
        local,
        tls,
    } = from;
    let media = Arc::new(
        MediaQueue::new(server.config().rtsp.reader_queue, direct)
            .recording_latency(server.egress_latency().clone()),
    );
    let handle = Arc::new(ConnHandle {
        id,
        peer,
        local,
        tls,
        media: media.clone(),
        close: Notify::new(),
        closing: AtomicBool::new(false),
    });
    info!(conn = id, %peer, tls, "connect");
    let writer = tokio::spawn(run_writer(wr, media, handle.clone()));

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
    // A publisher's packets collected but not relayed yet go out when its input pauses.
    let mut flush_at: Option<Instant> = None;
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
            _ = async { match (flush_at, &announced) { (Some(t), Some(_)) => tokio::time::sleep_until(t.into()).await, _ => std::future::pending().await } } => {
                if let Some(s) = &announced {
                    s.flush();
                }
                flush_at = None;
                continue;
            }
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
        // A publisher's frames that end in the input at hand go out together once it is
        // used up: one frame per batch when the server keeps up, several when it falls
        // behind and input piles up in the socket (see `Stream::hold_frames`).
        let held = announced.clone().map(FrameHold::new);
        'at_hand: loop {
            loop {
                let frame = decoder.decode(&mut buf);
                if matches!(frame, Ok(Some(_))) {
                    decoded += 1;
                }
                match frame {
                    // Boxed: the handler's state lives only while a request is handled,
                    // instead of in every idle connection's future.
                    Ok(Some(Frame::Message(Message::Request(req)))) => {
                        Box::pin(conn.handle_request(req)).await
                    }
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
            if held.is_none() {
                break;
            }
            // More input already waiting joins this batch; an end of stream or an error
            // is left for the next read to report.
            match crate::at_hand::ready_now(rd.read_buf(&mut buf)).await {
                Some(Ok(n)) if n > 0 => last_input = Instant::now(),
                _ => break 'at_hand,
            }
        }
        // The input at hand is used up: the held frames go out.
        drop(held);
        flush_at = announced.as_ref().and_then(|s| s.flush_at(last_input));
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
    // The queue drops its handle on the socket, so the socket closes now even while
    // sinks still hold the queue.
    handle.media.set_closed();
    info!(conn = id, %peer, "disconnect");
}

async fn run_writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    media: Arc<MediaQueue>,
    handle: Arc<ConnHandle>,
) {
    let mut taken = Taken::default();
    let mut headers: Vec<[u8; 4]> = Vec::new();
    let mut scratch: Vec<IoSlice<'static>> = Vec::new();
    'run: loop {
        media.wait().await;
        // Everything queued goes out: the rest of a cut-short direct write first, then
        // responses, then media in vectored writes. The writer owns the socket until a
        // take finds the queue empty.
        loop {
            taken.clear();
            if !media.take(&mut taken, MAX_BATCH) {
                break;
            }
            if let Some(rest) = taken.partial.take() {
                if wr.write_all(&rest).await.is_err() {
                    break 'run;
                }
            }
            for bytes in &taken.responses {
                if wr.write_all(bytes).await.is_err() {
                    break 'run;
                }
            }
            let close = taken.items.iter().any(|t| matches!(t, TcpOut::Close));
            if write_items(&mut wr, &taken.items, &mut headers, &mut scratch)
                .await
                .is_err()
            {
                break 'run;
            }
            record_latency(&taken.items, media.latency());
            if close {
                break 'run;
            }
        }
        // Idle: keep little memory per connection (a catch-up grows these).
        taken.release();
        headers.shrink_to(16);
        scratch.shrink_to(16);
    }
    media.set_closed();
    let _ = wr.shutdown().await;
    handle.close("writer finished");
}

/// Writes the interleaved frames of `items` with vectored writes of up to [`crate::media_queue::MAX_IOV`]
/// slices: a 4-byte header per frame plus the shared payload, so no payload is copied
/// and a frame's packets cost one syscall when the socket has room. `headers` and
/// `scratch` are kept across calls so that writing allocates nothing.
async fn write_items<W: AsyncWrite + Unpin>(
    wr: &mut W,
    items: &[TcpOut],
    headers: &mut Vec<[u8; 4]>,
    scratch: &mut Vec<IoSlice<'static>>,
) -> std::io::Result<()> {
    frame_headers(items, headers);
    let mut slices = recycle(std::mem::take(scratch));
    let mut done = 0;
    let mut result = Ok(());
    while done < headers.len() && result.is_ok() {
        slices.clear();
        done += gather(items, headers, done, &mut slices);
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

/// The write side of a plain TCP connection, shared (behind the [`MediaQueue`]'s lock,
/// which decides who writes) by the writer task and the fan-out's direct writes.
#[derive(Debug)]
pub struct SharedWrite(pub Arc<OwnedWriteHalf>);

impl SharedWrite {
    fn stream(&self) -> &TcpStream {
        (*self.0).as_ref()
    }

    /// Waits for room, then tries `write` (which returns WouldBlock if the room is gone).
    fn poll_with(
        &self,
        cx: &mut Context<'_>,
        write: impl Fn(&TcpStream) -> std::io::Result<usize>,
    ) -> Poll<std::io::Result<usize>> {
        loop {
            ready!(self.stream().poll_write_ready(cx))?;
            match write(self.stream()) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl AsyncWrite for SharedWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // `sendmsg` rather than tokio's `writev` (see `media_queue::send_vectored`).
        self.poll_with(cx, |s| {
            s.try_io(tokio::io::Interest::WRITABLE, || {
                crate::media_queue::send_vectored(s, bufs)
            })
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self.stream()).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes ~7 MB in vectored writes of 64 slices through a [`SharedWrite`] whose socket
    /// buffers are small, to a reader that starts slowly; returns what was written and
    /// what arrived.
    async fn write_through_push_back() -> (Vec<u8>, Vec<u8>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (mut client, (server, _)) = (client.unwrap(), server.unwrap());
        socket2::SockRef::from(&server)
            .set_send_buffer_size(16 * 1024)
            .unwrap();
        socket2::SockRef::from(&client)
            .set_recv_buffer_size(16 * 1024)
            .unwrap();
        let (_read, write) = server.into_split();
        let mut wr = SharedWrite(Arc::new(write));
        let parts: Vec<Vec<u8>> = (0..2048u32)
            .map(|i| {
                let len = 1024 + (i as usize * 37) % 5000;
                (0..len).map(|k| (i as usize + k) as u8).collect()
            })
            .collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // Slowly at first, so the writer meets a full socket.
                if got.len() < 256 * 1024 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                let n = client.read(&mut buf).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&buf[..n]);
            }
        });
        for chunk in parts.chunks(64) {
            let mut slices: Vec<IoSlice<'_>> = chunk.iter().map(|p| IoSlice::new(p)).collect();
            write_all_vectored(&mut wr, &mut slices).await.unwrap();
        }
        wr.shutdown().await.unwrap();
        (parts.concat(), reader.await.unwrap())
    }

    /// The writer task's vectored writes (`sendmsg` through tokio's readiness) deliver
    /// every byte in order, also when the socket pushes back and the writer must wait for
    /// room (202 times in a run here). Run on a runtime and thread of its own, so that a
    /// stall fails the test instead of hanging it.
    #[test]
    fn vectored_writes_deliver_every_byte_through_push_back() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = tx.send(rt.block_on(write_through_push_back()));
        });
        let (want, got) = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the writes finished within 60 s (no spin, no stall)");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the bytes arrived changed or out of order");
    }
}

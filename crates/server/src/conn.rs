//! One RTSP TCP connection: the read loop feeding the sans-IO decoder, and the writer
//! task that sends responses first and interleaved media in vectored batches.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sluice_rtsp::{Decoder, Frame, Limits, Message, Response};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use crate::handler::Connection;
use crate::reader::TcpOut;
use crate::server::Server;

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
    ctrl: mpsc::UnboundedSender<Bytes>,
    /// Interleaved media queue (bounded; sinks use `try_send`).
    pub media: mpsc::Sender<TcpOut>,
    close: Notify,
    closing: AtomicBool,
}

impl ConnHandle {
    /// Queues an encoded response (never dropped; requests are answered one at a time).
    pub fn send_response(&self, response: &Response) {
        let mut out = BytesMut::with_capacity(256 + response.body.len());
        response.encode(&mut out);
        let _ = self.ctrl.send(out.freeze());
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

/// Serves one accepted connection until it closes.
pub async fn run(server: Arc<Server>, socket: TcpStream, peer: SocketAddr, id: u64) {
    let _ = socket.set_nodelay(true);
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (mut rd, wr) = socket.into_split();
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel();
    let (media_tx, media_rx) = mpsc::channel(server.config().rtsp.reader_queue);
    let handle = Arc::new(ConnHandle {
        id,
        peer,
        local,
        tls: false,
        ctrl: ctrl_tx,
        media: media_tx,
        close: Notify::new(),
        closing: AtomicBool::new(false),
    });
    info!(conn = id, %peer, "connect");
    let writer = tokio::spawn(run_writer(wr, ctrl_rx, media_rx, handle.clone()));

    let limits = Limits {
        max_head_bytes: server.config().rtsp.max_head_bytes,
        max_body_bytes: server.config().rtsp.max_body_bytes,
        ..Limits::default()
    };
    let mut decoder = Decoder::new(limits);
    let mut conn = Connection::new(server.clone(), handle.clone());
    let mut buf = BytesMut::with_capacity(8192);
    'read: loop {
        let announced = conn.announced_stream();
        tokio::select! {
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) => break,
                Ok(_) => {}
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
        }
        conn.handle_input();
        loop {
            match decoder.decode(&mut buf) {
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
                    handle.send_response(&resp.with_header("Connection", "close"));
                    break 'read;
                }
            }
            if handle.is_closing() {
                break 'read;
            }
        }
    }
    conn.handle_closed();
    handle.close("connection ended");
    // Let the writer flush what is queued (e.g. a final error response), briefly; a
    // writer stuck on a peer that does not read is aborted, which closes the socket.
    let _ = handle.media.try_send(TcpOut::Close);
    let mut writer = writer;
    if tokio::time::timeout(std::time::Duration::from_secs(2), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    info!(conn = id, %peer, "disconnect");
}

async fn run_writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut ctrl: mpsc::UnboundedReceiver<Bytes>,
    mut media: mpsc::Receiver<TcpOut>,
    handle: Arc<ConnHandle>,
) {
    let mut batch: Vec<(u8, Bytes)> = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            biased;
            r = ctrl.recv() => match r {
                Some(bytes) => {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            r = media.recv() => {
                let mut close = false;
                match r {
                    Some(TcpOut::Frame { channel, data }) => batch.push((channel, data)),
                    Some(TcpOut::Close) | None => close = true,
                }
                while !close && batch.len() < MAX_BATCH {
                    match media.try_recv() {
                        Ok(TcpOut::Frame { channel, data }) => batch.push((channel, data)),
                        Ok(TcpOut::Close) => close = true,
                        Err(_) => break,
                    }
                }
                if !batch.is_empty() && write_frames(&mut wr, &batch).await.is_err() {
                    break;
                }
                batch.clear();
                if close {
                    // Responses queued before the close still go out.
                    while let Ok(bytes) = ctrl.try_recv() {
                        if wr.write_all(&bytes).await.is_err() {
                            break;
                        }
                    }
                    break;
                }
            }
        }
    }
    let _ = wr.shutdown().await;
    handle.close("writer finished");
}

/// Writes interleaved frames with vectored writes: a 4-byte header per frame plus the
/// shared payload, so no payload is copied and a batch costs one syscall when the socket
/// has room.
async fn write_frames<W: AsyncWrite + Unpin>(
    wr: &mut W,
    frames: &[(u8, Bytes)],
) -> std::io::Result<()> {
    let headers: Vec<[u8; 4]> = frames
        .iter()
        .map(|(channel, data)| {
            let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
            sluice_rtsp::interleaved::header(*channel, len)
        })
        .collect();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(frames.len() * 2);
    for ((_, data), h) in frames.iter().zip(&headers) {
        parts.push(h);
        parts.push(&data[..data.len().min(usize::from(u16::MAX))]);
    }
    // (index of the first unwritten part, bytes of it already written)
    let (mut idx, mut off) = (0usize, 0usize);
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len());
    while idx < parts.len() {
        slices.clear();
        slices.push(IoSlice::new(&parts[idx][off..]));
        slices.extend(parts[idx + 1..].iter().map(|p| IoSlice::new(p)));
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < parts.len() {
            let rest = parts[idx].len() - off;
            if n >= rest {
                n -= rest;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

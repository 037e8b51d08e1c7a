//! The writer side of an RTSP connection: the task that writes responses and the
//! interleaved media the fan-out could not write directly (see [`crate::rtsp::readers::media_queue`]),
//! in vectored batches, and the shared write half of a plain TCP socket.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use crate::rtsp::conn::ConnHandle;
use crate::rtsp::readers::media_queue::{
    frame_headers, gather, record_latency, recycle, MediaQueue, Taken, TcpOut,
};

/// Most interleaved frames written in one vectored write.
const MAX_BATCH: usize = 64;

/// Writes what the connection's queue holds until the queue closes or a write fails.
pub(crate) async fn run_writer<W: AsyncWrite + Unpin>(
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

/// Writes the interleaved frames of `items` with vectored writes of up to [`crate::rtsp::readers::media_queue::MAX_IOV`]
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
                crate::rtsp::readers::media_queue::send_vectored(s, bufs)
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
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

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

//! Input already at hand: whether a read or receive completes without waiting.
//!
//! Live sources use it to tell a burst of input (more is already buffered, so the frames
//! that end in it can go out together, see [`sluice_hub::Stream::hold_frames`]) from
//! the end of one.

use std::future::Future;
use std::task::Poll;

/// Polls `fut` once, in the calling task's context: its output if it completes at once,
/// `None` (and `fut` dropped) if it would wait. Only for cancel-safe futures, such as a
/// tokio socket read or receive: dropped pending, they have taken nothing. Tokio's
/// cooperative budget applies, so a source that always has input still yields now and
/// then.
pub async fn ready_now<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Sleeps until `at`, or forever without one: a source's optional timer (its stream's
/// [`sluice_hub::Stream::poll_timeout`]) as a `select!` branch.
pub(crate) async fn sleep_until(at: Option<std::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_read_completes_only_when_input_is_at_hand() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut buf = [0u8; 8];
        assert!(
            ready_now(b.read(&mut buf)).await.is_none(),
            "nothing written"
        );
        a.write_all(b"hi").await.unwrap();
        assert_eq!(ready_now(b.read(&mut buf)).await.unwrap().unwrap(), 2);
        assert_eq!(&buf[..2], b"hi");
        assert!(ready_now(b.read(&mut buf)).await.is_none(), "all taken");
    }
}

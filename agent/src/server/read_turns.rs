//! Reads in turns: a connection reads at most `TURN_BYTES`, then lets the
//! tasks queued behind it run before it reads on.
//!
//! h2 reads and parses every frame the socket holds before hyper starts the
//! streams they open, and it parks each frame of a stream not yet started in
//! a per-connection buffer that never shrinks. A client opening 100 watches
//! at once (a pod starting) sends 300 frames in one burst (headers, message,
//! end of stream): that buffer grew to 512 places, about 128 KB, for the
//! connection's life. Read in turns, the streams started by one turn take
//! their frames out before the next turn parses more. Measured with heaptrack
//! on 10,000 streams over 100 connections (`vaultlet-bench --only streams`):
//! those buffers went from 12.7 MB to 1.5 MB, and the agent's heap in use
//! from 49 MB to 38 MB (1,024 bytes a turn: 45 MB).
//!
//! A yield costs a turn of the scheduler: single calls (a few hundred bytes)
//! rarely reach the limit, and a cached read's instructions did not change.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// What one turn reads: the opening frames of a few watches.
const TURN_BYTES: usize = 512;

/// A connection's reads in turns (kept by its `Coalesce`, which wraps its
/// socket once for both directions).
#[derive(Default)]
pub struct ReadTurns {
    // Bytes read since the connection last waited or yielded.
    read: usize,
}

impl ReadTurns {
    /// Reads from `inner` within the turn, or yields once the turn is over.
    pub fn poll_read<S: AsyncRead>(
        &mut self,
        inner: Pin<&mut S>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read >= TURN_BYTES {
            // Queued behind the tasks this turn woke or started (tokio runs a
            // task that wakes itself after the others).
            self.read = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let room = (TURN_BYTES - self.read).min(buf.remaining());
        // Zeroing at most `TURN_BYTES` keeps this free of `unsafe`.
        let mut turn = ReadBuf::new(buf.initialize_unfilled_to(room));
        let read = inner.poll_read(cx, &mut turn);
        let n = turn.filled().len();
        if read.is_pending() {
            self.read = 0;
        }
        ready!(read)?;
        buf.advance(n);
        self.read += n;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One poll of `socket` in `turns`, whatever it returns.
    async fn poll_once<S: AsyncRead + Unpin>(
        turns: &mut ReadTurns,
        socket: &mut S,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::future::poll_fn(|cx| Poll::Ready(turns.poll_read(Pin::new(&mut *socket), cx, buf))).await
    }

    #[tokio::test]
    async fn a_burst_is_read_in_turns_and_nothing_is_lost() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().expect("socket pair");
        let burst: Vec<u8> = (0..10 * TURN_BYTES).map(|i| i as u8).collect();
        b.write_all(&burst).await.expect("write");
        drop(b);
        a.readable().await.expect("readable");
        let mut turns = ReadTurns::default();
        let mut space = vec![0; 4 * TURN_BYTES];
        let mut buf = ReadBuf::new(&mut space);
        assert!(matches!(poll_once(&mut turns, &mut a, &mut buf).await, Poll::Ready(Ok(()))));
        assert_eq!(buf.filled().len(), TURN_BYTES, "one read holds one turn at most");
        assert!(poll_once(&mut turns, &mut a, &mut buf).await.is_pending(), "the turn is over: the reader yields");
        assert!(
            matches!(poll_once(&mut turns, &mut a, &mut buf).await, Poll::Ready(Ok(()))),
            "and reads on at its next turn"
        );
        assert_eq!(buf.filled(), &burst[..2 * TURN_BYTES]);
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.expect("read the rest");
        assert_eq!(rest, &burst[2 * TURN_BYTES..]);
    }
}

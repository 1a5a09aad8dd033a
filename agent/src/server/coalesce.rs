//! Writes that wait a few passes of the scheduler while a change is fanned
//! out (`FanOut`), so that one write carries the frames of many streams.
//!
//! A change to a secret wakes every stream watching it, connection by
//! connection (`states`). Each stream's task queues its frame and wakes its
//! connection's task, which tokio runs next (its LIFO slot): the connection
//! wrote each frame alone, one `writev` and one wake-up of the reading process
//! per event (counted: 19,700 writes for two changes to 10,000 streams on 100
//! connections). Here a connection about to write yields first: a task that
//! wakes itself is queued at the back of its worker's queue, so the stream
//! tasks queued before it add their frames. It yields again while its frames
//! keep growing (at most `MAX_TURNS`), then writes them all: about 180 writes
//! for one change to those streams, against 230 when it yielded once
//! (`vaultlet-bench --only streams`). Not for single calls: a yield also wakes
//! the other worker to steal the task, which cost a cached read 10-20 µs
//! (measured); outside a fan-out, writes go at once.
//!
//! The same wrapper, around each connection's socket, reads in turns
//! (`read_turns`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

use super::read_turns::ReadTurns;
use crate::fanout::FanOut;

/// Turns a write may wait: each is one pass over the tasks queued before it.
const MAX_TURNS: u8 = 8;

pin_project_lite::pin_project! {
    pub struct Coalesce<S> {
        #[pin]
        inner: S,
        fan_out: Arc<FanOut>,
        // The turns this write has yielded, and how many bytes it offered at
        // the last one.
        turns: u8,
        offered: usize,
        // Reads go in turns as well (see `read_turns`).
        reads: ReadTurns,
    }
}

impl<S> Coalesce<S> {
    pub fn new(inner: S, fan_out: Arc<FanOut>) -> Coalesce<S> {
        Coalesce { inner, fan_out, turns: 0, offered: 0, reads: ReadTurns::default() }
    }
}

impl<S: AsyncWrite> Coalesce<S> {
    /// Writes with `write` (`offered` bytes) once the tasks queued before the
    /// connection have run and its frames stopped growing.
    fn write_after_turns<T>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        offered: usize,
        write: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let this = self.project();
        let growing = *this.turns == 0 || offered > *this.offered;
        if growing && *this.turns < MAX_TURNS && this.fan_out.in_progress() {
            (*this.turns, *this.offered) = (*this.turns + 1, offered);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let written = ready!(write(this.inner, cx));
        *this.turns = 0;
        Poll::Ready(written)
    }
}

impl<S: Connected> Connected for Coalesce<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead> AsyncRead for Coalesce<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        this.reads.poll_read(this.inner, cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Coalesce<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.write_after_turns(cx, buf.len(), |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let offered = bufs.iter().map(|b| b.len()).sum();
        self.write_after_turns(cx, offered, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::AsyncReadExt;
    use tokio::sync::Notify;

    use super::*;

    const STREAMS: u8 = 100;

    /// A connection's writes as h2 makes them: each poll writes what the
    /// streams have queued by then. Returns how many writes it took.
    async fn connection(mut out: impl AsyncWrite + Unpin, queued: Arc<Mutex<Vec<u8>>>, wake: Arc<Notify>) -> usize {
        let (mut written, mut writes) = (0, 0);
        while written < usize::from(STREAMS) {
            wake.notified().await;
            loop {
                let n = std::future::poll_fn(|cx| {
                    let q = queued.lock().expect("queue");
                    if q.is_empty() { Poll::Ready(Ok(0)) } else { Pin::new(&mut out).poll_write(cx, &q) }
                })
                .await
                .expect("write");
                if n == 0 {
                    break;
                }
                queued.lock().expect("queue").drain(..n);
                (written, writes) = (written + n, writes + 1);
            }
        }
        writes
    }

    /// One change wakes every stream: each queues its frame and wakes the
    /// connection. Returns the writes and the bytes the reader got.
    async fn one_change(coalesce: bool) -> (usize, Vec<u8>) {
        let (a, mut b) = tokio::net::UnixStream::pair().expect("socket pair");
        let (queued, wake) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Notify::new()));
        let conn = if coalesce {
            let fan_out = Arc::new(FanOut::default());
            fan_out.begins(usize::from(STREAMS));
            tokio::spawn(connection(Coalesce::new(a, fan_out), queued.clone(), wake.clone()))
        } else {
            tokio::spawn(connection(a, queued.clone(), wake.clone()))
        };
        tokio::task::yield_now().await;
        // Spawned from a worker's task, as the hub's wake-ups are.
        tokio::spawn(async move {
            for i in 0..STREAMS {
                let (queued, wake) = (queued.clone(), wake.clone());
                tokio::spawn(async move {
                    queued.lock().expect("queue").push(i);
                    wake.notify_one();
                });
            }
        });
        let writes = conn.await.expect("connection");
        let mut got = vec![0; usize::from(STREAMS)];
        b.read_exact(&mut got).await.expect("read");
        got.sort_unstable();
        (writes, got)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn during_a_fan_out_frames_queued_before_the_write_go_out_in_it() {
        let every_frame: Vec<u8> = (0..STREAMS).collect();
        // Without it, the connection runs right after each stream (tokio's
        // LIFO slot): a write per frame. This is what the test guards.
        let (alone, got) = one_change(false).await;
        assert_eq!(got, every_frame);
        assert!(alone > usize::from(STREAMS) / 2, "without coalescing: {alone} writes");
        let (coalesced, got) = one_change(true).await;
        assert_eq!(got, every_frame);
        assert!(coalesced <= 3, "{coalesced} writes for {STREAMS} frames");
    }

    #[test]
    fn during_a_fan_out_a_write_waits_while_its_frames_grow_and_a_few_turns_at_most() {
        let fan_out = Arc::new(FanOut::default());
        fan_out.begins(usize::from(STREAMS));
        let mut out = Coalesce::new(Vec::new(), fan_out);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut poll = |buf: &[u8]| Pin::new(&mut out).poll_write(&mut cx, buf);
        assert!(poll(b"a").is_pending(), "a first turn");
        assert!(poll(b"ab").is_pending(), "it grew: another turn");
        assert!(matches!(poll(b"ab"), Poll::Ready(Ok(2))), "it stopped growing");
        let mut frames = Vec::new();
        for turn in 0..MAX_TURNS {
            frames.push(turn);
            assert!(poll(&frames).is_pending());
        }
        frames.push(MAX_TURNS);
        assert!(poll(&frames).is_ready(), "still growing, but out of turns");
    }

    #[test]
    fn outside_a_fan_out_a_write_goes_at_once() {
        let mut out = Coalesce::new(Vec::new(), Arc::default());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(Pin::new(&mut out).poll_write(&mut cx, b"frame"), Poll::Ready(Ok(5))));
        assert_eq!(out.inner, b"frame");
    }
}

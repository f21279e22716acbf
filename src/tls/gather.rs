//! Gathers what a gRPC connection writes, so that the messages of many
//! concurrent calls leave in one syscall instead of one each: on the
//! connections the node accepts, and on those it and [`crate::Client`]
//! make ([`super::Dial`]).
//!
//! hyper's HTTP/2 server flushes its connection every time it has
//! something to send, and each call's response is made by a task of its
//! own: under load, one `writev` per response. On loopback every write runs
//! the whole TCP path and wakes the reader, and that was the largest part
//! of a read's CPU (a serializable get cost the servers 32 µs, 44% of it in
//! the kernel, against etcd's 7%; 1.3 `writev`s per get, `perf stat`).
//! So a flush with bytes pending is put off once: the connection's task
//! yields (tokio runs it again after the tasks already waiting, the calls
//! finishing their responses among them) and the next flush writes
//! everything gathered by then. An idle connection loses one turn of the
//! scheduler, not a timer's wait. A client's connection is the same in
//! reverse: hyper's HTTP/2 client flushes after each request it sends
//! (0.7 `writev`s per get from `raftset bench`).
//!
//! Never: holds bytes past a flush that follows the one put off, or more
//! than [`GATHER_BYTES`] before writing them.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// At most this many bytes wait for a flush; a larger write goes out as
/// it comes.
const GATHER_BYTES: usize = 64 * 1024;

/// A connection whose writes are gathered; reads pass through.
pub struct Gathered<S> {
    io: S,
    gather: Gather,
}

impl<S> Gathered<S> {
    pub(super) fn new(io: S) -> Gathered<S> {
        Gathered {
            io,
            gather: Gather::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gathered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gathered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.gather
            .poll_write_vectored(&mut this.io, cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.gather.poll_write_vectored(&mut this.io, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.gather.poll_flush(&mut this.io, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.gather.poll_shutdown(&mut this.io, cx)
    }
}

/// The bytes written but not yet sent, and whether their flush was put off.
#[derive(Default)]
struct Gather {
    pending: Vec<u8>,
    /// Sent from here on.
    sent: usize,
    /// The flush of what is pending was put off once already.
    deferred: bool,
}

impl Gather {
    fn poll_write_vectored<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.unsent() + len > GATHER_BYTES {
            ready!(self.poll_send(io, cx))?;
            if len >= GATHER_BYTES {
                return Pin::new(io).poll_write_vectored(cx, bufs);
            }
        }
        for buf in bufs {
            self.pending.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }

    fn poll_flush<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        if self.unsent() > 0 && !self.deferred {
            self.deferred = true;
            // Woken while it runs, the task goes behind those already
            // waiting to run (tokio's `yield_now`).
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_send(io, cx))?;
        Pin::new(io).poll_flush(cx)
    }

    fn poll_shutdown<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_send(io, cx))?;
        Pin::new(io).poll_shutdown(cx)
    }

    fn unsent(&self) -> usize {
        self.pending.len() - self.sent
    }

    /// Writes out everything pending.
    fn poll_send<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.unsent() > 0 {
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        self.deferred = false;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::task::Wake;

    use super::*;

    /// A socket that records each write it takes, and takes at most
    /// `room` bytes at a time (none: not ready).
    #[derive(Default)]
    struct Socket {
        writes: Vec<Vec<u8>>,
        room: Option<usize>,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = match self.room {
                Some(0) => return Poll::Pending,
                Some(room) => {
                    let n = room.min(buf.len());
                    self.room = Some(room - n);
                    n
                }
                None => buf.len(),
            };
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(Mutex<usize>);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            *self.0.lock().unwrap() += 1;
        }
    }

    fn write(gather: &mut Gather, socket: &mut Socket, bytes: &[u8]) {
        let waker = Arc::new(Wakes::default()).into();
        let mut cx = Context::from_waker(&waker);
        let written = gather.poll_write_vectored(socket, &mut cx, &[io::IoSlice::new(bytes)]);
        assert!(matches!(written, Poll::Ready(Ok(n)) if n == bytes.len()));
    }

    /// Flushes once; whether it completed, and how often it woke the task.
    fn flush(gather: &mut Gather, socket: &mut Socket) -> (bool, usize) {
        let wakes = Arc::new(Wakes::default());
        let waker = wakes.clone().into();
        let mut cx = Context::from_waker(&waker);
        let done = match gather.poll_flush(socket, &mut cx) {
            Poll::Ready(result) => {
                result.unwrap();
                true
            }
            Poll::Pending => false,
        };
        let woken = *wakes.0.lock().unwrap();
        (done, woken)
    }

    #[test]
    fn two_responses_written_before_the_second_flush_leave_in_one_write() {
        let (mut gather, mut socket) = (Gather::default(), Socket::default());
        write(&mut gather, &mut socket, b"first");
        assert_eq!(
            flush(&mut gather, &mut socket),
            (false, 1),
            "put off, task woken"
        );
        assert!(socket.writes.is_empty());
        write(&mut gather, &mut socket, b"second");
        assert_eq!(flush(&mut gather, &mut socket), (true, 0));
        assert_eq!(socket.writes, [b"firstsecond".to_vec()]);
        assert_eq!(
            flush(&mut gather, &mut socket),
            (true, 0),
            "nothing pending"
        );
    }

    #[test]
    fn a_lone_response_goes_out_at_the_flush_after_the_one_put_off() {
        let (mut gather, mut socket) = (Gather::default(), Socket::default());
        write(&mut gather, &mut socket, b"alone");
        assert_eq!(flush(&mut gather, &mut socket), (false, 1));
        assert_eq!(flush(&mut gather, &mut socket), (true, 0));
        assert_eq!(socket.writes, [b"alone".to_vec()]);
        write(&mut gather, &mut socket, b"next");
        assert_eq!(flush(&mut gather, &mut socket), (false, 1), "put off again");
    }

    #[test]
    fn a_socket_not_ready_keeps_the_bytes_in_order_until_it_is() {
        let (mut gather, mut socket) = (Gather::default(), Socket::default());
        write(&mut gather, &mut socket, b"abcdef");
        flush(&mut gather, &mut socket);
        socket.room = Some(4);
        socket.writes.clear();
        // Each poll takes what the socket does; none is lost or repeated.
        let mut polls = 1;
        while !flush(&mut gather, &mut socket).0 {
            polls += 1;
            assert!(polls < 10);
            socket.room = Some(if polls % 2 == 0 { 0 } else { 4 });
        }
        assert_eq!(polls, 3, "4 bytes, not ready, the last 2");
        assert_eq!(socket.writes, [b"abcd".to_vec(), b"ef".to_vec()]);
    }

    #[test]
    fn a_large_write_goes_out_at_once_after_what_was_pending() {
        let (mut gather, mut socket) = (Gather::default(), Socket::default());
        write(&mut gather, &mut socket, b"small");
        let large = vec![7u8; GATHER_BYTES];
        write(&mut gather, &mut socket, &large);
        assert_eq!(socket.writes, [b"small".to_vec(), large]);
        assert_eq!(
            flush(&mut gather, &mut socket),
            (true, 0),
            "nothing pending"
        );
    }
}

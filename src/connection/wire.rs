//! Writing already-encoded WebSocket frames straight to the socket.
//!
//! The hub's frames carry their wire encoding (`hub::Frame::wire`), the same bytes for every
//! subscriber, so a batch goes out as one vectored write of the shared buffers: nothing is
//! copied or encoded per socket, and no write buffer is kept per socket. Every byte the server
//! sends on a WebSocket goes through here (pongs and close frames too), one whole frame after
//! another.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::AsyncWrite;

use crate::hub::Frame;

/// Most frames handed to one `writev`: a batch larger than this takes several.
const MAX_FRAMES_PER_WRITE: usize = 64;

/// Writes the frames of `batch` in order, as many per system call as the kernel takes, and
/// removes each one written in full. `offset` is how much of the first frame was already
/// written, and is left at that figure for a frame the kernel took only part of.
pub fn poll_write_frames<W: AsyncWrite + Unpin>(
    io: &mut W,
    cx: &mut Context<'_>,
    batch: &mut VecDeque<Arc<Frame>>,
    offset: &mut usize,
) -> Poll<io::Result<()>> {
    while !batch.is_empty() {
        let written = {
            let mut slices = [IoSlice::new(&[]); MAX_FRAMES_PER_WRITE];
            let mut count = 0;
            for (slice, frame) in slices.iter_mut().zip(batch.iter()) {
                let skip = if count == 0 { *offset } else { 0 };
                *slice = IoSlice::new(&frame.wire[skip..]);
                count += 1;
            }
            ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?
        };
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let mut done = written + std::mem::take(offset);
        while let Some(front) = batch.front() {
            if done < front.wire.len() {
                *offset = done;
                break;
            }
            done -= front.wire.len();
            batch.pop_front();
        }
    }
    Poll::Ready(Ok(()))
}

/// Writes `bytes[*offset..]` in full, moving `offset` as the kernel takes them.
pub fn poll_write_all<W: AsyncWrite + Unpin>(
    io: &mut W,
    cx: &mut Context<'_>,
    bytes: &[u8],
    offset: &mut usize,
) -> Poll<io::Result<()>> {
    while *offset < bytes.len() {
        let written = ready!(Pin::new(&mut *io).poll_write(cx, &bytes[*offset..]))?;
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *offset += written;
    }
    Poll::Ready(Ok(()))
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    /// A writer that takes at most `step` bytes per call, and refuses every other call (as a
    /// full socket would), so that frames are cut at every possible place.
    struct Trickle {
        written: Vec<u8>,
        step: usize,
        refuse_next: bool,
        calls: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.calls += 1;
            self.refuse_next = !self.refuse_next;
            if !self.refuse_next {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut left = self.step;
            for buf in bufs {
                let take = buf.len().min(left);
                self.written.extend_from_slice(&buf[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(self.step - left))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn frames(count: usize) -> VecDeque<Arc<Frame>> {
        (0..count).map(|i| Frame::plain(format!("{{\"event\":\"e{i}\",\"data\":\"{}\"}}", "x".repeat(i * 7)))).collect()
    }

    /// Whatever the kernel takes per call, and however often it says "later", the bytes on the
    /// wire are the frames whole and in order, and the batch is empty only once all are written.
    #[test]
    fn frames_cut_anywhere_arrive_whole_and_in_order() {
        let mut cx = Context::from_waker(Waker::noop());
        for step in [1, 2, 3, 7, 50, 1000, 1 << 20] {
            let mut batch = frames(150); // more than one writev's worth
            let expected: Vec<u8> = batch.iter().flat_map(|frame| frame.wire.to_vec()).collect();
            let mut io = Trickle { written: Vec::new(), step, refuse_next: false, calls: 0 };
            let mut offset = 0;
            let mut polls = 0;
            while poll_write_frames(&mut io, &mut cx, &mut batch, &mut offset).is_pending() {
                polls += 1;
                assert!(polls < 1_000_000, "no progress");
            }
            assert!(batch.is_empty());
            assert_eq!(offset, 0);
            assert_eq!(io.written, expected, "step {step}");
        }
    }

    #[test]
    fn write_all_resumes_where_it_stopped() {
        let mut cx = Context::from_waker(Waker::noop());
        let bytes: Vec<u8> = (0..=255).collect();
        let mut io = Trickle { written: Vec::new(), step: 10, refuse_next: false, calls: 0 };
        let mut offset = 0;
        while poll_write_all(&mut io, &mut cx, &bytes, &mut offset).is_pending() {}
        assert_eq!(io.written, bytes);
        assert_eq!(offset, bytes.len());
        assert!(io.calls > 26);
    }
}

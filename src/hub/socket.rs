//! One connection as the hub sees it: its Pusher socket id, and the bounded outbox that fan-out
//! pushes shared frames into without ever waiting.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake};

use futures_util::task::AtomicWaker;
use reprise_api::ErrorCode;

use super::{Deadline, Frame, lock};

/// A Pusher socket id: two random numbers joined by a dot ("123.456"), kept inline. Each number
/// is below 10^9, so the id takes at most 19 bytes; a `String` would add a heap block to every
/// socket, idle ones included.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SocketId {
    len: u8,
    bytes: [u8; SocketId::MAX_LEN],
}

impl SocketId {
    const MAX_LEN: usize = 19;

    pub fn random() -> SocketId {
        use std::io::Write;
        let (a, b) = (rand::random_range(1..1_000_000_000u32), rand::random_range(1..1_000_000_000u32));
        let mut bytes = [0; SocketId::MAX_LEN];
        let mut cursor = std::io::Cursor::new(&mut bytes[..]);
        write!(cursor, "{a}.{b}").expect("two numbers below 10^9 and a dot fit in 19 bytes");
        let len = u8::try_from(cursor.position()).expect("at most 19");
        SocketId { len, bytes }
    }

    /// A fixed id, for tests.
    #[cfg(test)]
    pub(crate) fn fixed(id: &str) -> SocketId {
        let mut bytes = [0; SocketId::MAX_LEN];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        SocketId { len: u8::try_from(id.len()).expect("a short id"), bytes }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("digits and a dot are UTF-8")
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Compares bytes, without the UTF-8 check of `as_str`: the fan-out compares every subscriber's
/// id with the excluded one.
impl PartialEq<str> for SocketId {
    fn eq(&self, other: &str) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl std::ops::Deref for SocketId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for SocketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for SocketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What the rest of the server knows of one connection, and its outbox.
///
/// The outbox is a bounded queue under a std `Mutex` (held for one push or one swap, never
/// across an await) rather than a channel: an idle socket's queue is an empty `VecDeque`, which
/// allocates nothing, where a channel allocates its state and first block up front, and the
/// connection takes everything queued in one swap.
#[derive(Debug)]
pub struct Socket {
    pub id: SocketId,
    /// Unique for the server's life: the key of this socket in channel maps (a number, where the
    /// Pusher id is a string that each map entry would have to copy).
    pub(super) serial: u64,
    outbox: Mutex<Outbox>,
    /// Most frames the outbox holds; one more makes the socket a slow consumer.
    capacity: usize,
    /// Set when a frame is queued into an empty outbox, or a close is asked; cleared by the
    /// connection's [`Woken`]. One flag and one waker for both: an idle socket's task keeps
    /// every waiter it polls. (A `Notify` did the same with a waiter list under a mutex: about
    /// 250 instructions per frame delivered, and a 64-byte waiter in every task.)
    woken: AtomicBool,
    /// The connection task's waker, registered by [`Woken`].
    waker: AtomicWaker,
    /// Set (once) to the close code the connection should close with: 4100 on overflow, or the
    /// code of a `terminate_connections`. Read by the connection when it wakes.
    close_code: AtomicU16,
    /// Set when something polled with this socket as its waker (the connection's reads; see the
    /// `Wake` impl) has news. Starts set, so that they are polled (and
    /// so registered) once.
    io_woken: AtomicBool,
    /// When the connection wants to look at its client's silence again (to ping it, or to give
    /// up on its pong): the registry's sweeper wakes it then, with `deadline_woken` set.
    deadline: Deadline,
    deadline_woken: AtomicBool,
}

#[derive(Debug, Default)]
struct Outbox {
    frames: VecDeque<Arc<Frame>>,
    /// The connection is gone: nothing more is queued.
    closed: bool,
}

impl Socket {
    pub fn new(id: SocketId, capacity: usize) -> Arc<Socket> {
        static NEXT_SERIAL: AtomicU64 = AtomicU64::new(0);
        Arc::new(Socket {
            id,
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            outbox: Mutex::new(Outbox::default()),
            capacity,
            woken: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            close_code: AtomicU16::new(0),
            io_woken: AtomicBool::new(true),
            deadline: Deadline::default(),
            deadline_woken: AtomicBool::new(false),
        })
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        lock(&self.outbox)
    }

    /// Queues a frame without waiting; a full outbox marks the socket as a slow consumer.
    /// Returns false if the frame was not queued.
    pub fn send(&self, frame: &Arc<Frame>) -> bool {
        let mut outbox = self.outbox();
        if outbox.closed {
            return false; // The connection is gone; it removes its own subscriptions.
        }
        if outbox.frames.len() >= self.capacity {
            drop(outbox);
            self.close(ErrorCode::OverCapacity.as_u16());
            return false;
        }
        outbox.frames.push_back(Arc::clone(frame));
        let was_empty = outbox.frames.len() == 1;
        drop(outbox);
        // Only the first frame of a batch needs to wake the connection: it takes them all.
        if was_empty {
            self.wake();
        }
        true
    }

    /// Completes when a frame was queued into an empty outbox or a close was asked (or was,
    /// before this was created: the wake-up is kept). It may complete with nothing to do.
    pub fn woken(&self) -> Woken<'_> {
        Woken(self)
    }

    /// Wakes the connection (once, however many times this is called before it looks).
    pub fn wake(&self) {
        // Set before waking: the woken task looks at the flag.
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Moves every queued frame into `batch` (empty), in order.
    pub fn take_frames(&self, batch: &mut VecDeque<Arc<Frame>>) {
        std::mem::swap(&mut self.outbox().frames, batch);
    }

    /// The oldest queued frame, for tests that read an outbox as the connection would.
    #[cfg(test)]
    pub(crate) fn pop_frame(&self) -> Option<Arc<Frame>> {
        self.outbox().frames.pop_front()
    }

    /// Marks the outbox closed and drops what it holds: the connection has ended.
    pub fn close_outbox(&self) {
        let mut outbox = self.outbox();
        outbox.closed = true;
        outbox.frames = VecDeque::new();
    }

    /// Asks the connection to close with `code` (the first request wins).
    pub fn close(&self, code: u16) {
        if self.close_code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.wake();
        }
    }

    /// Unique for the server's life: names this socket in the cluster's presence records.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// The code the socket was asked to close with, or 0 if it was not.
    pub fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Acquire)
    }

    pub fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    /// Wakes the connection because its deadline passed.
    pub fn wake_for_deadline(&self) {
        self.deadline_woken.store(true, Ordering::Release);
        self.wake();
    }

    /// Whether the deadline passed since the last call.
    pub fn take_deadline_wake(&self) -> bool {
        self.deadline_woken.load(Ordering::Relaxed) && self.deadline_woken.swap(false, Ordering::AcqRel)
    }

    /// Whether what is polled with this socket as its waker woke since the last
    /// [`Socket::take_io_wake`] (or was woken by hand: a read that returned a message may have
    /// left more in its buffer, which no new wake-up would announce).
    pub fn io_wake_pending(&self) -> bool {
        self.io_woken.load(Ordering::Acquire)
    }

    /// Like [`Socket::io_wake_pending`], and clears it: the caller polls what it stands for now.
    pub fn take_io_wake(&self) -> bool {
        self.io_woken.swap(false, Ordering::AcqRel)
    }
}

/// See [`Socket::woken`]. Polling it again after it completed waits for the next wake-up.
#[must_use = "futures do nothing unless polled"]
pub struct Woken<'a>(&'a Socket);

impl Future for Woken<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let socket = self.0;
        if socket.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        socket.waker.register(cx.waker());
        // Looked at again after registering: a wake-up between the two would find no waker.
        if socket.woken.swap(false, Ordering::AcqRel) { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// A socket is the waker of its connection's reads: their wake-ups set a flag and wake the
/// connection through its one wake-up (the outbox's).
///
/// Why: a connection task is woken mostly to write queued frames. Polling the WebSocket's read
/// side on every wake-up cost ~800 instructions with nothing to read when tungstenite read the
/// frames (and a mutex for the shutdown token polled beside it): more than a third of what a
/// delivered frame cost the connection task (`benches/callgrind.sh`, docs/benchmarks.md). With
/// this flag the read side is polled only when it woke.
impl Wake for Socket {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Set before the wake-up fires: the connection looks at the flag once woken.
        self.io_woken.store(true, Ordering::Release);
        Socket::wake(self);
    }
}

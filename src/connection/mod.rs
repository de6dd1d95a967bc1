//! One WebSocket connection speaking Pusher protocol v7: handshake, subscriptions (with replay),
//! client events, pings, and the writer that drains the socket's outbox.
//!
//! One task per connection. It reads client frames, writes queued frames in batches (one flush
//! per batch), pings an idle client, and closes when asked to (slow consumer, terminate,
//! shutdown). Everything it does to other sockets goes through the hub without waiting.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker, ready};
use std::time::Duration;

use reprise_api::websocket::{self, Incoming, MessageReader, ReadError};
use reprise_api::{ErrorCode, frames};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

use self::membership::Membership;
use self::rate_limit::ClientEventBudget;
use crate::ServerState;
use crate::apps::App;
use crate::capacity::CountedIo;
use crate::hub::{Frame, Socket, SocketId, Tick, encode_text};
use crate::metrics::{AppMetrics, Closed};

pub use self::admission::{ConnectionSlot, Refusal, refuse, reserve_slot};
pub use self::upgrade::{WsStream, WsUpgrade};

/// The batch buffer's capacity kept between writes; above it, it is given back after a burst.
const BATCH_CAPACITY_KEPT: usize = 64;
/// How long a write may wait for the kernel to take more. A client that stopped reading (or
/// vanished without a FIN) would otherwise park this task, its outbox and its ping timer until
/// TCP gives up, minutes later. The client resumes from the log when it comes back.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close frame may take to go out before the socket is simply dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// The WebSocket layer's own limit on a client's frame or message, as a multiple of the app's
/// `max_message_size_bytes`: generous, so that an oversized message reaches the connection (and
/// gets a `pusher:error`) instead of killing the socket, while a truly huge one is still refused
/// (close 1009) on its frame header, before it is buffered.
const TRANSPORT_LIMIT_FACTOR: usize = 8;
/// How much one read takes from the socket, into a buffer on the stack: an idle socket keeps no
/// read buffer (only the rest of a partial frame, while there is one).
const READ_CHUNK_BYTES: usize = 4096;

/// Logs a connection event with the socket's id and app. Fields on the event rather than a span
/// per connection: a span lives as long as its socket, and most sockets are idle and silent.
macro_rules! log {
    ($level:ident, $connection:expr, $($rest:tt)+) => {
        tracing::$level!(
            socket_id = %$connection.membership.socket.id,
            app = %$connection.membership.app.config.id,
            $($rest)+
        )
    };
}

/// Client mistakes by message, for `log_repeatable!`.
static CLIENT_MISTAKES: crate::throttle::ThrottledByKey<&'static str> = crate::throttle::ThrottledByKey::new();

/// `log!` for what a client can repeat as often as it likes on one socket (a bad frame, a refused
/// subscribe or sign-in, a client event over its budget): every one at debug; at info the first
/// of each message, then at most once a minute with `count`, how many the line stands for
/// (`throttle`). A client looping on a mistake must not become a flood of log lines.
macro_rules! log_repeatable {
    ($connection:expr, $message:literal $(, $($field:tt)+)?) => {{
        log!(debug, $connection, $($($field)+,)? $message);
        if let Some(count) = crate::connection::CLIENT_MISTAKES.count($message, tokio::time::Instant::now()) {
            log!(info, $connection, count, $($($field)+,)? $message);
        }
    }};
}

// After `log!`: macros are in scope only below their definition.
mod admission;
mod handlers;
mod membership;
mod rate_limit;
pub mod registry;
mod upgrade;
mod wire;

/// Serves an accepted connection until it closes.
///
/// Not an `async fn`: the connection is assembled here, synchronously, and the returned future
/// holds it once. (An `async fn` taking it by value would keep the argument and the moved-into
/// local both, a dead copy every idle socket would pay for.)
pub fn run(
    ws: WsStream,
    app: Arc<App>,
    state: Arc<ServerState>,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send {
    let outbox_frames = state.config.server.outbox_frames;
    let socket = Socket::new(SocketId::random(), outbox_frames);
    let registered = state.sockets.register(&socket);
    let membership = Membership::new(app, socket, slot, state.cluster.clone());
    let mut reader = MessageReader::default();
    reader.extend(&ws.early);
    let mut connection = Connection {
        io: ws.io,
        reader,
        state,
        membership,
        batch: VecDeque::new(),
        batch_offset: 0,
        replay_watermarks: ReplayWatermarks::default(),
        client_event_budget: ClientEventBudget::default(),
        _registered: registered,
    };
    async move {
        if let Some(app) = connection.app_metrics() {
            app.connections_accepted.inc();
        }
        let reason = connection.serve().await;
        log!(debug, connection, ?reason, "connection closed");
        if let Some(app) = connection.app_metrics() {
            let how = match reason {
                Ended::ClientClosed => Closed::ByClient,
                Ended::Transport => Closed::Transport,
                Ended::ClosedByServer(code) => Closed::ByServer(code),
            };
            connection.state.metrics.closed(app, how);
        }
        // Dropping the connection (here, or while unwinding from a panic) drops its membership,
        // which leaves every channel and gives the slot back.
    }
}

/// Bounds a single write (or a handler that writes) by `WRITE_STALL_TIMEOUT`.
///
/// Boxed: a task's future is as large as its largest state, and a subscribe with its replay is
/// by far the largest state of the connection loop. Boxed, it takes 8 bytes there; inline, every
/// idle socket would carry its room. (Batches of queued frames, the frequent writes, are bounded
/// without an allocation: see `Connection::write_batch`.)
fn bounded<F: Future>(write: F) -> Pin<Box<tokio::time::Timeout<F>>> {
    Box::pin(tokio::time::timeout(WRITE_STALL_TIMEOUT, write))
}

/// What one read of the client's side gave.
enum Read {
    Message(Incoming),
    /// A frame the WebSocket layer refused: closed with its code (1002, 1007 or 1009).
    Refused(ReadError),
    /// The client closed its side of the TCP connection (without a close frame: after one, the
    /// connection ends before reading again).
    Ended,
    /// The transport failed.
    Failed,
}

/// How a batch write ended.
enum BatchWritten {
    All,
    /// The transport failed.
    Failed,
    /// The kernel took nothing for `WRITE_STALL_TIMEOUT`.
    Stalled,
    /// A close was asked meanwhile (a full outbox, a `terminate_connections`, shutdown), with
    /// this code.
    CloseAsked(u16),
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    ClientClosed,
    Transport,
    /// With the close code sent.
    ClosedByServer(u16),
}

/// What the connection knows of its client's silence, for pings.
struct Silence {
    last_activity: Tick,
    /// A ping went out and no frame came back since.
    awaiting_pong: bool,
    /// The client sent at least one frame.
    heard_from: bool,
}

impl Silence {
    fn heard(&mut self, now: Tick) {
        self.last_activity = now;
        self.awaiting_pong = false;
        self.heard_from = true;
    }
}

struct Connection {
    /// The accepted TCP stream, read and written by the connection itself.
    io: CountedIo,
    /// The client's frames read so far and not yet whole (nothing, while idle).
    reader: MessageReader,
    state: Arc<ServerState>,
    /// The app, the socket's hub handle, and what it holds in the hub (left in its `Drop`).
    membership: Membership,
    /// The frames taken from the outbox for the write in progress (kept to reuse its memory).
    batch: VecDeque<Arc<Frame>>,
    /// How much of the batch's first frame is written already (the kernel took part of it).
    batch_offset: usize,
    replay_watermarks: ReplayWatermarks,
    client_event_budget: ClientEventBudget,
    /// Holds the socket in the registry (pings, shutdown) until the connection is dropped.
    _registered: registry::Registered,
}

impl Connection {
    async fn serve(&mut self) -> Ended {
        let hello = frames::connection_established(
            &self.membership.socket.id,
            self.membership.app.config.activity_timeout_secs,
        );
        if !matches!(bounded(self.write(hello)).await, Ok(true)) {
            return Ended::Transport;
        }
        let socket = Arc::clone(&self.membership.socket);
        // The silence deadline is not moved on every frame received: when it passes, the ping
        // check sees `last_activity` and sets it again if the client was heard from meanwhile.
        let mut silence = Silence { last_activity: Tick::now(), awaiting_pong: false, heard_from: false };
        socket.deadline().set(silence.last_activity.after(self.silence_allowed(false)));
        loop {
            // The client's frames are read with the socket as their waker and only after it
            // flagged them (see `Socket`'s `Wake`): most wake-ups are for queued frames, and
            // polling the read side every time costs more than writing the frame.
            if socket.take_io_wake() {
                // (Made here and dropped before the awaits below: a `Context` is not `Send`, and
                // what lives across an await takes room in every idle socket's task.)
                let incoming = self.poll_read(&mut Context::from_waker(&Waker::from(Arc::clone(&socket))));
                if let Poll::Ready(incoming) = incoming {
                    // The reader may hold more whole messages, which no new wake-up would
                    // announce: flag it and fire the wake-up, so that the next turn reads again,
                    // after writing what was queued meanwhile (a client that keeps sending must
                    // not starve its own outbox into a 4100).
                    Wake::wake_by_ref(&socket);
                    silence.heard(Tick::now());
                    // Bounded like batched writes: answering a client that stopped reading must
                    // not park the task.
                    match bounded(self.on_incoming(incoming)).await {
                        Ok(None) => {}
                        Ok(Some(ended)) => return ended,
                        Err(_) => {
                            log!(warn, self, "writes stalled: dropping the connection");
                            return Ended::Transport;
                        }
                    }
                }
            }
            // Stateless (a flag and a waker in the socket): made anew on each turn for free.
            socket.woken().await;
            let code = socket.close_code();
            if code != 0 {
                return Box::pin(self.close_requested(code)).await;
            }
            if socket.take_deadline_wake() {
                match Box::pin(self.on_deadline(&mut silence)).await {
                    Ok(()) => {}
                    Err(ended) => return ended,
                }
            }
            self.take_batch(&socket);
            if self.batch.is_empty() {
                continue; // woken by the client, or for frames already written
            }
            match self.write_batch(&socket).await {
                BatchWritten::All => {}
                BatchWritten::Failed => return Ended::Transport,
                BatchWritten::Stalled => {
                    log!(warn, self, "writes stalled: dropping the connection");
                    return Ended::Transport;
                }
                BatchWritten::CloseAsked(code) => return Box::pin(self.close_requested(code)).await,
            }
        }
    }

    /// The client's silence deadline passed: pings it, or closes if it did not answer the last
    /// ping in time, or sets the deadline again if it spoke meanwhile.
    async fn on_deadline(&mut self, silence: &mut Silence) -> Result<(), Ended> {
        let socket = &self.membership.socket;
        let now = Tick::now();
        if silence.awaiting_pong {
            log!(info, self, "no pong in time");
            let reason = "Pong reply not received";
            return Err(Box::pin(self.close(ErrorCode::PongNotReceived.as_u16(), reason)).await);
        }
        let idle_until = silence.last_activity.after(self.silence_allowed(silence.heard_from));
        if idle_until > now {
            socket.deadline().set(idle_until);
            return Ok(());
        }
        silence.awaiting_pong = true;
        let pong_timeout = Duration::from_secs(self.membership.app.config.activity_timeout_secs);
        socket.deadline().set(now.after(pong_timeout));
        match bounded(self.write(frames::ping())).await {
            Ok(true) => Ok(()),
            _ => Err(Ended::Transport),
        }
    }

    /// How long the client may stay silent before it is pinged.
    ///
    /// Until it first speaks, one activity timeout rather than the ping interval: a Pusher client
    /// is told that timeout in `connection_established` and pings within it by itself, so a
    /// socket silent that long is half-open or no Pusher client, and is closed with 4201 one
    /// activity timeout later (it holds a descriptor).
    fn silence_allowed(&self, heard_from: bool) -> Duration {
        let config = &self.membership.app.config;
        let ping_interval = Duration::from_secs(config.ping_interval_secs);
        if heard_from { ping_interval } else { ping_interval.min(Duration::from_secs(config.activity_timeout_secs)) }
    }

    /// Reads the client's next message: from what an earlier read left, or from the socket.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Read> {
        let limit = self.membership.app.config.max_message_size_bytes.saturating_mul(TRANSPORT_LIMIT_FACTOR);
        loop {
            match self.reader.next_message(limit) {
                Ok(Some(message)) => return Poll::Ready(Read::Message(message)),
                Ok(None) => {}
                Err(error) => return Poll::Ready(Read::Refused(error)),
            }
            let mut chunk = [0; READ_CHUNK_BYTES];
            let mut chunk = ReadBuf::new(&mut chunk);
            match ready!(Pin::new(&mut self.io).poll_read(cx, &mut chunk)) {
                Ok(()) if chunk.filled().is_empty() => return Poll::Ready(Read::Ended),
                Ok(()) => self.reader.extend(chunk.filled()),
                Err(_) => return Poll::Ready(Read::Failed),
            }
        }
    }

    /// Handles what the client sent. Returns why the connection ends, if it does.
    ///
    /// A method of its own (awaited boxed, see `bounded`) so that the message and what handling
    /// it keeps across its writes live in that box, not in every idle socket's task.
    async fn on_incoming(&mut self, read: Read) -> Option<Ended> {
        let text = match read {
            Read::Message(Incoming::Text(text)) => text,
            Read::Message(Incoming::Ping(payload)) => {
                return (!self.write_wire(&websocket::pong_frame(&payload)).await).then_some(Ended::Transport);
            }
            Read::Message(Incoming::Pong | Incoming::Binary(_)) => return None, // binary is ignored
            Read::Message(Incoming::Close(frame)) => {
                // Answered with the client's code, as RFC 6455 (5.5.1) asks; an empty close with 1000.
                self.write_close(frame.map_or(1000, |frame| frame.code), "").await;
                return Some(Ended::ClientClosed);
            }
            // A hang-up without a close frame is the transport's end, not a client's close.
            Read::Ended | Read::Failed => return Some(Ended::Transport),
            Read::Refused(error) => {
                let (code, reason) = (error.close_code(), error.reason());
                log!(info, self, code, reason, "invalid WebSocket frame");
                return Some(self.close(code, reason).await);
            }
        };
        if let Some(app) = self.app_metrics() {
            app.messages_in.inc();
            app.bytes_in.inc_by(text.len() as u64);
        }
        let max_message_bytes = self.membership.app.config.max_message_size_bytes;
        let answered = if text.len() > max_message_bytes {
            log!(info, self, bytes = text.len(), "message over max_message_size refused");
            let message = format!("Message too large: the limit is {max_message_bytes} bytes");
            self.write(frames::error(None, &message)).await
        } else {
            self.handle_text(&text).await
        };
        (!answered).then_some(Ended::Transport)
    }

    /// Closes as someone asked: 4100 for a slow consumer, 4200 for shutdown, or a
    /// `terminate_connections` code.
    async fn close_requested(&mut self, code: u16) -> Ended {
        if code == ErrorCode::Reconnect.as_u16() {
            return self.close(code, "Server shutting down").await;
        }
        if code == ErrorCode::OverCapacity.as_u16() {
            self.membership.app.hub.slow_consumers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log!(warn, self, "slow consumer: outbox full, closing with 4100");
            return self.close(code, "Over capacity: reconnect and resume").await;
        }
        self.close(code, "Connection terminated by the server").await
    }

    async fn close(&mut self, code: u16, reason: &'static str) -> Ended {
        log!(debug, self, code, reason, "closing");
        self.write_close(code, reason).await;
        Ended::ClosedByServer(code)
    }

    /// Writes a close frame, after the rest of a frame the kernel took only part of.
    async fn write_close(&mut self, code: u16, reason: &str) {
        // Bounded: a client that stopped reading cannot take the close frame either.
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
            // A frame the kernel took only part of is finished first: the close frame must
            // follow whole frames. The rest of the batch is dropped (the client resumes).
            if self.batch_offset > 0 && poll_fn(|cx| self.poll_finish_first_frame(cx)).await.is_err() {
                return;
            }
            self.batch.clear();
            self.batch_offset = 0;
            let close = websocket::close_frame(code, reason);
            let mut offset = 0;
            let _ = poll_fn(|cx| wire::poll_write_all(&mut self.io, cx, &close, &mut offset)).await;
        })
        .await;
    }

    /// This connection's app's counters.
    fn app_metrics(&self) -> Option<&AppMetrics> {
        self.membership.app.metrics.as_deref()
    }

    /// Writes one text frame now. Returns false if the socket is gone.
    async fn write(&mut self, text: String) -> bool {
        self.write_wire(&encode_text(&text)).await
    }

    /// Writes already-encoded frames (`wire`) now, in full. Returns false if the socket is gone.
    async fn write_wire(&mut self, wire: &[u8]) -> bool {
        let mut offset = 0;
        poll_fn(|cx| wire::poll_write_all(&mut self.io, cx, wire, &mut offset)).await.is_ok()
    }

    /// Writes the rest of the batch's first frame, which the kernel took only part of.
    fn poll_finish_first_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Connection { io, batch, batch_offset, .. } = self;
        let Some(first) = batch.front() else { return Poll::Ready(Ok(())) };
        ready!(wire::poll_write_all(io, cx, &first.wire, batch_offset))?;
        batch.pop_front();
        *batch_offset = 0;
        Poll::Ready(Ok(()))
    }

    /// Moves the outbox's frames into the batch, without the live copies of events a replay
    /// already sent, and counts them.
    fn take_batch(&mut self, socket: &Socket) {
        socket.take_frames(&mut self.batch);
        if let Some(watermarks) = &mut self.replay_watermarks.0 {
            self.batch.retain(|frame| !watermarks.is_replayed_already(frame));
            if watermarks.is_empty() {
                self.replay_watermarks.0 = None;
            }
        }
        // Counted once per batch: one lookup however many frames were fanned out.
        if let Some(app) = self.app_metrics() {
            app.fan_out_frames.inc_by(self.batch.len() as u64);
            app.fan_out_bytes.inc_by(self.batch.iter().map(|frame| frame.text.len() as u64).sum());
        }
    }

    /// Writes the batch, as few system calls as the kernel allows, and watches meanwhile for a
    /// close request and shutdown: a client that stopped reading stalls this write while its
    /// outbox fills, and the close asked on overflow must still be heard.
    ///
    /// The stall timer is armed only once the kernel refuses more (most batches are written at
    /// once), so the frequent case costs neither a timer nor an allocation. A `poll_fn` returned
    /// as it is, rather than an `async fn`: its state is what the closure holds (six words),
    /// which every socket's task has room for.
    fn write_batch<'a>(&'a mut self, socket: &'a Socket) -> impl Future<Output = BatchWritten> + 'a {
        let mut stall: Option<Pin<Box<Sleep>>> = None;
        let mut frames_pending = false;
        poll_fn(move |cx| {
            let written = match self.poll_write_batch(cx) {
                Poll::Ready(Ok(())) => BatchWritten::All,
                Poll::Ready(Err(_)) => BatchWritten::Failed,
                Poll::Pending => match Self::poll_interrupted(socket, &mut frames_pending, cx) {
                    Poll::Ready(interrupted) => interrupted,
                    Poll::Pending => {
                        let stall = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_TIMEOUT)));
                        ready!(stall.as_mut().poll(cx));
                        BatchWritten::Stalled
                    }
                },
            };
            if frames_pending {
                socket.wake(); // the wake-ups this write consumed: take those frames next
            }
            // A burst grew the buffer; an idle socket should not keep it.
            if self.batch.capacity() > BATCH_CAPACITY_KEPT {
                self.batch = VecDeque::new();
            }
            Poll::Ready(written)
        })
    }

    /// While a write waits: whether a close was asked (shutdown included). Pending (with the
    /// socket's wake-up registered again) if not; `frames_pending` is set if the wake-up fired
    /// for anything else (queued frames, the client's frames, a deadline), which is looked at
    /// after the write.
    fn poll_interrupted(socket: &Socket, frames_pending: &mut bool, cx: &mut Context<'_>) -> Poll<BatchWritten> {
        while Pin::new(&mut socket.woken()).poll(cx).is_ready() {
            let code = socket.close_code();
            if code != 0 {
                return Poll::Ready(BatchWritten::CloseAsked(code));
            }
            *frames_pending = true;
        }
        Poll::Pending
    }

    fn poll_write_batch(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        wire::poll_write_frames(&mut self.io, cx, &mut self.batch, &mut self.batch_offset)
    }
}

/// Per channel, the last sequence already sent by a replay: live copies at or below it are
/// dropped. An entry goes away at the first live event above it, so this is usually empty, and
/// then it is one word in the connection's task (a `HashMap` takes six, in every idle socket).
#[derive(Default)]
struct ReplayWatermarks(Option<Box<Watermarks>>);

#[derive(Default)]
struct Watermarks(HashMap<String, u64>);

impl ReplayWatermarks {
    fn insert(&mut self, channel: &str, watermark: u64) {
        self.0.get_or_insert_default().0.insert(channel.to_owned(), watermark);
    }

    fn remove(&mut self, channel: &str) {
        if let Some(watermarks) = &mut self.0 {
            watermarks.0.remove(channel);
            if watermarks.is_empty() {
                self.0 = None;
            }
        }
    }
}

impl Watermarks {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `frame` is a live copy of an event a replay already sent.
    fn is_replayed_already(&mut self, frame: &Frame) -> bool {
        let Some(logged) = &frame.logged else { return false };
        match self.0.get(logged.channel.as_str()) {
            Some(&watermark) if logged.id.seq() <= watermark => true,
            Some(_) => {
                // Live events arrive in sequence order: none after this one can be a duplicate.
                self.0.remove(logged.channel.as_str());
                false
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every idle socket is mostly its task: tokio allocates it in 128-byte steps (its cell is
    /// aligned for the cache), and a 280-byte future is the most that fits in 384 bytes with
    /// tokio's header, scheduler handle, id and trailer (measured with `valgrind --tool=dhat` on
    /// the release build: a 280-byte future's task took 384 bytes, 288 bytes plus a task
    /// tracker's token took 512). The same future takes 288 bytes in a debug build, where the
    /// tests run. A field added to the connection, or a value kept across an await of its loop,
    /// shows here rather than as 128 more bytes per socket.
    #[test]
    fn the_connection_task_fits_in_384_bytes() {
        fn future_bytes<A, B, C, D, F: Future>(_: fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let bytes = future_bytes(super::run);
        let most = if cfg!(debug_assertions) { 288 } else { 280 };
        assert!(bytes <= most, "the connection's future takes {bytes} bytes: its task no longer fits in 384");
    }
}

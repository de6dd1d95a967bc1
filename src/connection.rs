//! One WebSocket connection speaking Pusher protocol v7: handshake, subscriptions (with replay),
//! client events, pings, and the writer that drains the socket's outbox.
//!
//! One task per connection. It reads client frames, writes queued frames in batches (one flush
//! per batch), pings an idle client, and closes when asked to (slow consumer, terminate,
//! shutdown). Everything it does to other sockets goes through the hub without waiting.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use reprise_api::frames::{self, ClientMessage, FrameError, SubscribeRequest};
use reprise_api::presence::PresenceMember;
use reprise_api::{ChannelName, ErrorCode, EventId, signature};
use reprise_storage::{Cursor, EventLog, LogKey};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::ServerState;
use crate::apps::App;
use crate::config::ClientEventsFrom;
use crate::hub::{Frame, Socket, SocketId};
use crate::publisher::{PublishError, PublishItem};

/// The batch buffer's capacity kept between writes; above it, it is given back after a burst.
const BATCH_CAPACITY_KEPT: usize = 64;
/// How long one batch may take to reach the kernel. A client that stopped reading (or vanished
/// without a FIN) would otherwise park this task, its outbox and its ping timer until TCP gives
/// up, minutes later. The client resumes from the log when it comes back.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a close frame may take to go out before the socket is simply dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection was refused before the handshake.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    UnknownApp,
    OriginNotAllowed,
    OverQuota,
}

impl Refusal {
    fn code_and_message(self) -> (ErrorCode, &'static str) {
        match self {
            Refusal::UnknownApp => (ErrorCode::ApplicationDoesNotExist, "Application does not exist"),
            Refusal::OriginNotAllowed => (ErrorCode::Unauthorized, "Origin not allowed"),
            Refusal::OverQuota => (ErrorCode::OverConnectionQuota, "Application is over connection quota"),
        }
    }
}

/// Tells a refused client why (a `pusher:error` with the code) and closes with that code.
pub async fn refuse(mut ws: WebSocket, refusal: Refusal) {
    let (code, message) = refusal.code_and_message();
    tracing::info!(code = code.as_u16(), message, "connection refused");
    let _ = ws.send(Message::Text(frames::error(Some(code), message).into())).await;
    let _ = ws.send(close_message(code.as_u16(), message)).await;
}

fn close_message(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from_static(reason) }))
}

/// One of an app's `max_connections`; gives it back however the connection ends.
pub struct ConnectionSlot(Arc<App>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.hub.connections.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Takes a connection slot for `app`, unless it is over `max_connections`.
pub fn reserve_slot(app: &Arc<App>) -> Option<ConnectionSlot> {
    let counter = &app.hub.connections;
    let previous = counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let slot = ConnectionSlot(Arc::clone(app));
    match app.config.max_connections {
        Some(max) if previous >= max => None, // dropping `slot` gives the count back
        _ => Some(slot),
    }
}

/// Logs a connection event with the socket's id and app. Fields on the event rather than a span
/// per connection: a span lives as long as its socket, and most sockets are idle and silent.
macro_rules! log {
    ($level:ident, $connection:expr, $($rest:tt)+) => {
        tracing::$level!(socket_id = %$connection.socket.id, app = %$connection.app.config.id, $($rest)+)
    };
}

/// Serves an accepted connection until it closes.
///
/// Not an `async fn`: the connection is assembled here, synchronously, and the returned future
/// holds it once. (An `async fn` taking it by value would keep the argument and the moved-into
/// local both, a dead copy every idle socket would pay for.)
pub fn run(
    ws: WebSocket,
    app: Arc<App>,
    state: Arc<ServerState>,
    slot: ConnectionSlot,
) -> impl Future<Output = ()> + Send {
    let outbox_frames = state.config.server.outbox_frames;
    let mut connection = Connection {
        ws,
        app,
        state,
        socket: Socket::new(SocketId::random(), outbox_frames),
        batch: VecDeque::new(),
        subscriptions: Subscriptions::default(),
        replay_watermarks: HashMap::new(),
        client_event_budget: ClientEventBudget::default(),
        user_id: None,
        _slot: slot,
    };
    async move {
        let reason = connection.serve().await;
        log!(debug, connection, ?reason, "connection closed");
        connection.socket.close_outbox();
        connection.leave_all_channels();
    }
}

/// Bounds a write (or a handler that writes) by `WRITE_STALL_TIMEOUT`.
///
/// Boxed: a task's future is as large as its largest state, and a pending write (or a subscribe
/// with its replay) is by far the largest state of the connection loop. Boxed, it takes 8 bytes
/// there; inline, every idle socket would carry its room. One allocation per batch written is
/// nothing next to the system call that writes it.
fn bounded<F: Future>(write: F) -> Pin<Box<tokio::time::Timeout<F>>> {
    Box::pin(tokio::time::timeout(WRITE_STALL_TIMEOUT, write))
}

/// Why a connection ended.
#[derive(Debug)]
enum Ended {
    ClientClosed,
    Transport,
    ClosedByServer,
}

struct Connection {
    ws: WebSocket,
    app: Arc<App>,
    state: Arc<ServerState>,
    socket: Arc<Socket>,
    /// The frames taken from the outbox for the write in progress (kept to reuse its memory).
    batch: VecDeque<Arc<Frame>>,
    subscriptions: Subscriptions,
    /// Per channel, the last sequence already sent by a replay: live copies at or below it are
    /// dropped. An entry goes away at the first live event above it, so this is usually empty.
    replay_watermarks: HashMap<String, u64>,
    client_event_budget: ClientEventBudget,
    /// The user this socket signed in as (`pusher:signin`), if any.
    user_id: Option<String>,
    /// Held for the connection's life: dropping it gives the app's connection slot back.
    _slot: ConnectionSlot,
}

impl Connection {
    async fn serve(&mut self) -> Ended {
        let hello = frames::connection_established(&self.socket.id, self.app.config.activity_timeout_secs);
        if !matches!(bounded(self.write(hello)).await, Ok(true)) {
            return Ended::Transport;
        }
        // Created once and polled from every iteration: re-created per frame, they would
        // register and cancel a timer and a waiter for every frame written.
        let socket = Arc::clone(&self.socket);
        let shutdown = self.state.shutdown.clone();
        let cancelled = shutdown.cancelled();
        let ping = tokio::time::sleep(self.ping_interval());
        let woken = socket.woken();
        tokio::pin!(cancelled, ping, woken);
        // The ping timer is not moved on every frame received: when it fires, it checks
        // `last_activity` and sleeps again if the client was heard from meanwhile.
        let mut last_activity = Instant::now();
        let mut awaiting_pong = false;
        loop {
            tokio::select! {
                incoming = self.ws.recv() => {
                    last_activity = Instant::now();
                    awaiting_pong = false;
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
                () = &mut woken => {
                    // Re-armed before looking: a frame queued (or a close asked) after the look
                    // wakes it again.
                    woken.set(socket.woken());
                    let code = socket.close_code();
                    if code != 0 {
                        return Box::pin(self.close_requested(code)).await;
                    }
                    socket.take_frames(&mut self.batch);
                    if self.batch.is_empty() {
                        continue; // woken for frames an earlier take already wrote
                    }
                    // A client that stopped reading stalls this write while its outbox fills:
                    // the close asked on overflow must still be heard here.
                    let mut frames_pending = false;
                    let written = {
                        let mut write = bounded(self.write_batch());
                        loop {
                            tokio::select! {
                                written = &mut write => break written,
                                () = &mut woken => {
                                    woken.set(socket.woken());
                                    let code = socket.close_code();
                                    if code != 0 {
                                        drop(write);
                                        return Box::pin(self.close_requested(code)).await;
                                    }
                                    frames_pending = true;
                                }
                                () = &mut cancelled => {
                                    drop(write);
                                    let reason = "Server shutting down";
                                    return Box::pin(self.close(ErrorCode::Reconnect.as_u16(), reason)).await;
                                }
                            }
                        }
                    };
                    if frames_pending {
                        socket.wake(); // the wake-up this write consumed: take those frames next
                    }
                    match written {
                        Ok(true) => {}
                        Ok(false) => return Ended::Transport,
                        Err(_) => {
                            log!(warn, self, "writes stalled: dropping the connection");
                            return Ended::Transport;
                        }
                    }
                }
                () = &mut ping => {
                    let now = Instant::now();
                    if awaiting_pong {
                        log!(info, self, "no pong in time");
                        return Box::pin(self.close(ErrorCode::PongNotReceived.as_u16(), "Pong reply not received")).await;
                    }
                    let idle_until = last_activity + self.ping_interval();
                    if idle_until > now {
                        ping.as_mut().reset(idle_until);
                        continue;
                    }
                    awaiting_pong = true;
                    let pong_timeout = Duration::from_secs(self.app.config.activity_timeout_secs);
                    ping.as_mut().reset(now + pong_timeout);
                    let pinged = bounded(self.write(frames::ping())).await;
                    if !matches!(pinged, Ok(true)) { return Ended::Transport; }
                }
                () = &mut cancelled => {
                    return Box::pin(self.close(ErrorCode::Reconnect.as_u16(), "Server shutting down")).await;
                }
            }
        }
    }

    fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.app.config.ping_interval_secs)
    }

    /// Handles what the client sent. Returns why the connection ends, if it does.
    ///
    /// A method of its own (awaited boxed, see `bounded`) so that the message and what handling
    /// it keeps across its writes live in that box, not in every idle socket's task.
    async fn on_incoming(&mut self, incoming: Option<Result<Message, axum::Error>>) -> Option<Ended> {
        let text = match incoming {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | None => return Some(Ended::ClientClosed),
            Some(Ok(_)) => return None, // pings are answered by the WebSocket layer; binary is ignored
            Some(Err(_)) => return Some(Ended::Transport),
        };
        let max_message_bytes = self.app.config.max_message_size_bytes;
        let answered = if text.len() > max_message_bytes {
            log!(info, self, bytes = text.len(), "message over max_message_size refused");
            let message = format!("Message too large: the limit is {max_message_bytes} bytes");
            self.write(frames::error(None, &message)).await
        } else {
            self.handle_text(&text).await
        };
        (!answered).then_some(Ended::Transport)
    }

    /// Closes as someone asked: 4100 for a slow consumer, or a `terminate_connections` code.
    async fn close_requested(&mut self, code: u16) -> Ended {
        if code == ErrorCode::OverCapacity.as_u16() {
            self.app.hub.slow_consumers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            log!(warn, self, "slow consumer: outbox full, closing with 4100");
            return self.close(code, "Over capacity: reconnect and resume").await;
        }
        self.close(code, "Connection terminated by the server").await
    }

    async fn close(&mut self, code: u16, reason: &'static str) -> Ended {
        log!(debug, self, code, reason, "closing");
        // Bounded: a client that stopped reading cannot take the close frame either.
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.ws.send(close_message(code, reason))).await;
        Ended::ClosedByServer
    }

    /// Writes one frame now. Returns false if the socket is gone.
    async fn write(&mut self, text: String) -> bool {
        self.ws.send(Message::Text(text.into())).await.is_ok()
    }

    /// Writes the frames taken from the outbox, then flushes once.
    async fn write_batch(&mut self) -> bool {
        while let Some(frame) = self.batch.pop_front() {
            if !self.is_replayed_already(&frame) && self.ws.feed(Message::Text(frame.text.clone())).await.is_err() {
                return false;
            }
        }
        // A burst grew the buffer; an idle socket should not keep it.
        if self.batch.capacity() > BATCH_CAPACITY_KEPT {
            self.batch = VecDeque::new();
        }
        self.ws.flush().await.is_ok()
    }

    fn is_replayed_already(&mut self, frame: &Frame) -> bool {
        if self.replay_watermarks.is_empty() {
            return false;
        }
        let Some((channel, seq)) = &frame.logged else { return false };
        match self.replay_watermarks.get(channel.as_str()) {
            Some(watermark) if seq <= watermark => true,
            Some(_) => {
                // Live events arrive in sequence order: none after this one can be a duplicate.
                self.replay_watermarks.remove(channel.as_str());
                false
            }
            None => false,
        }
    }

    /// Handles one client frame. Returns false if the socket is gone.
    async fn handle_text(&mut self, text: &str) -> bool {
        match frames::parse_client_message(text) {
            Ok(ClientMessage::Ping) => self.write(frames::pong()).await,
            Ok(ClientMessage::Pong) => true,
            Ok(ClientMessage::Subscribe(request)) => self.subscribe(request).await,
            Ok(ClientMessage::Unsubscribe { channel }) => {
                if self.subscriptions.remove(&channel) {
                    self.app.hub.unsubscribe(&channel, &self.socket);
                    self.replay_watermarks.remove(&channel);
                }
                true
            }
            Ok(ClientMessage::ClientEvent { event, channel, data }) => self.client_event(event, channel, data).await,
            Ok(ClientMessage::Signin { auth, user_data }) => self.sign_in(&auth, &user_data).await,
            Err(error) => {
                log!(info, self, %error, "bad client frame");
                let code = match error {
                    FrameError::InvalidClientEvent => Some(ErrorCode::Unauthorized),
                    _ => None,
                };
                self.write(frames::error(code, &error.to_string())).await
            }
        }
    }

    async fn subscription_error(&mut self, channel: &str, kind: &str, message: &str, status: u16) -> bool {
        log!(info, self, channel, kind, message, "subscription refused");
        self.write(frames::subscription_error(channel, kind, message, status)).await
    }

    async fn subscribe(&mut self, request: SubscribeRequest) -> bool {
        let channel = match ChannelName::parse(&request.channel) {
            Ok(channel) => channel,
            Err(error) => {
                return self.subscription_error(&request.channel, "InvalidChannel", &error.to_string(), 400).await;
            }
        };
        let config = &self.app.config;
        if channel.requires_auth() {
            let authorised = request.auth.as_deref().is_some_and(|auth| {
                let data = if channel.is_presence() { request.channel_data.as_deref() } else { None };
                signature::verify_socket_auth(
                    &config.key,
                    &config.secret,
                    &self.socket.id,
                    channel.as_str(),
                    data,
                    auth,
                )
            });
            if !authorised {
                let message = "Invalid or missing auth signature for this socket and channel";
                return self.subscription_error(channel.as_str(), "AuthError", message, 401).await;
            }
        }
        if let Some(owner) = channel.server_to_user_id() {
            if self.user_id.as_deref() != Some(owner) {
                let message = "Only a socket signed in as this user may subscribe to its channel";
                return self.subscription_error(channel.as_str(), "AuthError", message, 403).await;
            }
        }
        let member = if channel.is_presence() {
            match request.channel_data.as_deref().map(PresenceMember::parse) {
                Some(Ok(member)) => Some(member),
                _ => {
                    let message = "Presence channels need channel_data with a user_id";
                    return self.subscription_error(channel.as_str(), "AuthError", message, 400).await;
                }
            }
        } else {
            None
        };
        let since = match request.since.as_deref().map(str::parse::<EventId>) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                let message = "since is not a valid event id (expected a 26-character ULID)";
                return self.subscription_error(channel.as_str(), "InvalidCursor", message, 400).await;
            }
        };
        if self.subscriptions.contains(channel.as_str()) {
            // Already subscribed (a client re-sending subscribe): confirm without a second join.
            let current = self.app.hub.current(&channel);
            let mut data = current.roster.unwrap_or_else(|| json!({}));
            data["replay"] = json!({ "head": current.published_head });
            return self.write(frames::subscription_succeeded(channel.as_str(), &data)).await;
        }

        // Subscribe, then read: live events from here on queue in the outbox while the log is
        // read, and the watermark drops the ones the replay already contains. No gap, no duplicate.
        let key = self.app.log_key(&channel);
        let log = Arc::clone(&self.state.log);
        let subscribed = match self.app.hub.subscribe(&channel, &self.socket, member, || log.head(&key).map(|h| h.head))
        {
            Ok(subscribed) => subscribed,
            Err(error) => {
                log!(error, self, %error, "reading the event log head failed");
                return self
                    .subscription_error(channel.as_str(), "ServerError", "The event log is unavailable", 503)
                    .await;
            }
        };
        self.subscriptions.add(channel.as_str());
        let replay = match self.read_replay(&channel, since, subscribed.published_head).await {
            Ok(replay) => replay,
            Err(()) => {
                self.subscriptions.remove(channel.as_str());
                self.app.hub.unsubscribe(channel.as_str(), &self.socket);
                return self
                    .subscription_error(channel.as_str(), "ServerError", "The event log is unavailable", 503)
                    .await;
            }
        };
        let mut data = subscribed.roster.unwrap_or_else(|| json!({}));
        data["replay"] = replay.block(since.is_some());
        if !self.write(frames::subscription_succeeded(channel.as_str(), &data)).await {
            return false;
        }
        for event in &replay.events {
            let user_id = event.user_id.as_deref();
            let frame = frames::event_frame(&event.event, channel.as_str(), &event.data, Some(event.id), user_id);
            if self.ws.feed(Message::Text(frame.into())).await.is_err() {
                return false;
            }
        }
        if let Some(watermark) = replay.watermark {
            self.replay_watermarks.insert(channel.as_str().to_owned(), watermark);
        }
        // A client that resumed has everything; one that starts fresh or could not be
        // recovered gets the cache channel's last event, as Pusher sends it.
        if channel.is_cache() && !replay.recovered {
            let frame = match &replay.last {
                Some(last) => frames::event_frame(
                    &last.event,
                    channel.as_str(),
                    &last.data,
                    Some(last.id),
                    last.user_id.as_deref(),
                ),
                None => frames::cache_miss(channel.as_str()),
            };
            if self.ws.feed(Message::Text(frame.into())).await.is_err() {
                return false;
            }
        }
        self.ws.flush().await.is_ok()
    }

    /// Reads what a subscribe needs from the log: the events after `since`, up to the channel's
    /// published head (later ones arrive live).
    async fn read_replay(
        // `&mut`: a shared borrow held across the await would need the (non-`Sync`) socket to be `Sync`.
        &mut self,
        channel: &ChannelName,
        since: Option<EventId>,
        published_head: Option<EventId>,
    ) -> Result<Replay, ()> {
        let log: Arc<dyn EventLog> = Arc::clone(&self.state.log);
        let key = self.app.log_key(channel);
        let cap = self.state.config.server.replay_cap_events;
        let is_cache = channel.is_cache();
        let read =
            tokio::task::spawn_blocking(move || Replay::read(log.as_ref(), &key, since, published_head, cap, is_cache))
                .await;
        match read {
            Ok(Ok(replay)) => Ok(replay),
            Ok(Err(error)) => {
                log!(error, self, %error, channel = channel.as_str(), "reading the event log failed");
                Err(())
            }
            Err(_) => Err(()),
        }
    }

    async fn client_event(&mut self, event: String, channel: String, data: Value) -> bool {
        let config = &self.app.config;
        let channel = match ChannelName::parse(&channel) {
            _ if config.accept_client_events_from == ClientEventsFrom::None => {
                let message = "Client events are disabled for this app";
                return self.write(frames::error(Some(ErrorCode::Unauthorized), message)).await;
            }
            Ok(channel) if channel.allows_client_events() => channel,
            _ => {
                let message = "Client events are only allowed on private and presence channels";
                return self.write(frames::error(Some(ErrorCode::Unauthorized), message)).await;
            }
        };
        let subscription = self.app.hub.subscription(channel.as_str(), &self.socket);
        if subscription.is_none() && config.accept_client_events_from == ClientEventsFrom::Members {
            let message = "Client events can only be sent to a channel the socket is subscribed to";
            return self.write(frames::error(Some(ErrorCode::Unauthorized), message)).await;
        }
        if !self.client_event_budget.take(config.client_events_per_sec) {
            log!(info, self, "client event rate limit exceeded");
            let message = "Client event rejected due to rate limit";
            return self.write(frames::error(Some(ErrorCode::ClientEventRateLimit), message)).await;
        }
        let user_id = subscription.flatten();
        let data = frames::client_event_data(&data);
        if config.log_client_events {
            let item = PublishItem { channel, event, data, except_socket: Some(self.socket.id.to_string()), user_id };
            let app_id = self.app.config.id.clone();
            return match self.state.publisher.publish(&app_id, &self.app.hub, vec![item]).await {
                Ok(_) => true,
                Err(PublishError::NotDurable) => {
                    self.write(frames::error(None, "The event was relayed but could not be made durable")).await
                }
                Err(_) => self.write(frames::error(None, "The event could not be logged or relayed")).await,
            };
        }
        let frame = Frame::plain(frames::event_frame(&event, channel.as_str(), &data, None, user_id.as_deref()));
        self.app.hub.publish(&channel, &frame, Some(&self.socket.id));
        true
    }

    /// `pusher:signin`: checks the user signature and remembers the user for
    /// `terminate_connections`. A refusal is `pusher:error` 4009; the socket stays open.
    async fn sign_in(&mut self, auth: &str, user_data: &str) -> bool {
        let config = &self.app.config;
        if !signature::verify_user_auth(&config.key, &config.secret, &self.socket.id, user_data, auth) {
            log!(info, self, "signin refused: invalid signature");
            return self.write(frames::error(Some(ErrorCode::Unauthorized), "Invalid signin signature")).await;
        }
        let user_id = reprise_api::user::parse_user_id(user_data).ok();
        let Some(user_id) = user_id else {
            let message = "user_data must be a JSON object with a non-empty string id";
            return self.write(frames::error(Some(ErrorCode::Unauthorized), message)).await;
        };
        self.app.hub.sign_in(&user_id, &self.socket, self.user_id.as_deref());
        self.user_id = Some(user_id);
        self.write(frames::signin_success(user_data)).await
    }

    fn leave_all_channels(&mut self) {
        for channel in self.subscriptions.drain() {
            self.app.hub.unsubscribe(&channel, &self.socket);
        }
        if let Some(user_id) = self.user_id.take() {
            self.app.hub.sign_out(&user_id, &self.socket.id);
        }
    }
}

/// The channels one socket is subscribed to.
///
/// A `Vec`, not a set: a socket holds a handful of channels, and an empty `HashSet` that gets
/// its first entry allocates four buckets, four times what a one-entry `Vec` takes, on every
/// idle socket. Lookups are linear, which is what a handful costs anyway.
#[derive(Default)]
struct Subscriptions(Vec<String>);

impl Subscriptions {
    fn contains(&self, channel: &str) -> bool {
        self.0.iter().any(|c| c == channel)
    }

    fn add(&mut self, channel: &str) {
        if !self.contains(channel) {
            self.0.push(channel.to_owned());
        }
    }

    /// Returns whether the socket was subscribed.
    fn remove(&mut self, channel: &str) -> bool {
        let Some(index) = self.0.iter().position(|c| c == channel) else { return false };
        self.0.swap_remove(index);
        true
    }

    fn drain(&mut self) -> std::vec::Drain<'_, String> {
        self.0.drain(..)
    }
}

/// What a subscribe replays and reports.
struct Replay {
    head: Option<EventId>,
    recovered: bool,
    events: Vec<reprise_storage::StoredEvent>,
    /// Live events at or below this sequence were already sent (or predate the subscription).
    watermark: Option<u64>,
    /// On cache channels that were not resumed: the event at the head, if still logged.
    last: Option<reprise_storage::StoredEvent>,
}

impl Replay {
    /// `published_head` is where live delivery to this socket starts: the replay goes up to it
    /// and not beyond (events past it are not fanned out yet, so with sync durability they may
    /// not be on disk yet either; they arrive live).
    fn read(
        log: &dyn EventLog,
        key: &LogKey,
        since: Option<EventId>,
        published_head: Option<EventId>,
        cap: usize,
        is_cache: bool,
    ) -> Result<Replay, reprise_storage::StorageError> {
        // Not resumed (fresh, or not recoverable): the client starts at the published head, and
        // a cache channel hands it the head event.
        let from_head = || -> Result<Replay, reprise_storage::StorageError> {
            let last = match published_head {
                Some(head) if is_cache => crate::cache::last_event(log, key, head)?,
                _ => None,
            };
            let watermark = published_head.map(EventId::seq);
            Ok(Replay { head: published_head, recovered: false, events: Vec::new(), watermark, last })
        };
        let Some(since) = since else { return from_head() };
        let Some(head) = published_head else {
            // Nothing was ever published here: the zero cursor ("before the first event") missed
            // nothing; any other cursor cannot be from this channel.
            let mut replay = from_head()?;
            replay.recovered = since.seq() == 0;
            return Ok(replay);
        };
        if since.seq() > head.seq() {
            return from_head();
        }
        // One more than the cap tells "more than the cap" apart from "exactly the cap".
        let outcome = log.read(key, Cursor::After(since), cap.saturating_add(1))?;
        let mut events = outcome.events;
        events.retain(|event| event.id.seq() <= head.seq());
        if !outcome.recovered || events.len() > cap {
            return from_head();
        }
        let watermark = Some(events.last().map_or(since.seq(), |e| e.id.seq()));
        Ok(Replay { head: published_head, recovered: true, events, watermark, last: None })
    }

    /// The `replay` block of `subscription_succeeded`.
    fn block(&self, resumed: bool) -> Value {
        if resumed {
            json!({ "head": self.head, "recovered": self.recovered, "count": self.events.len() })
        } else {
            json!({ "head": self.head })
        }
    }
}

/// A token bucket: `per_sec` client events per second, bursts up to `per_sec`.
#[derive(Default)]
struct ClientEventBudget {
    tokens: f64,
    refilled_at: Option<Instant>,
}

impl ClientEventBudget {
    fn take(&mut self, per_sec: u32) -> bool {
        let now = Instant::now();
        let capacity = f64::from(per_sec);
        self.tokens = match self.refilled_at {
            None => capacity,
            Some(at) => (self.tokens + now.duration_since(at).as_secs_f64() * capacity).min(capacity),
        };
        self.refilled_at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

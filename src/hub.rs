//! The hub: which sockets are subscribed to which channels, presence rosters, and fan-out.
//! (A cache channel's last event is its log's head, read by the connection on subscribe.)
//!
//! It also knows each channel's *published head*: the last logged event that was fanned out. A
//! logged event goes to the log first and to subscribers after its fsync; a socket that
//! subscribes in between must start after the published head, not the log's head, or it would
//! neither get that event live (its watermark says it has it) nor in a replay.
//!
//! Fan-out never waits: each socket has a bounded outbox and a publish queues one shared,
//! already-serialised frame (a refcount, not a copy) to every subscriber. A socket whose outbox
//! is full is marked over capacity and woken; its connection closes it with 4100 and the client
//! resumes from the log, so nothing is skipped silently.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use reprise_api::presence::PresenceMember;
use reprise_api::{ChannelName, ErrorCode, EventId, frames};
use serde_json::Value;
use tokio::sync::Notify;

/// Channel maps are split in shards so publishes to different channels rarely share a lock.
const SHARDS: usize = 16;

/// A frame serialised once and shared by every socket it goes to.
#[derive(Debug)]
pub struct Frame {
    pub text: Utf8Bytes,
    /// For logged events: the channel and sequence, so a connection that just replayed up to
    /// sequence N can drop a live copy of an event it already sent.
    pub logged: Option<(ChannelName, u64)>,
}

impl Frame {
    pub fn plain(text: String) -> Arc<Frame> {
        Arc::new(Frame { text: text.into(), logged: None })
    }
}

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
    serial: u64,
    outbox: Mutex<Outbox>,
    /// Most frames the outbox holds; one more makes the socket a slow consumer.
    capacity: usize,
    /// Wakes the connection when a frame is queued into an empty outbox, or a close is asked.
    /// One waiter for both: an idle socket's task keeps every waiter it polls.
    wake: Notify,
    /// Set (once) to the close code the connection should close with: 4100 on overflow, or the
    /// code of a `terminate_connections`. Read by the connection when it wakes.
    close_code: AtomicU16,
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
            wake: Notify::new(),
            close_code: AtomicU16::new(0),
        })
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        // A panic while holding this lock cannot leave the queue half-updated (push and swap).
        self.outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    pub fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Wakes the connection (once, however many times this is called before it looks).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Moves every queued frame into `batch` (empty), in order.
    pub fn take_frames(&self, batch: &mut VecDeque<Arc<Frame>>) {
        std::mem::swap(&mut self.outbox().frames, batch);
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

    /// The code the socket was asked to close with, or 0 if it was not.
    pub fn close_code(&self) -> u16 {
        self.close_code.load(Ordering::Acquire)
    }
}

struct Subscriber {
    socket: Arc<Socket>,
    user_id: Option<String>,
}

struct Member {
    info: Value,
    /// How many of this user's sockets are subscribed (tabs): joined on the first, left on the last.
    sockets: usize,
}

struct Channel {
    /// By `Socket::serial`.
    subscribers: HashMap<u64, Subscriber>,
    members: HashMap<String, Member>,
    /// The last logged event fanned out on this channel.
    published_head: Option<EventId>,
    /// Logged events appended (or being appended) but not yet fanned out. While any are, the
    /// entry is kept, so `published_head` stays known.
    in_flight: usize,
}

impl Channel {
    fn new(published_head: Option<EventId>) -> Self {
        Channel { subscribers: HashMap::new(), members: HashMap::new(), published_head, in_flight: 0 }
    }

    /// An entry with no subscribers and nothing in flight holds nothing the log does not.
    fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.in_flight == 0
    }

    /// Queues `frame` for every subscriber but the socket whose id is `except`. Returns how many
    /// sockets it was queued for, and the excluded socket if it is subscribed here.
    fn send_to_all(&self, frame: &Arc<Frame>, except: Option<&str>) -> (usize, Option<&Arc<Socket>>) {
        let mut sent = 0;
        let mut excluded = None;
        for subscriber in self.subscribers.values() {
            if except.is_some_and(|id| subscriber.socket.id == *id) {
                excluded = Some(&subscriber.socket);
            } else if subscriber.socket.send(frame) {
                sent += 1;
            }
        }
        (sent, excluded)
    }
}

/// What a subscribe found.
pub struct Subscribed {
    /// The presence roster (`{"presence":{...}}`) on presence channels.
    pub roster: Option<Value>,
    /// The last logged event fanned out on the channel when the socket was registered: live
    /// delivery to this socket starts right after it.
    pub published_head: Option<EventId>,
}

/// Counts of one channel, for the HTTP API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    pub subscriptions: usize,
    pub users: usize,
}

/// The channels of one app.
pub struct AppHub {
    shards: Box<[Mutex<HashMap<String, Channel>>]>,
    hasher: RandomState,
    /// Open connections, for `max_connections`.
    pub connections: AtomicUsize,
    /// Sockets closed because their outbox overflowed.
    pub slow_consumers: AtomicU64,
    /// Sockets that signed in (`pusher:signin`), by user id, for `terminate_connections`.
    /// A std Mutex: held for one insert, remove or lookup.
    signed_in: Mutex<HashMap<String, HashMap<String, Arc<Socket>>>>,
}

impl Default for AppHub {
    fn default() -> Self {
        AppHub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            connections: AtomicUsize::new(0),
            slow_consumers: AtomicU64::new(0),
            signed_in: Mutex::new(HashMap::new()),
        }
    }
}

impl AppHub {
    // Every lock below is a std Mutex on purpose: sections are short, never await, and never
    // take a second shard lock, so they cannot deadlock and need no async mutex. One section
    // reaches outside: the first touch of a channel reads the log's head (the storage's own
    // mutex, and sled if not cached) under the shard lock, so that no publish can begin between
    // that read and the registration. The storage never calls back into the hub.
    fn shard(&self, channel: &str) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        let index = usize::try_from(self.hasher.hash_one(channel) % SHARDS as u64).expect("shard index < SHARDS");
        self.shards[index].lock().expect("hub lock poisoned: a panic while fanning out")
    }

    /// Registers `socket` on `channel`. On presence channels `member` joins the roster and, if
    /// it is the user's first socket there, the others get `member_added`.
    ///
    /// `log_head` is asked for the log's head when the hub has no entry for the channel (then
    /// nothing is in flight, so the log's head is the published head).
    pub fn subscribe<E>(
        &self,
        channel: &ChannelName,
        socket: &Arc<Socket>,
        member: Option<PresenceMember>,
        log_head: impl FnOnce() -> Result<Option<EventId>, E>,
    ) -> Result<Subscribed, E> {
        let mut shard = self.shard(channel.as_str());
        let state = match shard.entry(channel.as_str().to_owned()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(Channel::new(log_head()?)),
        };
        let user_id = member.as_ref().map(|m| m.user_id.clone());
        let previous = state
            .subscribers
            .insert(socket.serial, Subscriber { socket: Arc::clone(socket), user_id: user_id.clone() });
        if let (Some(member), None) = (member, previous) {
            match state.members.entry(member.user_id.clone()) {
                Entry::Occupied(mut joined) => joined.get_mut().sockets += 1,
                Entry::Vacant(vacant) => {
                    let frame =
                        Frame::plain(frames::member_added(channel.as_str(), &member.user_id, &member.user_info));
                    vacant.insert(Member { info: member.user_info, sockets: 1 });
                    state.send_to_all(&frame, Some(&socket.id));
                }
            }
        }
        let roster = channel.is_presence().then(|| {
            reprise_api::presence::roster(state.members.iter().map(|(id, member)| (id.as_str(), &member.info)))
        });
        Ok(Subscribed { roster, published_head: state.published_head })
    }

    /// Removes `socket` from `channel`; on presence channels the last socket of a user leaves
    /// the roster and the others get `member_removed`. Returns whether it was subscribed.
    pub fn unsubscribe(&self, channel: &str, socket: &Socket) -> bool {
        let mut shard = self.shard(channel);
        let Some(state) = shard.get_mut(channel) else { return false };
        let Some(removed) = state.subscribers.remove(&socket.serial) else { return false };
        if let Some(user_id) = removed.user_id {
            if let Entry::Occupied(mut member) = state.members.entry(user_id.clone()) {
                member.get_mut().sockets -= 1;
                if member.get().sockets == 0 {
                    member.remove();
                    state.send_to_all(&Frame::plain(frames::member_removed(channel, &user_id)), None);
                }
            }
        }
        if state.is_idle() {
            shard.remove(channel);
        }
        true
    }

    /// Announces a logged event about to be appended to `channel`'s log; see `published_head`.
    /// `log_head` is asked for the log's head if the hub has no entry for the channel.
    pub fn begin_logged<E>(
        &self,
        channel: &str,
        log_head: impl FnOnce() -> Result<Option<EventId>, E>,
    ) -> Result<(), E> {
        let mut shard = self.shard(channel);
        let state = match shard.entry(channel.to_owned()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(Channel::new(log_head()?)),
        };
        state.in_flight += 1;
        Ok(())
    }

    /// Ends what `begin_logged` began: fans out the logged event `id` (if it was appended) and
    /// makes it the published head.
    pub fn end_logged(&self, channel: &ChannelName, appended: Option<(EventId, &Arc<Frame>)>, except: Option<&str>) {
        let mut shard = self.shard(channel.as_str());
        let Some(state) = shard.get_mut(channel.as_str()) else { return };
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some((id, frame)) = appended {
            if let (_, Some(excluded)) = state.send_to_all(frame, except) {
                let text = frames::skipped(channel.as_str(), id);
                excluded.send(&Arc::new(Frame { text: text.into(), logged: Some((channel.clone(), id.seq())) }));
            }
            state.published_head = Some(id);
        }
        if state.is_idle() {
            shard.remove(channel.as_str());
        }
    }

    /// Sends an unlogged `frame` (a client event) to every subscriber of `channel` but `except`.
    /// Returns how many sockets it was queued for.
    pub fn publish(&self, channel: &ChannelName, frame: &Arc<Frame>, except: Option<&str>) -> usize {
        let shard = self.shard(channel.as_str());
        shard.get(channel.as_str()).map_or(0, |state| state.send_to_all(frame, except).0)
    }

    /// The channel's published head. `log_head` is asked (under the channel's lock, so no
    /// publish can begin meanwhile) when the hub does not track the channel: then nothing is in
    /// flight and the log's head is the published head.
    pub fn published_head<E>(
        &self,
        channel: &str,
        log_head: impl FnOnce() -> Result<Option<EventId>, E>,
    ) -> Result<Option<EventId>, E> {
        match self.shard(channel).get(channel) {
            Some(state) => Ok(state.published_head),
            None => log_head(),
        }
    }

    /// What a socket already subscribed to `channel` is told when it subscribes again.
    pub fn current(&self, channel: &ChannelName) -> Subscribed {
        let shard = self.shard(channel.as_str());
        let state = shard.get(channel.as_str());
        let roster = channel.is_presence().then(|| {
            let members = state.into_iter().flat_map(|s| s.members.iter());
            reprise_api::presence::roster(members.map(|(id, member)| (id.as_str(), &member.info)))
        });
        Subscribed { roster, published_head: state.and_then(|s| s.published_head) }
    }

    /// Whether `socket` is subscribed to `channel`, and with which presence user id.
    pub fn subscription(&self, channel: &str, socket: &Socket) -> Option<Option<String>> {
        let shard = self.shard(channel);
        shard.get(channel)?.subscribers.get(&socket.serial).map(|s| s.user_id.clone())
    }

    pub fn counts(&self, channel: &str) -> ChannelCounts {
        let shard = self.shard(channel);
        shard.get(channel).map_or_else(ChannelCounts::default, |state| ChannelCounts {
            subscriptions: state.subscribers.len(),
            users: state.members.len(),
        })
    }

    /// Occupied channels (at least one subscriber) whose name starts with `prefix`.
    pub fn occupied(&self, prefix: &str) -> Vec<(String, ChannelCounts)> {
        let mut found = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().expect("hub lock poisoned: a panic while fanning out");
            for (name, state) in shard.iter() {
                if !state.subscribers.is_empty() && name.starts_with(prefix) {
                    let counts = ChannelCounts { subscriptions: state.subscribers.len(), users: state.members.len() };
                    found.push((name.clone(), counts));
                }
            }
        }
        found
    }

    /// The user ids present on a presence channel.
    pub fn users(&self, channel: &str) -> Vec<String> {
        let shard = self.shard(channel);
        shard.get(channel).map(|state| state.members.keys().cloned().collect()).unwrap_or_default()
    }

    fn signed_in(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Arc<Socket>>>> {
        self.signed_in.lock().expect("signed-in lock poisoned: a panic during a map operation")
    }

    /// Records that `socket` signed in as `user_id` (replacing an earlier signin of it).
    pub fn sign_in(&self, user_id: &str, socket: &Arc<Socket>, previous: Option<&str>) {
        let mut users = self.signed_in();
        if let Some(previous) = previous {
            remove_signed_in(&mut users, previous, &socket.id);
        }
        users.entry(user_id.to_owned()).or_default().insert(socket.id.to_string(), Arc::clone(socket));
    }

    /// Forgets a signin when its socket goes away.
    pub fn sign_out(&self, user_id: &str, socket_id: &str) {
        remove_signed_in(&mut self.signed_in(), user_id, socket_id);
    }

    /// Asks every socket of `user_id` (signed in as that user, or joined to a presence channel as
    /// that member) to close with `code`. Returns how many sockets that was.
    pub fn terminate_user(&self, user_id: &str, code: u16) -> usize {
        let mut sockets: HashMap<String, Arc<Socket>> = self.signed_in().get(user_id).cloned().unwrap_or_default();
        for shard in self.shards.iter() {
            let shard = shard.lock().expect("hub lock poisoned: a panic while fanning out");
            for state in shard.values() {
                for subscriber in state.subscribers.values() {
                    if subscriber.user_id.as_deref() == Some(user_id) {
                        sockets.insert(subscriber.socket.id.to_string(), Arc::clone(&subscriber.socket));
                    }
                }
            }
        }
        for socket in sockets.values() {
            socket.close(code);
        }
        sockets.len()
    }
}

fn remove_signed_in(users: &mut HashMap<String, HashMap<String, Arc<Socket>>>, user_id: &str, socket_id: &str) {
    if let Some(sockets) = users.get_mut(user_id) {
        sockets.remove(socket_id);
        if sockets.is_empty() {
            users.remove(user_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket and a way to read its outbox, as the connection would.
    fn socket(id: &str, capacity: usize) -> (Arc<Socket>, Reader) {
        let mut bytes = [0; SocketId::MAX_LEN];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        let socket = Socket::new(SocketId { len: u8::try_from(id.len()).unwrap(), bytes }, capacity);
        (Arc::clone(&socket), Reader(socket))
    }

    struct Reader(Arc<Socket>);

    impl Reader {
        fn try_recv(&mut self) -> Result<Arc<Frame>, ()> {
            self.0.outbox().frames.pop_front().ok_or(())
        }
    }

    fn name(n: &str) -> ChannelName {
        ChannelName::parse(n).unwrap()
    }

    fn no_log() -> Result<Option<EventId>, ()> {
        Ok(None)
    }

    fn member(id: &str) -> Option<PresenceMember> {
        Some(PresenceMember { user_id: id.to_owned(), user_info: Value::Null })
    }

    #[test]
    fn socket_ids_are_two_numbers_joined_by_a_dot() {
        for _ in 0..1000 {
            let id = SocketId::random();
            let (a, b) = id.split_once('.').expect("a dot");
            for number in [a, b] {
                assert!(!number.is_empty() && !number.starts_with('0'), "{id}");
                assert!(number.parse::<u32>().is_ok_and(|n| n < 1_000_000_000), "{id}");
            }
        }
    }

    #[test]
    fn a_user_with_two_sockets_joins_once_and_leaves_with_the_last() {
        let hub = AppHub::default();
        let channel = name("presence-room");
        let (watcher, mut watcher_rx) = socket("0.1", 16);
        hub.subscribe(&channel, &watcher, member("w"), no_log).unwrap();
        let (tab1, _rx1) = socket("1.1", 16);
        let (tab2, _rx2) = socket("1.2", 16);
        hub.subscribe(&channel, &tab1, member("u"), no_log).unwrap();
        hub.subscribe(&channel, &tab2, member("u"), no_log).unwrap();
        let joined: Vec<_> = std::iter::from_fn(|| watcher_rx.try_recv().ok()).collect();
        assert_eq!(joined.len(), 1, "one member_added for two tabs");
        assert!(joined[0].text.contains("member_added"));
        assert_eq!(hub.counts("presence-room"), ChannelCounts { subscriptions: 3, users: 2 });
        hub.unsubscribe("presence-room", &tab1);
        assert!(watcher_rx.try_recv().is_err(), "still present through the second tab");
        hub.unsubscribe("presence-room", &tab2);
        assert!(watcher_rx.try_recv().unwrap().text.contains("member_removed"));
        assert_eq!(hub.users("presence-room"), vec!["w".to_owned()]);
    }

    #[test]
    fn a_full_outbox_marks_the_socket_over_capacity_without_blocking() {
        let hub = AppHub::default();
        let channel = name("news");
        let (slow, _rx) = socket("1.1", 1);
        hub.subscribe(&channel, &slow, None, no_log).unwrap();
        let frame = Frame::plain("x".into());
        assert_eq!(hub.publish(&channel, &frame, None), 1);
        assert_eq!(hub.publish(&channel, &frame, None), 0);
        assert_eq!(slow.close_code.load(Ordering::Acquire), ErrorCode::OverCapacity.as_u16());
    }

    #[test]
    fn publish_skips_the_excluded_socket() {
        let hub = AppHub::default();
        let channel = name("news");
        let (a, mut a_rx) = socket("1.1", 4);
        let (b, mut b_rx) = socket("1.2", 4);
        hub.subscribe(&channel, &a, None, no_log).unwrap();
        hub.subscribe(&channel, &b, None, no_log).unwrap();
        hub.publish(&channel, &Frame::plain("e".into()), Some("1.1"));
        assert!(a_rx.try_recv().is_err());
        assert_eq!(b_rx.try_recv().unwrap().text.as_str(), "e");
    }

    /// A socket that subscribes while an event is between the log and its fan-out starts at
    /// the published head, so it gets that event live.
    #[test]
    fn a_subscriber_during_a_commit_starts_at_the_published_head() {
        let hub = AppHub::default();
        let channel = name("orders");
        let before = EventId::new(1, 1);
        let in_flight = EventId::new(2, 2);
        hub.begin_logged("orders", || Ok::<_, ()>(Some(before))).unwrap();
        let (late, mut late_rx) = socket("1.1", 4);
        let log_head = || -> Result<Option<EventId>, ()> { panic!("the hub knows the published head") };
        let subscribed = hub.subscribe(&channel, &late, None, log_head).unwrap();
        assert_eq!(subscribed.published_head, Some(before));
        hub.end_logged(&channel, Some((in_flight, &Frame::plain("n".into()))), None);
        assert_eq!(late_rx.try_recv().unwrap().text.as_str(), "n");
        hub.unsubscribe("orders", &late);
        assert_eq!(hub.counts("orders"), ChannelCounts::default());
    }
}

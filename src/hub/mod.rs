//! The hub: which sockets are subscribed to which channels, presence rosters, and fan-out.
//!
//! It also knows each channel's *published head*: the last logged event that was fanned out. A
//! logged event goes to the log first and to subscribers after its fsync; a socket that
//! subscribes in between must start after the published head, not the log's head, or it would
//! neither get that event live (its watermark says it has it) nor in a replay. The hub never
//! reads storage: when it does not know a channel's head, [`AppHub::probe_head`] tells the caller
//! to read it (off the runtime, see `log::LogService::published_head`) and settle it here.
//!
//! Fan-out never waits: each socket has a bounded outbox and a publish queues one shared,
//! already-serialised frame (a refcount, not a copy) to every subscriber. A socket whose outbox
//! is full is marked over capacity and woken; its connection closes it with 4100 and the client
//! resumes from the log, so nothing is skipped silently.

mod channel;
mod deadline;
mod frame;
mod signins;
mod socket;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use reprise_api::presence::PresenceMember;
use reprise_api::webhook::{WebhookEvent, WebhookKind};
use reprise_api::{ChannelName, EventId, frames};
use serde_json::Value;
use tokio::sync::oneshot;

use self::channel::{Channel, Head, Subscriber};
pub use self::deadline::{Deadline, TICK, Tick};
pub use self::frame::{Frame, Logged, encode_text, put_event_frame, put_text_frame};
use self::signins::SignIns;
pub use self::socket::{Socket, SocketId};
use crate::webhooks::sink::WebhookSink;

/// Channel maps are split in shards so publishes to different channels rarely share a lock.
const SHARDS: usize = 16;

/// Takes one of the hub's std mutexes.
///
/// Poisoning policy, for every mutex of the hub (shards, outboxes, sign-ins): a panic while one
/// was held is recovered from, not propagated. Each critical section is a few map or queue
/// operations, each of which leaves its collection valid if it panics; the worst a panic in the
/// middle of a section leaves is one channel's counts off by one. Propagating the poison would
/// instead turn every later publish, subscribe and close on that shard into a panic: one bug
/// would take the whole server down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A presence channel already holds its app's `presence_max_members`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RosterFull;

/// Counts of one channel, for the HTTP API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelCounts {
    pub subscriptions: usize,
    pub users: usize,
}

/// Where a channel's published head stands, for a reader that needs it.
pub enum HeadProbe {
    Known(Option<EventId>),
    /// The hub does not know it and nothing is in flight: read the log's head, then
    /// [`HeadPin::settle`] with it.
    ReadLog(HeadPin),
    /// The hub does not know it and logged events are in flight: wait for their fan-out (the
    /// receiver completes, or fails if the entry went away), then probe again.
    Wait(oneshot::Receiver<()>),
}

/// What became of an event the cluster's bus delivered ([`AppHub::deliver`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Fanned out to this node's subscribers; it is the channel's published head now.
    Delivered,
    /// Nobody on this node is subscribed to the channel: nothing to do.
    NotTracked,
    /// At or below the published head: already delivered (or replayed).
    Duplicate,
    /// Events between the published head (given) and this one are missing: read them from the
    /// log and deliver them first.
    Gap { after: EventId },
}

/// Keeps a channel's entry alive while its head is read from the log; see [`HeadProbe::ReadLog`].
pub struct HeadPin {
    hub: Arc<AppHub>,
    channel: String,
    /// The channel's announcement count when the read began.
    announced: u64,
}

impl HeadPin {
    /// Settles the channel's head with what the log said, if no logged event was announced since
    /// the probe: then the log's head is the published head. Returns the head, or None if the
    /// read raced a publish and the caller must probe again.
    pub fn settle(self, log_head: Option<EventId>) -> Option<Option<EventId>> {
        let mut shard = self.hub.shard(&self.channel);
        let state = shard.get_mut(&self.channel).expect("a pinned entry stays in the map");
        match state.head {
            Head::Known(head) => Some(head),
            Head::Unknown if state.announced == self.announced && state.in_flight == 0 => {
                state.head = Head::Known(log_head);
                state.wake_waiters_if_settled();
                Some(log_head)
            }
            Head::Unknown => None,
        }
    }
}

impl Drop for HeadPin {
    fn drop(&mut self) {
        let mut shard = self.hub.shard(&self.channel);
        if let Some(state) = shard.get_mut(&self.channel) {
            state.pins -= 1;
            if state.is_idle() {
                shard.remove(&self.channel);
            }
        }
    }
}

/// The channels of one app.
pub struct AppHub {
    /// Every lock is a std Mutex on purpose: sections are short, never await, never read
    /// storage, and never take a second shard lock, so they cannot deadlock and need no async
    /// mutex. Poisoning: see [`lock`].
    shards: Box<[Mutex<HashMap<String, Channel>>]>,
    hasher: RandomState,
    /// Open connections, for `max_connections` and `GET /apps/{id}/connections`.
    pub connections: AtomicUsize,
    /// Connections open on the cluster's other live nodes, as of the census's last read (at most
    /// about 2 s old); always 0 on a single node. Admission and `GET /apps/{id}/connections` add
    /// it to `connections`.
    pub connections_elsewhere: AtomicUsize,
    /// Sockets closed because their outbox overflowed.
    pub slow_consumers: AtomicU64,
    /// Sockets that signed in (`pusher:signin`), for `terminate_connections`, and watchlists.
    sign_ins: SignIns,
    /// Whether this hub tells subscribers about presence members joining and leaving. In cluster
    /// mode the roster is cluster-wide and those events come over the bus instead.
    presence_events: bool,
    /// Where this app's webhook events go, if it has webhooks.
    webhooks: Option<Arc<WebhookSink>>,
    /// Where this hub tells its channel changes (occupied, vacated, members, counts): the app's
    /// sink on a single node; in cluster mode a relay that lets the cluster decide occupancy and
    /// counts (member events come from the cluster's roster instead).
    local_events: Option<Arc<WebhookSink>>,
}

impl Default for AppHub {
    fn default() -> Self {
        AppHub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            connections: AtomicUsize::new(0),
            connections_elsewhere: AtomicUsize::new(0),
            slow_consumers: AtomicU64::new(0),
            sign_ins: SignIns::new(true),
            presence_events: true,
            webhooks: None,
            local_events: None,
        }
    }
}

impl AppHub {
    /// A hub for cluster mode: presence events come from the cluster, not from this node's roster.
    pub fn clustered() -> Self {
        AppHub { presence_events: false, sign_ins: SignIns::new(false), ..AppHub::default() }
    }

    /// This hub, telling its events to `sink`, and its channel changes to `local`.
    pub fn with_webhooks(self, sink: Arc<WebhookSink>, local: Arc<WebhookSink>) -> Self {
        AppHub { webhooks: Some(sink), local_events: Some(local), ..self }
    }

    /// The app's webhook sink, if it has webhooks (for events the connections see: client
    /// events, cache misses).
    pub fn webhooks(&self) -> Option<&WebhookSink> {
        self.webhooks.as_deref()
    }

    /// The sink for this node's channel changes.
    fn local_webhooks(&self) -> Option<&WebhookSink> {
        self.local_events.as_deref()
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, HashMap<String, Channel>> {
        let index = usize::try_from(self.hasher.hash_one(channel) % SHARDS as u64).expect("shard index < SHARDS");
        lock(&self.shards[index])
    }

    /// Registers `socket` on `channel`: every event fanned out from now on reaches its outbox.
    /// On presence channels `member` joins the roster and, if it is the user's first socket
    /// there, the others get `member_added`; a new user is refused if the roster already holds
    /// `max_members` (checked under the shard lock, so concurrent joins cannot overshoot).
    /// Returns the roster (`{"presence":{...}}`) on presence channels.
    pub fn subscribe(
        &self,
        channel: &ChannelName,
        socket: &Arc<Socket>,
        member: Option<PresenceMember>,
        max_members: usize,
    ) -> Result<Option<Value>, RosterFull> {
        let mut shard = self.shard(channel.as_str());
        if let (Some(state), Some(member)) = (shard.get(channel.as_str()), &member)
            && state.members.len() >= max_members
            && !state.members.contains_key(&member.user_id)
        {
            return Err(RosterFull);
        }
        let state = shard.entry(channel.as_str().to_owned()).or_insert_with(Channel::new);
        let user_id = member.as_ref().map(|m| m.user_id.clone());
        let previous = state.subscribers.insert(socket.serial, Subscriber { socket: Arc::clone(socket), user_id });
        // Told under the shard lock, so a channel's webhook events keep the order they happened in.
        if let (Some(webhooks), None) = (self.local_webhooks(), &previous) {
            channel_changed(webhooks, channel.as_str(), state, true);
        }
        if let (Some(member), None) = (member, previous) {
            let joins = self.presence_events && !state.members.contains_key(&member.user_id);
            let added = joins.then(|| frames::member_added(channel.as_str(), &member.user_id, &member.user_info));
            // `joins` is false in cluster mode, where the cluster's roster decides.
            if let (true, Some(webhooks)) = (joins, self.local_webhooks()) {
                let user_id = member.user_id.clone();
                webhooks.emit(WebhookEvent::MemberAdded { channel: channel.as_str().to_owned(), user_id });
            }
            state.join(member.user_id, member.user_info);
            if let Some(added) = added {
                state.send_to_all(&Frame::plain(added), Some(&socket.id));
            }
        }
        Ok(channel.is_presence().then(|| roster(state)))
    }

    /// Removes `socket` from `channel`; on presence channels the last socket of a user leaves
    /// the roster and the others get `member_removed`. Returns whether it was subscribed.
    pub fn unsubscribe(&self, channel: &str, socket: &Socket) -> bool {
        let mut shard = self.shard(channel);
        let Some(state) = shard.get_mut(channel) else { return false };
        let Some(removed) = state.subscribers.remove(&socket.serial) else { return false };
        if let Some(user_id) = removed.user_id
            && state.leave(&user_id)
            && self.presence_events
        {
            state.send_to_all(&Frame::plain(frames::member_removed(channel, &user_id)), None);
            if let Some(webhooks) = self.local_webhooks() {
                webhooks.emit(WebhookEvent::MemberRemoved { channel: channel.to_owned(), user_id });
            }
        }
        if let Some(webhooks) = self.local_webhooks() {
            channel_changed(webhooks, channel, state, false);
        }
        if state.is_idle() {
            shard.remove(channel);
        }
        true
    }

    /// Announces a logged event about to be appended to `channel`'s log, so that the channel's
    /// published head is not read from a log that is ahead of it. Never reads storage.
    pub fn begin_logged(&self, channel: &str) {
        let mut shard = self.shard(channel);
        // Looked up before `entry`, which would take an owned copy of the name on every call.
        let state = match shard.get_mut(channel) {
            Some(state) => state,
            None => shard.entry(channel.to_owned()).or_insert_with(Channel::new),
        };
        state.in_flight += 1;
        state.announced += 1;
    }

    /// Ends what `begin_logged` began for an appended event: fans out the logged event `id` and
    /// makes it the published head. `frame` builds its frame, and is called only if the channel
    /// has subscribers here: most channels a backend publishes to have none at that moment, and
    /// for those, building the frame (the event written as JSON, and its allocations) would be
    /// most of what the committer does per event after the flush.
    ///
    /// Called in id order per channel (one committer), so once event n is fanned out, every
    /// earlier event of the channel has been: n is the published head even if it was unknown.
    pub fn end_logged(
        &self,
        channel: &ChannelName,
        id: EventId,
        frame: impl FnOnce() -> Arc<Frame>,
        except: Option<&str>,
    ) {
        self.end_announced(channel, Some((id, frame)), except);
    }

    /// Ends what `begin_logged` began for an event that was not appended.
    pub fn abandon_logged(&self, channel: &ChannelName) {
        self.end_announced(channel, None::<(EventId, fn() -> Arc<Frame>)>, None);
    }

    fn end_announced(
        &self,
        channel: &ChannelName,
        appended: Option<(EventId, impl FnOnce() -> Arc<Frame>)>,
        except: Option<&str>,
    ) {
        let mut shard = self.shard(channel.as_str());
        let Some(state) = shard.get_mut(channel.as_str()) else { return };
        state.in_flight = state.in_flight.saturating_sub(1);
        if let Some((id, frame)) = appended {
            if !state.subscribers.is_empty()
                && let (_, Some(excluded)) = state.send_to_all(&frame(), except)
            {
                let text = frames::skipped(channel.as_str(), id);
                let logged = Logged { channel: channel.clone(), id, event: None };
                excluded.send(&Frame::logged(text, logged));
            }
            state.head = Head::Known(Some(id));
        }
        state.wake_waiters_if_settled();
        if state.is_idle() {
            shard.remove(channel.as_str());
        }
    }

    /// Fans out a logged event that the cluster's bus delivered, in sequence order: the next one
    /// after the published head goes out; anything at or below it is a duplicate; a jump is a gap
    /// the caller fills from the log first. A channel whose head is unknown (a subscriber is
    /// settling it) takes the event as its head: that subscriber's replay reads up to it.
    pub fn deliver(&self, channel: &ChannelName, id: EventId, frame: &Arc<Frame>, except: Option<&str>) -> Delivery {
        let mut shard = self.shard(channel.as_str());
        let Some(state) = shard.get_mut(channel.as_str()) else { return Delivery::NotTracked };
        match state.head {
            Head::Known(Some(head)) if id.seq() <= head.seq() => return Delivery::Duplicate,
            Head::Known(Some(head)) if id.seq() > head.seq() + 1 => return Delivery::Gap { after: head },
            _ => {}
        }
        if let (_, Some(excluded)) = state.send_to_all(frame, except) {
            let text = frames::skipped(channel.as_str(), id);
            let logged = Logged { channel: channel.clone(), id, event: None };
            excluded.send(&Frame::logged(text, logged));
        }
        state.head = Head::Known(Some(id));
        // A reader that read the log's head meanwhile must not settle an older one.
        state.announced += 1;
        state.wake_waiters_if_settled();
        Delivery::Delivered
    }

    /// Whether this hub has an entry for `channel` (a subscriber, or a reader settling its head).
    /// Lets the cluster's bus skip, cheaply, the events of channels nobody here watches.
    pub fn tracks(&self, channel: &str) -> bool {
        self.shard(channel).contains_key(channel)
    }

    /// The channels this node has subscribers on, with their published heads (for the cluster's
    /// check that no tail was lost).
    pub fn tracked_heads(&self) -> Vec<(String, Option<EventId>)> {
        let mut found = Vec::new();
        for shard in &self.shards {
            for (name, state) in lock(shard).iter() {
                if let (false, Head::Known(head)) = (state.subscribers.is_empty(), state.head) {
                    found.push((name.clone(), head));
                }
            }
        }
        found
    }

    /// Asks every subscriber of `channel` on this node to close with `code` and takes `head` as
    /// the channel's published head: for events this node can no longer deliver (compacted before
    /// it caught up), its subscribers resume and are told `recovered:false`.
    pub fn restart_channel(&self, channel: &ChannelName, head: Option<EventId>, code: u16) {
        let mut shard = self.shard(channel.as_str());
        let Some(state) = shard.get_mut(channel.as_str()) else { return };
        for subscriber in state.subscribers.values() {
            subscriber.socket.close(code);
        }
        state.head = Head::Known(head);
        state.announced += 1;
    }

    /// This node's presence subscriptions: channel, socket, user id and user info.
    pub fn presence_members(&self) -> Vec<(String, Arc<Socket>, String, Value)> {
        let mut found = Vec::new();
        for shard in &self.shards {
            for (name, state) in lock(shard).iter() {
                for subscriber in state.subscribers.values() {
                    let Some(user_id) = &subscriber.user_id else { continue };
                    let info = state.members.get(user_id).map_or(Value::Null, |member| member.info.clone());
                    found.push((name.clone(), Arc::clone(&subscriber.socket), user_id.clone(), info));
                }
            }
        }
        found
    }

    /// Sends an unlogged `frame` (a client event) to every subscriber of `channel` but `except`.
    /// Returns how many sockets it was queued for.
    pub fn publish(&self, channel: &ChannelName, frame: &Arc<Frame>, except: Option<&str>) -> usize {
        let shard = self.shard(channel.as_str());
        shard.get(channel.as_str()).map_or(0, |state| state.send_to_all(frame, except).0)
    }

    /// Where `channel`'s published head stands. Creates (and pins) an entry when the hub has
    /// none, so that an announcement during the caller's log read is seen by `settle`.
    pub fn probe_head(self: &Arc<Self>, channel: &str) -> HeadProbe {
        let mut shard = self.shard(channel);
        let state = shard.entry(channel.to_owned()).or_insert_with(Channel::new);
        match state.head {
            Head::Known(head) => {
                if state.is_idle() {
                    shard.remove(channel); // a probe alone does not keep an entry
                }
                HeadProbe::Known(head)
            }
            Head::Unknown if state.in_flight > 0 => {
                let (told, wait) = oneshot::channel();
                state.waiters.push(told);
                HeadProbe::Wait(wait)
            }
            Head::Unknown => {
                state.pins += 1;
                let pin = HeadPin { hub: Arc::clone(self), channel: channel.to_owned(), announced: state.announced };
                HeadProbe::ReadLog(pin)
            }
        }
    }

    /// The presence roster of `channel` (for a socket that subscribes again).
    pub fn roster(&self, channel: &ChannelName) -> Option<Value> {
        let shard = self.shard(channel.as_str());
        let state = shard.get(channel.as_str())?;
        channel.is_presence().then(|| roster(state))
    }

    /// Whether `socket` is subscribed to `channel`, and with which presence user id.
    pub fn subscription(&self, channel: &str, socket: &Socket) -> Option<Option<String>> {
        let shard = self.shard(channel);
        shard.get(channel)?.subscribers.get(&socket.serial).map(|s| s.user_id.clone())
    }

    pub fn counts(&self, channel: &str) -> ChannelCounts {
        let shard = self.shard(channel);
        shard.get(channel).map_or_else(ChannelCounts::default, counts)
    }

    /// Occupied channels (at least one subscriber) whose name starts with `prefix`.
    pub fn occupied(&self, prefix: &str) -> Vec<(String, ChannelCounts)> {
        let mut found = Vec::new();
        for shard in &self.shards {
            for (name, state) in lock(shard).iter() {
                if !state.subscribers.is_empty() && name.starts_with(prefix) {
                    found.push((name.clone(), counts(state)));
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

    /// Records that `socket` signed in as `user_id` (replacing an earlier sign-in as `previous`),
    /// watching `watchlist`. A single node sends the watchlist's status at once and tells the
    /// user's watchers if the user just came online; a clustered hub leaves both to the cluster
    /// ([`AppHub::watchlist_snapshot`], [`AppHub::user_changed`]).
    pub fn sign_in(&self, user_id: &str, socket: &Arc<Socket>, previous: Option<&str>, watchlist: Vec<String>) {
        self.sign_ins.sign_in(user_id, socket, previous, watchlist);
    }

    /// Forgets a sign-in when its socket goes away.
    pub fn sign_out(&self, user_id: &str, socket: &Socket) {
        self.sign_ins.sign_out(user_id, socket);
    }

    /// Every socket signed in on this node, with its user.
    pub fn signed_in(&self) -> Vec<(String, Arc<Socket>)> {
        self.sign_ins.signed_in()
    }

    /// Cluster mode: sends `socket` its watchlist's status as of change `version` (`online`: the
    /// watched users online then), then the newer changes heard meanwhile.
    pub fn watchlist_snapshot(&self, socket: &Socket, version: u64, online: &HashSet<String>) {
        self.sign_ins.snapshot(socket, version, online);
    }

    /// Cluster mode: every watched user, and the watching sockets, whose snapshots are to be read
    /// again (after the bus reconnected); changes heard until then are kept.
    pub fn resync_watchers(&self) -> (Vec<String>, Vec<Arc<Socket>>) {
        self.sign_ins.resync_watchers()
    }

    /// Cluster mode: the watchers [`AppHub::resync_watchers`] held get what they heard and stop
    /// waiting (their new snapshot could not be read).
    pub fn release_watchers(&self) {
        self.sign_ins.release_pending();
    }

    /// Cluster mode: `user_id` came online or went offline in the cluster (change `version`):
    /// tells the sockets here that watch them.
    pub fn user_changed(&self, user_id: &str, online: bool, version: u64) {
        self.sign_ins.changed(user_id, online, version);
    }

    /// Asks every socket of `user_id` (signed in as that user, or joined to a presence channel as
    /// that member) to close with `code`. Returns how many sockets that was.
    pub fn terminate_user(&self, user_id: &str, code: u16) -> usize {
        let mut sockets = self.sign_ins.sockets_of(user_id);
        for shard in &self.shards {
            for state in lock(shard).values() {
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

/// Tells `webhooks` that `channel` gained (`joined`) or lost a subscriber: occupied on the first,
/// vacated on the last, and the new count.
fn channel_changed(webhooks: &WebhookSink, channel: &str, state: &Channel, joined: bool) {
    let subscriptions = state.subscribers.len();
    match (joined, subscriptions) {
        (true, 1) => webhooks.emit(WebhookEvent::ChannelOccupied { channel: channel.to_owned() }),
        (false, 0) => webhooks.emit(WebhookEvent::ChannelVacated { channel: channel.to_owned() }),
        _ => {}
    }
    if webhooks.wants(WebhookKind::SubscriptionCount) {
        let subscription_count = subscriptions as u64;
        webhooks.emit(WebhookEvent::SubscriptionCount { channel: channel.to_owned(), subscription_count });
    }
}

fn counts(state: &Channel) -> ChannelCounts {
    ChannelCounts { subscriptions: state.subscribers.len(), users: state.members.len() }
}

fn roster(state: &Channel) -> Value {
    reprise_api::presence::roster(state.members.iter().map(|(id, member)| (id.as_str(), &member.info)))
}

#[cfg(test)]
mod tests {
    use reprise_api::ErrorCode;

    use super::*;

    fn socket(id: &str, capacity: usize) -> Arc<Socket> {
        Socket::new(SocketId::fixed(id), capacity)
    }

    fn name(n: &str) -> ChannelName {
        ChannelName::parse(n).unwrap()
    }

    fn member(id: &str) -> Option<PresenceMember> {
        Some(PresenceMember { user_id: id.to_owned(), user_info: Value::Null })
    }

    fn probe_known(hub: &Arc<AppHub>, channel: &str) -> Option<EventId> {
        match hub.probe_head(channel) {
            HeadProbe::Known(head) => head,
            _ => panic!("the head of {channel} should be known"),
        }
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
        let watcher = socket("0.1", 16);
        hub.subscribe(&channel, &watcher, member("w"), usize::MAX).unwrap();
        let (tab1, tab2) = (socket("1.1", 16), socket("1.2", 16));
        hub.subscribe(&channel, &tab1, member("u"), usize::MAX).unwrap();
        hub.subscribe(&channel, &tab2, member("u"), usize::MAX).unwrap();
        let joined: Vec<_> = std::iter::from_fn(|| watcher.pop_frame()).collect();
        assert_eq!(joined.len(), 1, "one member_added for two tabs");
        assert!(joined[0].text.contains("member_added"));
        assert_eq!(hub.counts("presence-room"), ChannelCounts { subscriptions: 3, users: 2 });
        hub.unsubscribe("presence-room", &tab1);
        assert!(watcher.pop_frame().is_none(), "still present through the second tab");
        hub.unsubscribe("presence-room", &tab2);
        assert!(watcher.pop_frame().unwrap().text.contains("member_removed"));
        assert_eq!(hub.users("presence-room"), vec!["w".to_owned()]);
    }

    #[test]
    fn a_full_outbox_marks_the_socket_over_capacity_without_blocking() {
        let hub = AppHub::default();
        let channel = name("news");
        let slow = socket("1.1", 1);
        hub.subscribe(&channel, &slow, None, usize::MAX).unwrap();
        let frame = Frame::plain("x".into());
        assert_eq!(hub.publish(&channel, &frame, None), 1);
        assert_eq!(hub.publish(&channel, &frame, None), 0);
        assert_eq!(slow.close_code(), ErrorCode::OverCapacity.as_u16());
    }

    #[test]
    fn publish_skips_the_excluded_socket() {
        let hub = AppHub::default();
        let channel = name("news");
        let (a, b) = (socket("1.1", 4), socket("1.2", 4));
        hub.subscribe(&channel, &a, None, usize::MAX).unwrap();
        hub.subscribe(&channel, &b, None, usize::MAX).unwrap();
        hub.publish(&channel, &Frame::plain("e".into()), Some("1.1"));
        assert!(a.pop_frame().is_none());
        assert_eq!(b.pop_frame().unwrap().text.as_str(), "e");
    }

    /// A socket that subscribes while an event is between the log and its fan-out starts at
    /// the published head, so it gets that event live.
    #[test]
    fn a_subscriber_during_a_commit_starts_at_the_published_head() {
        let hub = Arc::new(AppHub::default());
        let channel = name("orders");
        let early = socket("1.0", 4);
        hub.subscribe(&channel, &early, None, usize::MAX).unwrap();
        let before = EventId::new(1, 1);
        hub.begin_logged("orders");
        hub.end_logged(&channel, before, || Frame::plain("b".into()), None);
        let in_flight = EventId::new(2, 2);
        hub.begin_logged("orders");
        let late = socket("1.1", 4);
        hub.subscribe(&channel, &late, None, usize::MAX).unwrap();
        assert_eq!(probe_known(&hub, "orders"), Some(before));
        hub.end_logged(&channel, in_flight, || Frame::plain("n".into()), None);
        assert_eq!(late.pop_frame().unwrap().text.as_str(), "n");
        hub.unsubscribe("orders", &late);
        hub.unsubscribe("orders", &early);
        assert_eq!(hub.counts("orders"), ChannelCounts::default());
    }

    /// The committer's frame is built only for a channel someone here subscribes to, once
    /// however many subscribe; the published head moves either way.
    #[test]
    fn a_frame_is_built_only_for_a_channel_with_subscribers() {
        let hub = Arc::new(AppHub::default());
        let channel = name("orders");
        let built = std::cell::Cell::new(0);
        let frame = || {
            built.set(built.get() + 1);
            Frame::plain("e".into())
        };
        let reader = socket("1.0", 4);
        hub.subscribe(&name("other"), &reader, None, usize::MAX).unwrap();
        hub.begin_logged("orders");
        hub.end_logged(&channel, EventId::new(1, 1), frame, None);
        assert_eq!(built.get(), 0, "nobody subscribes to orders");

        let (a, b) = (socket("1.1", 4), socket("1.2", 4));
        hub.subscribe(&channel, &a, None, usize::MAX).unwrap();
        hub.subscribe(&channel, &b, None, usize::MAX).unwrap();
        hub.begin_logged("orders");
        hub.end_logged(&channel, EventId::new(2, 2), frame, None);
        assert_eq!(built.get(), 1);
        assert_eq!(a.pop_frame().unwrap().text.as_str(), "e");
        assert_eq!(b.pop_frame().unwrap().text.as_str(), "e");
        assert_eq!(probe_known(&hub, "orders"), Some(EventId::new(2, 2)));
        assert!(reader.pop_frame().is_none());
    }

    /// An unknown head is read from the log only while nothing is in flight: a read that raced
    /// an announcement is refused, and a reader that finds events in flight waits for them.
    #[test]
    fn an_unknown_head_is_settled_only_from_a_quiet_log() {
        let hub = Arc::new(AppHub::default());
        let channel = name("cold");
        let HeadProbe::ReadLog(pin) = hub.probe_head("cold") else { panic!("nothing known, nothing in flight") };
        hub.begin_logged("cold"); // a publish begins during the read
        assert_eq!(pin.settle(Some(EventId::new(1, 5))), None, "the log may be ahead of the fan-out");
        let HeadProbe::Wait(mut wait) = hub.probe_head("cold") else { panic!("an event is in flight") };
        assert!(wait.try_recv().is_err());
        hub.end_logged(&channel, EventId::new(2, 6), || panic!("nobody subscribes: no frame"), None);
        assert!(wait.try_recv().is_ok(), "the waiter is told once the event is out");
        // Nothing keeps the entry now: the head is unknown again, and the log is quiet.
        assert!(matches!(hub.probe_head("cold"), HeadProbe::ReadLog(_)));
        let HeadProbe::ReadLog(pin) = hub.probe_head("other") else { panic!("unknown channel") };
        assert_eq!(pin.settle(Some(EventId::new(3, 9))), Some(Some(EventId::new(3, 9))));
        let entries: usize = hub.shards.iter().map(|shard| lock(shard).len()).sum();
        assert_eq!(entries, 0, "probes and pins leave no entry behind");
    }

    /// Bus deliveries go out in sequence order: duplicates are dropped, a jump is reported as a
    /// gap (nothing is sent), and a channel nobody here watches is not tracked.
    #[test]
    fn deliveries_keep_sequence_order() {
        let hub = Arc::new(AppHub::clustered());
        let channel = name("orders");
        let event = |seq| (EventId::new(seq, seq), Frame::plain(format!("e{seq}")));
        let (id, frame) = event(1);
        assert_eq!(hub.deliver(&channel, id, &frame, None), Delivery::NotTracked);
        let watcher = socket("1.1", 16);
        hub.subscribe(&channel, &watcher, None, usize::MAX).unwrap();
        let HeadProbe::ReadLog(pin) = hub.probe_head("orders") else { panic!("cold channel") };
        assert_eq!(pin.settle(Some(EventId::new(1, 1))), Some(Some(EventId::new(1, 1))));
        let (id, frame) = event(1);
        assert_eq!(hub.deliver(&channel, id, &frame, None), Delivery::Duplicate);
        let (id, frame) = event(2);
        assert_eq!(hub.deliver(&channel, id, &frame, None), Delivery::Delivered);
        let (id, frame) = event(4);
        assert_eq!(hub.deliver(&channel, id, &frame, None), Delivery::Gap { after: EventId::new(2, 2) });
        let sent: Vec<_> = std::iter::from_fn(|| watcher.pop_frame()).map(|f| f.text.to_string()).collect();
        assert_eq!(sent, vec!["e2"]);
        assert_eq!(hub.tracked_heads(), vec![("orders".to_owned(), Some(EventId::new(2, 2)))]);
    }

    /// In cluster mode the hub keeps its members but announces nobody: the cluster does.
    #[test]
    fn a_clustered_hub_sends_no_presence_events() {
        let hub = AppHub::clustered();
        let channel = name("presence-room");
        let (a, b) = (socket("1.1", 4), socket("1.2", 4));
        hub.subscribe(&channel, &a, member("a"), usize::MAX).unwrap();
        hub.subscribe(&channel, &b, member("b"), usize::MAX).unwrap();
        hub.unsubscribe("presence-room", &b);
        assert!(a.pop_frame().is_none());
        assert_eq!(hub.users("presence-room"), vec!["a".to_owned()]);
    }

    /// A panic while a shard lock is held does not make every later use of the shard panic.
    #[test]
    fn a_poisoned_shard_keeps_working() {
        let hub = Arc::new(AppHub::default());
        let channel = name("news");
        let poisoner = Arc::clone(&hub);
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.shard("news");
            panic!("a bug while fanning out");
        })
        .join();
        let a = socket("1.1", 4);
        hub.subscribe(&channel, &a, None, usize::MAX).unwrap();
        assert_eq!(hub.publish(&channel, &Frame::plain("e".into()), None), 1);
        assert_eq!(a.close_code(), 0);
    }
}

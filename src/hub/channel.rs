//! One channel's live state on this server: its subscribers, its presence roster, and what it
//! knows of the channel's *published head* (the last logged event fanned out).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use reprise_api::EventId;
use serde_json::Value;
use tokio::sync::oneshot;

use super::{Frame, Socket};

pub(super) struct Subscriber {
    pub socket: Arc<Socket>,
    pub user_id: Option<String>,
}

pub(super) struct Member {
    pub info: Value,
    /// How many of this user's sockets are subscribed (tabs): joined on the first, left on the last.
    pub sockets: usize,
}

/// What the hub knows of a channel's published head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// Nothing was fanned out since the entry was created, and nobody has read the log's head
    /// for it yet. Entries start here so that creating one never reads storage under a lock.
    Unknown,
    /// The last logged event fanned out (None: the channel never had one).
    Known(Option<EventId>),
}

pub(super) struct Channel {
    /// By `Socket::serial`.
    pub subscribers: HashMap<u64, Subscriber>,
    pub members: HashMap<String, Member>,
    pub head: Head,
    /// Logged events announced (being appended) but not yet fanned out. While any are, the log's
    /// head may be ahead of the published head, so an `Unknown` head cannot be read from the log.
    pub in_flight: usize,
    /// Counts announcements: a log read that started before one cannot be trusted.
    pub announced: u64,
    /// Readers resolving an `Unknown` head from the log: the entry (and so `announced`) must
    /// outlive their read.
    pub pins: usize,
    /// Readers waiting for the events in flight to be fanned out; told when `in_flight` drops
    /// to zero or the head becomes known. Empty (no allocation) almost always.
    pub waiters: Vec<oneshot::Sender<()>>,
}

impl Channel {
    pub fn new() -> Self {
        Channel {
            subscribers: HashMap::new(),
            members: HashMap::new(),
            head: Head::Unknown,
            in_flight: 0,
            announced: 0,
            pins: 0,
            waiters: Vec::new(),
        }
    }

    /// An idle entry holds nothing the log does not: it can be dropped.
    pub fn is_idle(&self) -> bool {
        self.subscribers.is_empty() && self.in_flight == 0 && self.pins == 0 && self.waiters.is_empty()
    }

    /// Queues `frame` for every subscriber but the socket whose id is `except`. Returns how many
    /// sockets it was queued for, and the excluded socket if it is subscribed here.
    pub fn send_to_all(&self, frame: &Arc<Frame>, except: Option<&str>) -> (usize, Option<&Arc<Socket>>) {
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

    /// Adds one socket of `user_id` to the roster (the user's first brings their `info`).
    pub fn join(&mut self, user_id: String, info: Value) {
        self.members.entry(user_id).and_modify(|member| member.sockets += 1).or_insert(Member { info, sockets: 1 });
    }

    /// Removes one socket of `user_id` from the roster; true if it was the user's last (they left).
    pub fn leave(&mut self, user_id: &str) -> bool {
        let Entry::Occupied(mut member) = self.members.entry(user_id.to_owned()) else { return false };
        member.get_mut().sockets -= 1;
        if member.get().sockets == 0 {
            member.remove();
            return true;
        }
        false
    }

    /// Tells the waiters once nothing they wait for is left.
    pub fn wake_waiters_if_settled(&mut self) {
        if !self.waiters.is_empty() && (self.in_flight == 0 || matches!(self.head, Head::Known(_))) {
            for waiter in self.waiters.drain(..) {
                let _ = waiter.send(()); // a reader that gave up is fine
            }
        }
    }
}

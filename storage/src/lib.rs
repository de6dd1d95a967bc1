//! Reprise's durable per-channel event log: the [`EventLog`] trait the server talks to, the embedded
//! [`SledLog`] backend, the [`RedisLog`] backend a cluster of nodes shares, and the [`conformance`]
//! suite every backend must pass.
//!
//! Each channel (scoped by app, see [`LogKey`]) has its own append-only sequence of events. An event's
//! [`EventId`] carries its append time and its per-channel sequence number (1, 2, 3, ...), so ids
//! only grow within a channel, even across restarts and when the wall clock steps back. Compaction
//! removes a channel's oldest events; the log remembers the highest id it removed
//! (`compacted_through`) so a reader resuming from an old cursor learns that it cannot be fully
//! recovered instead of silently missing events.
//!
//! Durability: an append is visible to readers as soon as it returns, and survives a crash once a
//! later [`EventLog::flush`] has returned. A log whose files were damaged so that flushed appends
//! are missing refuses to open ([`StorageError::DataLoss`]) instead of serving a shorter history.

mod blob_sync;
mod codec;
pub mod conformance;
mod durable_flush;
mod error;
pub mod faulty;
#[doc(hidden)]
pub mod fuzzing;
pub mod private_redis;
mod redis_log;
mod sled_log;
mod watermark;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

pub use durable_flush::DurableFlush;
pub use error::StorageError;
pub use redis_log::{BusEvent, RedisLog, parse_bus_message};
pub use reprise_api::EventId;
pub use sled_log::SledLog;

/// Which log a channel's events go to: channels are scoped by app.
///
/// Neither part may contain a NUL byte (app ids and channel names never do; appends refuse them).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogKey {
    pub app: String,
    pub channel: String,
}

impl LogKey {
    pub fn new(app: impl Into<String>, channel: impl Into<String>) -> Self {
        LogKey { app: app.into(), channel: channel.into() }
    }
}

/// One event to append. Its strings may be borrowed: the publisher keeps the published event
/// to build the subscribers' frame after the append, so the log copies the payload once, into
/// its record, instead of the publisher copying it into the event first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent<'a> {
    pub key: LogKey,
    pub event: Cow<'a, str>,
    pub data: Cow<'a, str>,
    /// The sender of a client event on a presence channel (Pusher's `user_id` field), kept so
    /// that a replay gives it back as live delivery did.
    pub user_id: Option<Cow<'a, str>>,
}

/// One event read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: EventId,
    pub event: String,
    pub data: String,
    pub user_id: Option<String>,
}

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cursor {
    /// Before the channel's first event.
    Oldest,
    /// Right after this id (the last event the reader has seen).
    After(EventId),
    /// At the first event appended at or after this instant (ms since the Unix epoch).
    FromTime { timestamp_ms: u64 },
}

/// What a [`EventLog::read`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOutcome {
    /// At most `limit` events after the cursor, ascending by id.
    pub events: Vec<StoredEvent>,
    /// True when nothing that came after the cursor has been removed from the log, i.e. the events
    /// returned plus the ones after them (up to head) are *every* event after the cursor.
    pub recovered: bool,
    /// The channel's latest id (also after its events were compacted away); None if never appended
    /// to. No event returned is above it, so it is a consistent snapshot for subscribe-then-read.
    pub head: Option<EventId>,
}

/// Where a channel stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelHead {
    /// The channel's latest id; None if never appended to.
    pub head: Option<EventId>,
    /// The highest id ever removed by compaction; every event up to it is gone.
    pub compacted_through: Option<EventId>,
}

/// Which events a compaction removes: an event goes if ANY given rule matches it. All `None`
/// removes nothing.
///
/// Within a channel, ids, times and sequence numbers grow together, so each rule (and so their union)
/// removes a prefix of the channel: compaction never punches holes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactRule {
    /// Remove all but the newest N events of the channel.
    pub keep_last: Option<u64>,
    /// Remove events appended before this absolute instant (ms since the Unix epoch; the caller
    /// computes `now - max_age`).
    pub older_than_ms: Option<u64>,
    /// Remove events whose id is below this one.
    pub before: Option<EventId>,
}

impl CompactRule {
    /// True when no rule is set, so the compaction removes nothing.
    pub fn is_empty(&self) -> bool {
        self.keep_last.is_none() && self.older_than_ms.is_none() && self.before.is_none()
    }
}

/// Size of the whole log, for operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Channels ever appended to (also those whose events were all compacted away).
    pub channels: u64,
    /// Events currently held.
    pub events: u64,
    pub size_on_disk_bytes: u64,
}

/// What was found missing when a log was opened: it holds fewer appends than had been made
/// durable. The log cannot tell which channels lost events: only how many, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataLoss {
    /// Appends the log still has a record of.
    pub found_appends: u64,
    /// The time of the latest id among them (ms since the Unix epoch; 0 if none).
    pub found_through_ms: u64,
    /// Appends that had been made durable, from the watermark; None when the watermark itself is
    /// damaged, so how many are missing is unknown.
    pub durable_appends: Option<u64>,
    /// The time of the latest id made durable, from the watermark (0 if unknown).
    pub durable_through_ms: u64,
}

impl fmt::Display for DataLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let found = format_ms(self.found_through_ms);
        match self.durable_appends {
            Some(durable) => write!(
                f,
                "the event log lost acknowledged events: it holds {} appends (the last at {found}) but {durable} \
                 had been made durable (the last at {}), so at least {} events appended after {found} are \
                 missing, channel heads may have gone back, and the ids of those events would be handed out again",
                self.found_appends,
                format_ms(self.durable_through_ms),
                durable.saturating_sub(self.found_appends),
            ),
            None => write!(
                f,
                "the event log's watermark file is damaged, so it cannot tell whether acknowledged events are \
                 missing; the log holds {} appends (the last at {found})",
                self.found_appends,
            ),
        }
    }
}

/// An instant in ms since the Unix epoch as RFC 3339, for messages to operators.
fn format_ms(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|instant| instant.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms after the Unix epoch"))
}

/// Where append times come from: milliseconds since the Unix epoch.
///
/// Injected so tests (and the conformance suite) can step the clock, also backwards.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock, in milliseconds since the Unix epoch.
pub fn system_clock() -> Clock {
    Arc::new(now_ms)
}

/// Milliseconds since the Unix epoch; 0 for a clock set before 1970.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

/// The durable per-channel event log. Every backend passes [`conformance::run_all`].
pub trait EventLog: Send + Sync + 'static {
    /// Appends events in the given order (they may name several channels) and returns their ids in
    /// the same order.
    ///
    /// Each id is strictly greater than every earlier id of its channel, also across restarts and
    /// when the wall clock steps back: timestamp = max(now, the channel head's timestamp), sequence
    /// = the head's sequence + 1. The whole call is atomic. Readers see the events once it returns;
    /// they are durable after the next [`flush`](EventLog::flush). Safe to call concurrently.
    fn append(&self, events: &[NewEvent]) -> Result<Vec<EventId>, StorageError>;

    /// Makes every append that returned before this call durable (fsync). Blocking.
    fn flush(&self) -> Result<(), StorageError>;

    /// Reads up to `limit` events after `cursor` on one channel, ascending, none above the returned
    /// head.
    ///
    /// `recovered` is true when every event after the cursor is still in the log:
    /// - `Oldest`: nothing was ever compacted away.
    /// - `After(id)`: the channel has a head, `id` is not beyond it, `id` is the channel's own (the
    ///   log holds no other event with its sequence number) and compaction removed nothing after
    ///   it. A cursor equal to `compacted_through` is recovered: nothing after it was removed.
    /// - `FromTime { t }`: compaction removed nothing appended at or after `t`.
    ///
    /// A backend that was opened accepting a data loss (see [`SledLog::open_accepting_data_loss`])
    /// also reports `Oldest`, and every cursor at or before the time the loss may reach, as not
    /// recovered, on every channel: it cannot tell which channels lost events.
    fn read(&self, key: &LogKey, cursor: Cursor, limit: usize) -> Result<ReadOutcome, StorageError>;

    /// Where the channel stands; the default (all `None`) if it was never appended to.
    fn head(&self, key: &LogKey) -> Result<ChannelHead, StorageError>;

    /// Removes the channel's events that match `rule`, raises `compacted_through`, and returns how
    /// many events it removed. The head is kept even when every event goes. Durable on the next
    /// [`flush`](EventLog::flush).
    fn compact(&self, key: &LogKey, rule: CompactRule) -> Result<u64, StorageError>;

    /// Every channel of `app` that has ever been appended to (for app-wide compaction and
    /// retention), in key order.
    fn channels(&self, app: &str) -> Result<Vec<LogKey>, StorageError>;

    /// Size of the whole log. The embedded log keeps running counts (cheap enough for every
    /// metrics scrape); the Redis log scans its keys (seconds on a big one): poll it sparingly.
    fn stats(&self) -> Result<LogStats, StorageError>;

    /// Writes a channel's events with the ids they already have: restoring a backup, or moving a
    /// node's history to another backend. Atomic: all of it is written, or nothing.
    ///
    /// `compacted_through` (from a backup of a compacted channel) may only begin a channel that
    /// has no head yet: it becomes the channel's head and its compaction mark, so old cursors
    /// read as they did before. The events must continue the channel without a gap or a reused
    /// id: the first one has sequence 1 on an empty channel, or the head's sequence + 1 and a
    /// greater id; each next one the sequence after it and a greater id. Anything else fails with
    /// [`StorageError::ImportRefused`] and writes nothing. Durable on the next
    /// [`flush`](EventLog::flush); appends afterwards continue after the imported head.
    fn import(
        &self,
        key: &LogKey,
        compacted_through: Option<EventId>,
        events: &[StoredEvent],
    ) -> Result<(), StorageError>;
}

/// Checks an import against a channel's `head` and `compacted` mark (see [`EventLog::import`]);
/// returns the channel's head and mark after it, or [`StorageError::ImportRefused`] saying what
/// is wrong. The rule is the trait's, so every backend checks with it before writing anything.
pub(crate) fn check_import(
    key: &LogKey,
    head: Option<EventId>,
    compacted: Option<EventId>,
    mark: Option<EventId>,
    events: &[StoredEvent],
) -> Result<(Option<EventId>, Option<EventId>), StorageError> {
    check_import_rule(head, compacted, mark, events)
        .map_err(|problem| StorageError::ImportRefused(format!("{}/{}: {problem}", key.app, key.channel)))
}

fn check_import_rule(
    head: Option<EventId>,
    compacted: Option<EventId>,
    mark: Option<EventId>,
    events: &[StoredEvent],
) -> Result<(Option<EventId>, Option<EventId>), String> {
    let (mut head, compacted) = match (mark, head) {
        (None, head) => (head, compacted),
        (Some(mark), None) if mark.seq() > 0 => (Some(mark), Some(mark)),
        (Some(mark), None) => return Err(format!("compaction mark {mark} has sequence 0")),
        (Some(mark), Some(head)) => {
            return Err(format!("compaction mark {mark} for a channel that already has events (head {head})"));
        }
    };
    for event in events {
        let Some(expected) = head.map_or(Some(1), |head| head.seq().checked_add(1)) else {
            return Err(format!("event {} follows a head with the largest sequence", event.id));
        };
        let id = event.id;
        if id.seq() < expected {
            return Err(format!("event {id} (sequence {}) reuses a sequence the channel already has", id.seq()));
        }
        if id.seq() > expected {
            let after = head.map_or_else(|| "the channel's start".to_owned(), |head| head.to_string());
            return Err(format!("event {id} (sequence {}) leaves a gap after {after}", id.seq()));
        }
        if let Some(previous) = head.filter(|previous| id <= *previous) {
            return Err(format!("event {id} is not after {previous}, the event before it"));
        }
        head = Some(id);
    }
    Ok((head, compacted))
}

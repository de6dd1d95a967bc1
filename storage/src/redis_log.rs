//! `RedisLog`: the shared backend of a cluster, in Redis (a standalone server, or the primary that
//! Sentinel names). Every node appends to and reads from the same per-channel logs, and every
//! append is published on a pub/sub bus in the same atomic step, so each node can fan it out.
//!
//! Redis Cluster is **not** supported: the scripts build their keys from the prefix, which Redis
//! Cluster forbids (keys must be declared and share a slot). Redis 7.0 or later is required (the
//! append script's `#!lua` flags).
//!
//! # Keys (`P` is the prefix)
//! - `P:log:{app}:{channel}`: a stream, one entry per event, id `{seq}-0`; fields `t` (the id's
//!   timestamp, ms), `e` (event name), `d` (data), `u` (user id, only when there is one).
//! - `P:meta:{app}:{channel}`: a hash: `seq` and `ts` (the head), `cseq` and `cts` (the highest id
//!   compaction removed, once there is one). It outlives the events, so the head survives a full
//!   compaction.
//! - `P:channels:{app}`: a set of the channel names ever appended to.
//! - `P:epoch`: set at the first append; `P:lost_at_ms`: when a node found it gone (see below).
//! - `P:bus`: the pub/sub channel (see [`BusEvent`] for the message).
//!
//! Channel names may not contain `:` (Pusher's never do) so that keys are unambiguous.
//!
//! # Appends
//! One script per [`RedisLog::append_announced`] call, whatever the number of events and
//! channels: for each event in order, the channel's sequence + 1, timestamp = max(the node's
//! clock, the head's), `XADD`, then `PUBLISH` on the bus; meta and the channel set last. Redis runs
//! a script alone, so concurrent appenders on any number of nodes get contiguous sequences, one
//! order, and a bus whose messages come in that order. The script validates everything before its
//! first write, and Redis refuses it up front when out of memory, so a failed append writes
//! nothing. The node's clock is an argument: nodes whose clocks disagree still give each channel
//! rising ids, since the script keeps the head's time when the node's is behind.
//!
//! An append that times out (see [`RedisLog::DEFAULT_TIMEOUT`]) may still have happened: Redis may
//! have run the script and lost only its answer. It is reported as failed (the publish is not
//! acknowledged); a retry appends the events again under new ids.
//!
//! # Durability: what "acknowledged" means
//! An append returns once Redis ran the script, i.e. once the events are in the primary's memory.
//! They survive a Redis restart only with `appendonly yes`, and are on disk when the append returns
//! only with `appendfsync always` (`everysec`, Redis's default, may lose the last second on a power
//! cut or kernel crash; a killed Redis process loses nothing either way). To survive losing the
//! primary itself, configure [`RedisLog::with_wait_replicas`]: [`EventLog::flush`] (which the
//! server calls before it acknowledges a publish with durability "sync") then runs `WAIT`, and
//! fails when fewer replicas than asked acknowledged in time. Without it, a failover to a replica
//! that had not yet received the last appends hands their sequences out again.
//!
//! # Redis coming back empty
//! Each `RedisLog` remembers the epoch it saw (`P:epoch`). An append that finds it gone (or
//! changed, with no loss recorded) knows Redis lost its data: it records `P:lost_at_ms` and a new
//! epoch, and from then on every channel created without a meta record is seeded: its first
//! sequence is Redis's `TIME` in microseconds (no channel can have appended more than one event per
//! microsecond since it was itself created, so no sequence handed out before comes again), and its
//! compaction mark is set just below it at the time of the loss, so every cursor from before it,
//! the zero cursor and `Oldest` included, reads `recovered: false`. In a new deployment channels
//! start at 1. The limit: a loss is noticed only by a node that had seen the old epoch; if every
//! node restarts together with an empty Redis, nothing can tell, so run Redis with persistence.
//!
//! # Idle channels
//! With [`RedisLog::with_idle_ttl`], each append sets that expiry on the channel's stream and meta:
//! a channel idle that long disappears from Redis. Its name stays in `P:channels:{app}` (a few
//! bytes), which is how the next append knows it existed: it is seeded like a lost channel, so no
//! id is reused and old cursors read `recovered: false`. Until then, reads of it return no events,
//! no head, and `recovered: false`. Streams are otherwise bounded by the server's retention
//! (compaction: `XTRIM MINID`).
//!
//! # Threads
//! [`EventLog`] is blocking: each call drives the multiplexed connection with
//! [`Handle::block_on`] on a multi-thread runtime, from the blocking threads the server calls the
//! log on (never from an async task, where `block_on` panics). Every call is bounded by the
//! timeout given to [`RedisLog::connect_with_timeout`].

mod bus;

use std::future::Future;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::runtime::Handle;

pub use bus::{BusEvent, parse_bus_message};

use crate::{
    ChannelHead, Clock, CompactRule, Cursor, EventId, EventLog, LogKey, LogStats, NewEvent, ReadOutcome, StorageError,
    StoredEvent, system_clock,
};

/// `#!lua`: Redis refuses the whole script when out of memory instead of failing at a write.
static APPEND_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(concat!("#!lua\n", include_str!("redis_log/append.lua"))));
/// `no-writes`: reads also run while Redis is out of memory.
static READ_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        "#!lua flags=no-writes\n",
        include_str!("redis_log/lookup.lua"),
        include_str!("redis_log/read.lua")
    ))
});
static IMPORT_SCRIPT: LazyLock<Script> =
    LazyLock::new(|| Script::new(concat!("#!lua\n", include_str!("redis_log/import.lua"))));

static COMPACT_SCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!("#!lua\n", include_str!("redis_log/lookup.lua"), include_str!("redis_log/compact.lua")))
});

/// A read never asks Redis for more entries than this at once, whatever `limit` says (it must fit
/// Redis's COUNT and Lua's exact integers).
const READ_MAX_EVENTS: u64 = 1 << 40;

/// How many keys one `SCAN` step of [`EventLog::stats`] asks for.
const STATS_SCAN_COUNT: u64 = 1000;

/// The read script's reply: how many fixed fields come before the events, and how many per event.
const READ_HEADER_FIELDS: usize = 10;
const READ_EVENT_FIELDS: usize = 5;

/// The event log in Redis, shared by every node of a cluster. Cheap to share behind an `Arc`.
pub struct RedisLog {
    /// Multiplexed: every call, from any thread, shares one connection; it reconnects by itself
    /// after the connection drops (the call that saw it drop fails).
    connection: ConnectionManager,
    /// The runtime that drives `connection` (see the module docs, "Threads").
    handle: Handle,
    prefix: String,
    clock: Clock,
    /// Bounds every call, reconnection included: the publish path answers within it.
    timeout: Duration,
    idle_ttl: Option<Duration>,
    wait: Option<WaitReplicas>,
    /// `P:epoch` as this log last saw it; None before the first append anywhere. A std `Mutex`:
    /// held only to copy a short string, never across a Redis call.
    epoch: Mutex<Option<String>>,
}

/// What [`EventLog::flush`] waits for.
#[derive(Clone, Copy, Debug)]
struct WaitReplicas {
    replicas: u32,
    timeout: Duration,
}

/// The read script's reply, decoded.
struct ReadReply {
    epoch: String,
    lost_at_ms: Option<u64>,
    listed: bool,
    /// None when the channel has no meta (never appended to, or expired).
    head: Option<EventId>,
    compacted_through: Option<EventId>,
    first: Option<EventId>,
    cursor_found: bool,
    events: Vec<StoredEvent>,
}

impl RedisLog {
    /// How long a call waits for Redis unless [`RedisLog::connect_with_timeout`] says otherwise:
    /// long enough for a loaded Redis or a reconnect, short enough that a publish fails well
    /// within an HTTP client's patience.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

    /// Connects to `url` (`redis://[:password@]host:port[/db]`) with [`Self::DEFAULT_TIMEOUT`];
    /// every key starts with `prefix`. Blocking (see the module docs, "Threads").
    pub fn connect(url: &str, prefix: &str, handle: Handle) -> Result<Self, StorageError> {
        Self::connect_with_timeout(url, prefix, handle, Self::DEFAULT_TIMEOUT)
    }

    /// Like [`RedisLog::connect`], with `timeout` for connecting and for every later call.
    pub fn connect_with_timeout(
        url: &str,
        prefix: &str,
        handle: Handle,
        timeout: Duration,
    ) -> Result<Self, StorageError> {
        let client =
            redis::Client::open(url).map_err(|error| StorageError::Backend(format!("invalid redis url: {error}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnection is retried in the background; a call waits for it at most `timeout`.
            .set_max_delay(timeout);
        let connect = async move {
            let mut connection = ConnectionManager::new_with_config(client, config).await?;
            let epoch: Option<String> = redis::cmd("GET").arg(epoch_key(prefix)).query_async(&mut connection).await?;
            redis::RedisResult::Ok((connection, epoch))
        };
        let (connection, epoch) = bounded(&handle, timeout, "connect", connect)?;
        Ok(RedisLog {
            connection,
            handle,
            prefix: prefix.to_owned(),
            clock: system_clock(),
            timeout,
            idle_ttl: None,
            wait: None,
            epoch: Mutex::new(epoch),
        })
    }

    /// Replaces the wall clock that stamps appends (tests step it, also backwards).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Channels not appended to for `ttl` expire (see the module docs, "Idle channels").
    /// Zero means never, as does not calling this.
    #[must_use]
    pub fn with_idle_ttl(mut self, ttl: Duration) -> Self {
        self.idle_ttl = (!ttl.is_zero()).then_some(ttl);
        self
    }

    /// Makes [`EventLog::flush`] wait until `replicas` replicas have every append made so far, for
    /// at most `timeout` (kept below the call timeout, which would cut the wait short), and fail
    /// when fewer did. While it waits, other calls queue behind it on the shared connection.
    #[must_use]
    pub fn with_wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        let timeout = timeout.min(self.timeout.mul_f64(0.75));
        self.wait = Some(WaitReplicas { replicas, timeout });
        self
    }

    /// A clone of the shared connection, for the cluster's own commands.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pub/sub channel every append is published on.
    pub fn bus_channel(&self) -> String {
        format!("{}:bus", self.prefix)
    }

    /// Like [`EventLog::append`], and each event's bus message names the socket it must not be
    /// delivered to: `except_sockets[i]` for `events[i]` (missing entries mean none).
    pub fn append_announced(
        &self,
        events: &[NewEvent],
        except_sockets: &[Option<String>],
    ) -> Result<Vec<EventId>, StorageError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        for event in events {
            check_key(&event.key)?;
        }
        let now_ms = (self.clock)().min(EventId::MAX_TIMESTAMP_MS);
        let ttl_ms = self.idle_ttl.map_or(0, |ttl| ttl.as_millis());
        let mut invocation = APPEND_SCRIPT.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(now_ms.to_string())
            .arg(self.known_epoch().unwrap_or_default())
            .arg(ttl_ms.to_string())
            .arg(events.len().to_string());
        for (index, event) in events.iter().enumerate() {
            let except = except_sockets.get(index).and_then(Option::as_deref);
            invocation
                .arg(&event.key.app)
                .arg(&event.key.channel)
                .arg(&*event.event)
                .arg(&*event.data)
                .arg(flagged(event.user_id.as_deref()))
                .arg(flagged(except));
        }
        let mut connection = self.connection.clone();
        let reply: Vec<String> = self.call("append", invocation.invoke_async(&mut connection))?;
        let Some((epoch, ids)) = reply.split_first() else {
            return Err(StorageError::Corrupt("the append script returned nothing".into()));
        };
        if ids.len() != 2 * events.len() {
            return Err(StorageError::Corrupt(format!("the append script returned {} values", reply.len())));
        }
        self.remember_epoch(epoch, true);
        ids.chunks_exact(2).map(|pair| Ok(EventId::new(number(&pair[1])?, number(&pair[0])?))).collect()
    }

    fn known_epoch(&self) -> Option<String> {
        self.epoch.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records the epoch Redis holds. An append's answer always wins; a read's only teaches a log
    /// that had seen none (a read must not make a log forget the epoch whose loss it would detect).
    fn remember_epoch(&self, epoch: &str, from_append: bool) {
        if epoch.is_empty() {
            return;
        }
        let mut known = self.epoch.lock().unwrap_or_else(PoisonError::into_inner);
        if from_append || known.is_none() {
            *known = Some(epoch.to_owned());
        }
    }

    /// Runs one Redis call within the timeout.
    fn call<T>(&self, what: &str, future: impl Future<Output = redis::RedisResult<T>>) -> Result<T, StorageError> {
        bounded(&self.handle, self.timeout, what, future)
    }

    /// Runs one command within the timeout.
    fn query<T: redis::FromRedisValue>(&self, what: &str, command: &redis::Cmd) -> Result<T, StorageError> {
        let mut connection = self.connection.clone();
        self.call(what, command.query_async(&mut connection))
    }

    fn key(&self, kind: &str, key: &LogKey) -> String {
        format!("{}:{kind}:{}:{}", self.prefix, key.app, key.channel)
    }

    fn run_read(&self, key: &LogKey, cursor: Cursor, limit: usize) -> Result<ReadReply, StorageError> {
        // The script looks for the first event whose (time, seq) is above a bound.
        let (mode, bound_ts, bound_seq, own_id) = match cursor {
            Cursor::Oldest => ("oldest", 0, "0".to_owned(), None),
            Cursor::After(id) => {
                let own_id = (has_our_shape(id) && id.seq() > 0).then_some(id);
                ("above", id.timestamp_ms(), seq_bound(id), own_id)
            }
            // Every event has a sequence above 0, so "above (t, 0)" is "at or after t".
            Cursor::FromTime { timestamp_ms } => ("above", timestamp_ms, "0".to_owned(), None),
        };
        let mut invocation = READ_SCRIPT.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(&key.app)
            .arg(&key.channel)
            .arg(mode)
            .arg(bound_ts.to_string())
            .arg(bound_seq)
            .arg(own_id.map(|id| format!("{}-0", id.seq())).unwrap_or_default())
            .arg(own_id.map(|id| id.timestamp_ms().to_string()).unwrap_or_default())
            .arg(u64::try_from(limit).unwrap_or(u64::MAX).min(READ_MAX_EVENTS).to_string());
        let mut connection = self.connection.clone();
        let reply: Vec<String> = self.call("read", invocation.invoke_async(&mut connection))?;
        ReadReply::decode(&reply)
    }
}

impl ReadReply {
    fn decode(reply: &[String]) -> Result<Self, StorageError> {
        let Some((header, events)) = reply.split_at_checked(READ_HEADER_FIELDS) else {
            return Err(StorageError::Corrupt(format!("the read script returned {} values", reply.len())));
        };
        if events.len() % READ_EVENT_FIELDS != 0 {
            return Err(StorageError::Corrupt(format!("the read script returned {} values", reply.len())));
        }
        let events = events
            .chunks_exact(READ_EVENT_FIELDS)
            .map(|fields| {
                Ok(StoredEvent {
                    id: EventId::new(number(&fields[1])?, number(&fields[0])?),
                    event: fields[2].clone(),
                    data: fields[3].clone(),
                    user_id: fields[4].strip_prefix('+').map(str::to_owned),
                })
            })
            .collect::<Result<_, StorageError>>()?;
        Ok(ReadReply {
            epoch: header[0].clone(),
            lost_at_ms: optional_number(&header[1])?,
            listed: header[2] == "1",
            head: optional_id(&header[4], &header[3])?,
            compacted_through: optional_id(&header[6], &header[5])?,
            first: optional_id(&header[8], &header[7])?,
            cursor_found: header[9] == "1",
            events,
        })
    }
}

impl EventLog for RedisLog {
    fn append(&self, events: &[NewEvent]) -> Result<Vec<EventId>, StorageError> {
        self.append_announced(events, &[])
    }

    fn import(
        &self,
        key: &LogKey,
        compacted_through: Option<EventId>,
        events: &[StoredEvent],
    ) -> Result<(), StorageError> {
        check_key(key)?;
        if compacted_through.is_none() && events.is_empty() {
            return Ok(());
        }
        let existing = self.head(key)?;
        crate::check_import(key, existing.head, existing.compacted_through, compacted_through, events)?;
        let mut invocation = IMPORT_SCRIPT.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(&key.app)
            .arg(&key.channel)
            .arg(existing.head.map(|head| head.seq().to_string()).unwrap_or_default())
            .arg(compacted_through.map(|mark| mark.seq().to_string()).unwrap_or_default())
            .arg(compacted_through.map(|mark| mark.timestamp_ms().to_string()).unwrap_or_default())
            .arg(events.len().to_string());
        for event in events {
            invocation
                .arg(event.id.seq().to_string())
                .arg(event.id.timestamp_ms().to_string())
                .arg(&*event.event)
                .arg(&*event.data)
                .arg(flagged(event.user_id.as_deref()));
        }
        let mut connection = self.connection.clone();
        let _: u8 = self.call("import", invocation.invoke_async(&mut connection))?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        let Some(WaitReplicas { replicas, timeout }) = self.wait else {
            // Redis's own settings decide durability (see the module docs).
            return Ok(());
        };
        let acknowledged: u64 =
            self.query("WAIT", redis::cmd("WAIT").arg(replicas).arg(timeout.as_millis().to_string()))?;
        if acknowledged < u64::from(replicas) {
            return Err(StorageError::Backend(format!(
                "only {acknowledged} of {replicas} redis replicas acknowledged the appends within {} ms",
                timeout.as_millis()
            )));
        }
        Ok(())
    }

    fn read(&self, key: &LogKey, cursor: Cursor, limit: usize) -> Result<ReadOutcome, StorageError> {
        check_key(key)?;
        let reply = self.run_read(key, cursor, limit)?;
        self.remember_epoch(&reply.epoch, false);
        let Some(head) = reply.head else {
            // No meta. If the channel is listed, it existed and expired: its events are gone.
            // Otherwise it was never appended to, or Redis lost it: after a loss (recorded, or
            // seen here as an epoch that changed under this log) it may have had events.
            let lost_through_ms = match (reply.lost_at_ms, self.known_epoch()) {
                (Some(lost_at_ms), _) => Some(lost_at_ms),
                (None, Some(known)) if known != reply.epoch => Some(u64::MAX),
                (None, _) => None,
            };
            let lost_at = |timestamp_ms: u64| lost_through_ms.is_some_and(|through| timestamp_ms <= through);
            let recovered = !reply.listed
                && match cursor {
                    Cursor::Oldest => lost_through_ms.is_none(),
                    Cursor::After(id) => id.seq() == 0 && !lost_at(id.timestamp_ms()),
                    Cursor::FromTime { timestamp_ms } => !lost_at(timestamp_ms),
                };
            return Ok(ReadOutcome { events: Vec::new(), recovered, head: None });
        };
        // A channel with meta was created after any loss, and seeded then: its compaction mark
        // covers what came before, so the rules are those of the sled backend without a loss.
        let compacted = reply.compacted_through;
        let recovered = match cursor {
            Cursor::Oldest => compacted.is_none(),
            Cursor::FromTime { timestamp_ms } => {
                compacted.is_none_or(|compacted| compacted.timestamp_ms() < timestamp_ms)
            }
            Cursor::After(id) => {
                let seq = id.seq();
                if seq > head.seq() {
                    // A future id: not from this channel (or from before Redis lost events).
                    false
                } else if seq == 0 {
                    // "Before the first event", as long as it sorts below the first event.
                    compacted.is_none() && reply.first.is_none_or(|first| first > id)
                } else {
                    match compacted {
                        Some(compacted) if seq < compacted.seq() => false,
                        // The mark itself is gone, but nothing after it was removed.
                        Some(compacted) if seq == compacted.seq() => id == compacted,
                        // Not compacted, so the event with this seq is in the log: the cursor is
                        // ours only if it is that event.
                        _ => reply.cursor_found,
                    }
                }
            }
        };
        Ok(ReadOutcome { events: reply.events, recovered, head: Some(head) })
    }

    fn head(&self, key: &LogKey) -> Result<ChannelHead, StorageError> {
        check_key(key)?;
        let meta: Vec<Option<String>> =
            self.query("head", redis::cmd("HMGET").arg(self.key("meta", key)).arg(&["seq", "ts", "cseq", "cts"]))?;
        let field = |index: usize| meta.get(index).cloned().flatten().unwrap_or_default();
        Ok(ChannelHead {
            head: optional_id(&field(1), &field(0))?,
            compacted_through: optional_id(&field(3), &field(2))?,
        })
    }

    fn compact(&self, key: &LogKey, rule: CompactRule) -> Result<u64, StorageError> {
        check_key(key)?;
        if rule.is_empty() {
            return Ok(0);
        }
        let text = |value: Option<u64>| value.map(|value| value.to_string()).unwrap_or_default();
        let mut invocation = COMPACT_SCRIPT.prepare_invoke();
        invocation
            .arg(&self.prefix)
            .arg(&key.app)
            .arg(&key.channel)
            .arg(text(rule.keep_last))
            .arg(text(rule.older_than_ms))
            .arg(text(rule.before.map(EventId::timestamp_ms)))
            .arg(rule.before.map(seq_bound).unwrap_or_default());
        let mut connection = self.connection.clone();
        let removed: String = self.call("compact", invocation.invoke_async(&mut connection))?;
        number(&removed)
    }

    fn channels(&self, app: &str) -> Result<Vec<LogKey>, StorageError> {
        let mut names: Vec<String> =
            self.query("channels", redis::cmd("SMEMBERS").arg(format!("{}:channels:{app}", self.prefix)))?;
        names.sort_unstable();
        Ok(names.into_iter().map(|channel| LogKey::new(app, channel)).collect())
    }

    fn stats(&self) -> Result<LogStats, StorageError> {
        // One pass over this prefix's keys, a page at a time.
        let pattern = format!("{}:*", glob_escape(&self.prefix));
        let mut stats = LogStats::default();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(STATS_SCAN_COUNT);
            let (next, keys): (u64, Vec<String>) = self.query("stats", &scan)?;
            if !keys.is_empty() {
                self.add_to_stats(&keys, &mut stats)?;
            }
            if next == 0 {
                return Ok(stats);
            }
            cursor = next;
        }
    }
}

impl RedisLog {
    /// Adds a page of this prefix's keys to `stats`: the channel sets count channels, the streams
    /// count events, and every key's memory adds up to the size.
    fn add_to_stats(&self, keys: &[String], stats: &mut LogStats) -> Result<(), StorageError> {
        let channels_prefix = format!("{}:channels:", self.prefix);
        let log_prefix = format!("{}:log:", self.prefix);
        let mut pipe = redis::pipe();
        for key in keys {
            let count = if key.starts_with(&channels_prefix) {
                "SCARD"
            } else if key.starts_with(&log_prefix) {
                "XLEN"
            } else {
                "EXISTS" // counts nothing; keeps the replies in pairs
            };
            pipe.cmd(count).arg(key).cmd("MEMORY").arg("USAGE").arg(key);
        }
        let mut connection = self.connection.clone();
        let replies: Vec<Option<u64>> = self.call("stats", pipe.query_async(&mut connection))?;
        for (key, pair) in keys.iter().zip(replies.chunks_exact(2)) {
            let count = pair[0].unwrap_or(0);
            if key.starts_with(&channels_prefix) {
                stats.channels += count;
            } else if key.starts_with(&log_prefix) {
                stats.events += count;
            }
            stats.size_on_disk_bytes += pair[1].unwrap_or(0);
        }
        Ok(())
    }
}

/// Runs `future` on `handle` from a blocking thread, bounded by `timeout`.
fn bounded<T>(
    handle: &Handle,
    timeout: Duration,
    what: &str,
    future: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StorageError> {
    match handle.block_on(async move { tokio::time::timeout(timeout, future).await }) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(redis_error(what, &error)),
        Err(_elapsed) => Err(StorageError::Backend(format!(
            "redis {what}: no answer within {} ms{}",
            timeout.as_millis(),
            if what == "append" { " (the events may have been appended)" } else { "" }
        ))),
    }
}

fn redis_error(what: &str, error: &RedisError) -> StorageError {
    let ambiguous = what == "append" && (error.is_timeout() || error.is_connection_dropped());
    StorageError::Backend(format!(
        "redis {what} failed: {error}{}",
        if ambiguous { " (the events may have been appended)" } else { "" }
    ))
}

/// Refuses what the keys cannot hold unambiguously: NUL (as every backend does) and, in a
/// channel name, `:` (which separates app and channel in a key; Pusher names never have one).
fn check_key(key: &LogKey) -> Result<(), StorageError> {
    if key.app.contains('\0') || key.channel.contains('\0') || key.channel.contains(':') {
        return Err(StorageError::InvalidKey(format!(
            "{:?}/{:?} contains a NUL byte, or a ':' in the channel name",
            key.app, key.channel
        )));
    }
    Ok(())
}

fn epoch_key(prefix: &str) -> String {
    format!("{prefix}:epoch")
}

/// An optional value as the scripts take it: `-` for none, `+` followed by the value.
fn flagged(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| format!("+{value}"))
}

fn number(text: &str) -> Result<u64, StorageError> {
    text.parse().map_err(|_| StorageError::Corrupt(format!("{text:?} is not a sequence or a time")))
}

fn optional_number(text: &str) -> Result<Option<u64>, StorageError> {
    (!text.is_empty()).then(|| number(text)).transpose()
}

/// The id from a time and a sequence as the scripts return them; None when both are empty.
fn optional_id(timestamp_ms: &str, seq: &str) -> Result<Option<EventId>, StorageError> {
    match (optional_number(timestamp_ms)?, optional_number(seq)?) {
        (Some(timestamp_ms), Some(seq)) => Ok(Some(EventId::new(timestamp_ms, seq))),
        (None, None) => Ok(None),
        _ => Err(StorageError::Corrupt(format!("half an id: time {timestamp_ms:?}, sequence {seq:?}"))),
    }
}

/// True when `id` is laid out as ours are: its 16 middle bits are zero.
fn has_our_shape(id: EventId) -> bool {
    id == EventId::new(id.timestamp_ms(), id.seq())
}

/// The sequence part of a (time, sequence) bound in the scripts: an id whose middle bits are set
/// sorts after each of ours with its time, so its bound is above every sequence ('inf').
fn seq_bound(id: EventId) -> String {
    if has_our_shape(id) { id.seq().to_string() } else { "inf".to_owned() }
}

/// `prefix` as a SCAN pattern that matches only itself.
fn glob_escape(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_patterns_match_the_prefix_literally() {
        assert_eq!(glob_escape("reprise"), "reprise");
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    /// A ':' in a channel name would let ("a", "b:c") and ("a:b", "c") share keys.
    #[test]
    fn keys_that_would_collide_are_refused() {
        assert!(check_key(&LogKey::new("a:b", "c")).is_ok(), "the app may hold ':'; the channel ends the key");
        for (app, channel) in [("a", "b:c"), ("a\0", "c"), ("a", "c\0")] {
            assert!(matches!(check_key(&LogKey::new(app, channel)), Err(StorageError::InvalidKey(_))));
        }
    }

    #[test]
    fn ids_come_back_whole_or_not_at_all() {
        assert_eq!(optional_id("", "").unwrap(), None);
        assert_eq!(optional_id("5", "1731000000123456").unwrap(), Some(EventId::new(5, 1_731_000_000_123_456)));
        assert!(matches!(optional_id("5", ""), Err(StorageError::Corrupt(_))));
        assert!(matches!(optional_id("1.7e+15", "1"), Err(StorageError::Corrupt(_))));
    }
}

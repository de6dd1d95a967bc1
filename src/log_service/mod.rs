//! The log service: everything the server reads from, or trims off, a channel's log, so that the
//! rules live in one place and routes, connections and background tasks share them.
//!
//! - The *published head* of a channel (what readers may see) and the rule that every read stops
//!   there: events past it are appended but not fanned out, so with sync durability they may not
//!   be on disk yet ([`LogService::published_head`], [`read_published`]).
//! - The replay a subscribe with `since` gets, and whether it is `recovered` ([`replay`]).
//! - A cache channel's last event ([`LogService::last_event`]).
//! - Compaction and retention ([`compaction`]).
//!
//! Storage calls block (sled does IO), so each runs on the blocking pool, never on a runtime
//! worker and never under a hub lock. This is also the seam a shared log plugs into.

pub mod compaction;
pub mod replay;

use std::sync::Arc;

use reprise_api::EventId;
use reprise_storage::{Cursor, EventLog, LogKey, ReadOutcome, StorageError, StoredEvent};

use crate::hub::{AppHub, HeadProbe};

pub use self::replay::Replay;

/// Reads and trims the log on behalf of the rest of the server. Cheap to share.
pub struct LogService {
    log: Arc<dyn EventLog>,
    /// Most events a resume replays (`server.replay_cap_events`).
    replay_cap_events: usize,
}

impl LogService {
    pub fn new(log: Arc<dyn EventLog>, replay_cap_events: usize) -> Self {
        LogService { log, replay_cap_events }
    }

    /// The log itself, for the committer (appends) and shutdown (the final flush).
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Runs a storage call on the blocking pool. A call that panicked is a backend failure.
    pub async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn EventLog) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let log = Arc::clone(&self.log);
        match tokio::task::spawn_blocking(move || call(log.as_ref())).await {
            Ok(result) => result,
            Err(error) => Err(StorageError::Backend(format!("a log call did not complete: {error}"))),
        }
    }

    /// The channel's published head: the hub's, or, when the hub does not know it, the log's head
    /// read at a moment when no logged event of the channel was between its append and its
    /// fan-out (so the log's head is the published head).
    pub async fn published_head(&self, hub: &Arc<AppHub>, key: &LogKey) -> Result<Option<EventId>, StorageError> {
        loop {
            match hub.probe_head(&key.channel) {
                HeadProbe::Known(head) => return Ok(head),
                // The fan-out of the events in flight ends the wait (a commit: milliseconds).
                HeadProbe::Wait(fanned_out) => {
                    let _ = fanned_out.await;
                }
                HeadProbe::ReadLog(pin) => {
                    let key = key.clone();
                    let log_head = self.blocking(move |log| log.head(&key)).await?.head;
                    if let Some(head) = pin.settle(log_head) {
                        return Ok(head);
                    }
                }
            }
        }
    }

    /// What a subscribe with `since` (or without) replays, up to `published_head`.
    pub async fn replay(
        &self,
        key: &LogKey,
        since: Option<EventId>,
        published_head: Option<EventId>,
        is_cache: bool,
    ) -> Result<Replay, StorageError> {
        let key = key.clone();
        let cap = self.replay_cap_events;
        self.blocking(move |log| Replay::read(log, &key, since, published_head, cap, is_cache)).await
    }

    /// A page of the channel's log after `cursor`, up to its published head; returns the head too.
    pub async fn history(
        &self,
        hub: &Arc<AppHub>,
        key: &LogKey,
        cursor: Cursor,
        limit: usize,
    ) -> Result<(ReadOutcome, Option<EventId>), StorageError> {
        let head = self.published_head(hub, key).await?;
        let key = key.clone();
        let page = self.blocking(move |log| read_published(log, &key, cursor, limit, head)).await?;
        Ok((page, head))
    }

    /// A cache channel's last event: the event at its published head, if the log still holds it.
    pub async fn last_event(&self, hub: &Arc<AppHub>, key: &LogKey) -> Result<Option<StoredEvent>, StorageError> {
        let Some(head) = self.published_head(hub, key).await? else { return Ok(None) };
        let key = key.clone();
        self.blocking(move |log| last_event(log, &key, head)).await
    }
}

/// Reads up to `limit` events after `cursor`, leaving out any past `published_head`: the one rule
/// every reader follows (they are appended but not fanned out, and may not be durable yet).
pub fn read_published(
    log: &dyn EventLog,
    key: &LogKey,
    cursor: Cursor,
    limit: usize,
    published_head: Option<EventId>,
) -> Result<ReadOutcome, StorageError> {
    let mut outcome = log.read(key, cursor, limit)?;
    let up_to = published_head.map_or(0, EventId::seq);
    outcome.events.retain(|event| event.id.seq() <= up_to);
    Ok(outcome)
}

/// The event at `head`, if the log still holds it (compaction may have removed it).
///
/// Reading it from the log (rather than remembering the last frame fanned out) keeps a cache
/// channel's last event consistent with the replay watermark of a subscribe that races a publish,
/// and lets it survive a restart.
pub fn last_event(log: &dyn EventLog, key: &LogKey, head: EventId) -> Result<Option<StoredEvent>, StorageError> {
    // A cursor just below the head: same time, previous sequence. It sorts after every earlier
    // event of the channel (their time is at most the head's, their sequence lower) and is not
    // itself an event, so the read returns exactly the head.
    let below_head = EventId::new(head.timestamp_ms(), head.seq().saturating_sub(1));
    let outcome = log.read(key, Cursor::After(below_head), 1)?;
    Ok(outcome.events.into_iter().next().filter(|event| event.id == head))
}

#[cfg(test)]
mod tests {
    use reprise_storage::{CompactRule, NewEvent, SledLog};

    use super::*;

    pub(super) fn append(log: &dyn EventLog, key: &LogKey, data: &str) -> EventId {
        let event = NewEvent { key: key.clone(), event: "e".into(), data: data.into(), user_id: None };
        log.append(&[event]).unwrap()[0]
    }

    #[test]
    fn the_last_event_is_the_head_until_compacted() {
        let log = SledLog::open_temporary().unwrap();
        let key = LogKey::new("a", "cache-c");
        append(&log, &key, "1");
        append(&log, &key, "2");
        let head = append(&log, &key, "3");
        assert_eq!(last_event(&log, &key, head).unwrap().unwrap().data, "3");
        log.compact(&key, CompactRule { keep_last: Some(0), ..CompactRule::default() }).unwrap();
        assert_eq!(last_event(&log, &key, head).unwrap(), None);
    }

    /// History and replay never show an event past the published head.
    #[test]
    fn reads_stop_at_the_published_head() {
        let log = SledLog::open_temporary().unwrap();
        let key = LogKey::new("a", "c");
        let first = append(&log, &key, "1");
        append(&log, &key, "2"); // appended, not fanned out yet
        let page = read_published(&log, &key, Cursor::Oldest, 10, Some(first)).unwrap();
        assert_eq!(page.events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![first]);
        assert!(read_published(&log, &key, Cursor::Oldest, 10, None).unwrap().events.is_empty());
    }

    /// A cold channel's head comes from the log, read off the runtime, and is then kept by the hub.
    #[tokio::test]
    async fn a_cold_head_is_read_from_the_log() {
        let log: Arc<dyn EventLog> = Arc::new(SledLog::open_temporary().unwrap());
        let key = LogKey::new("a", "c");
        let head = append(log.as_ref(), &key, "1");
        let service = LogService::new(Arc::clone(&log), 10);
        let hub = Arc::new(AppHub::default());
        assert_eq!(service.published_head(&hub, &key).await.unwrap(), Some(head));
        let untouched = LogKey::new("a", "never");
        assert_eq!(service.published_head(&hub, &untouched).await.unwrap(), None);
    }
}

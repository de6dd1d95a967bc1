//! The replay a subscribe gets: the events after `since` up to the published head, or an honest
//! "not recovered" when the log no longer holds all of them (compacted, a foreign or future
//! cursor, or more than the cap).

use reprise_api::EventId;
use reprise_storage::{Cursor, EventLog, LogKey, StorageError, StoredEvent};
use serde_json::{Value, json};

use super::{last_event, read_published};

/// What a subscribe replays and reports.
#[derive(Debug)]
pub struct Replay {
    pub head: Option<EventId>,
    pub recovered: bool,
    pub events: Vec<StoredEvent>,
    /// Live events at or below this sequence were already sent (or predate the subscription).
    pub watermark: Option<u64>,
    /// On cache channels that were not resumed: the event at the head, if still logged.
    pub last: Option<StoredEvent>,
}

impl Replay {
    /// `published_head` is where live delivery to this socket starts: the replay goes up to it
    /// and not beyond (events past it are not fanned out yet, so with sync durability they may
    /// not be on disk yet either; they arrive live).
    pub fn read(
        log: &dyn EventLog,
        key: &LogKey,
        since: Option<EventId>,
        published_head: Option<EventId>,
        cap: usize,
        is_cache: bool,
    ) -> Result<Replay, StorageError> {
        // Not resumed (fresh, or not recoverable): the client starts at the published head, and
        // a cache channel hands it the head event.
        let from_head = || -> Result<Replay, StorageError> {
            let last = match published_head {
                Some(head) if is_cache => last_event(log, key, head)?,
                _ => None,
            };
            let watermark = published_head.map(EventId::seq);
            Ok(Replay { head: published_head, recovered: false, events: Vec::new(), watermark, last })
        };
        let Some(since) = since else { return from_head() };
        let Some(head) = published_head else {
            // Nothing is published here: the log says whether the cursor missed anything (the
            // zero cursor, "before the first event", did not; unless the log accepted a loss
            // that may have taken this channel's events with it).
            let mut replay = from_head()?;
            replay.recovered = log.read(key, Cursor::After(since), 0)?.recovered;
            return Ok(replay);
        };
        if since.seq() > head.seq() {
            return from_head();
        }
        // One more than the cap tells "more than the cap" apart from "exactly the cap".
        let outcome = read_published(log, key, Cursor::After(since), cap.saturating_add(1), published_head)?;
        if !outcome.recovered || outcome.events.len() > cap {
            return from_head();
        }
        let events = outcome.events;
        let watermark = Some(events.last().map_or(since.seq(), |e| e.id.seq()));
        Ok(Replay { head: published_head, recovered: true, events, watermark, last: None })
    }

    /// The `replay` block of `subscription_succeeded`.
    pub fn block(&self, resumed: bool) -> Value {
        if resumed {
            json!({ "head": self.head, "recovered": self.recovered, "count": self.events.len() })
        } else {
            json!({ "head": self.head })
        }
    }
}

#[cfg(test)]
mod tests {
    use reprise_storage::{CompactRule, SledLog};

    use super::*;
    use crate::log_service::tests::append;

    /// A log with `n` events on one channel; returns their ids.
    fn log_with(n: usize) -> (SledLog, LogKey, Vec<EventId>) {
        let log = SledLog::open_temporary().unwrap();
        let key = LogKey::new("app", "orders");
        let ids = (0..n).map(|i| append(&log, &key, &i.to_string())).collect();
        (log, key, ids)
    }

    fn seqs(replay: &Replay) -> Vec<u64> {
        replay.events.iter().map(|e| e.id.seq()).collect()
    }

    #[test]
    fn a_resume_gets_what_came_after_its_cursor_up_to_the_head() {
        let (log, key, ids) = log_with(5);
        let replay = Replay::read(&log, &key, Some(ids[1]), Some(ids[3]), 10, false).unwrap();
        assert!(replay.recovered);
        assert_eq!(seqs(&replay), vec![3, 4], "event 5 is past the published head: it arrives live");
        assert_eq!(replay.watermark, Some(4));
        assert_eq!(replay.block(true), json!({"head": ids[3], "recovered": true, "count": 2}));
    }

    #[test]
    fn a_resume_at_the_head_is_recovered_with_nothing_to_send() {
        let (log, key, ids) = log_with(3);
        let replay = Replay::read(&log, &key, Some(ids[2]), Some(ids[2]), 10, false).unwrap();
        assert!(replay.recovered && replay.events.is_empty());
        assert_eq!(replay.watermark, Some(3));
    }

    #[test]
    fn more_than_the_cap_is_not_recovered() {
        let (log, key, ids) = log_with(5);
        let capped = Replay::read(&log, &key, Some(ids[0]), Some(ids[4]), 3, false).unwrap();
        assert!(!capped.recovered && capped.events.is_empty());
        assert_eq!(capped.watermark, Some(5), "it starts live at the head");
        let exactly = Replay::read(&log, &key, Some(ids[0]), Some(ids[4]), 4, false).unwrap();
        assert!(exactly.recovered);
        assert_eq!(seqs(&exactly), vec![2, 3, 4, 5]);
    }

    #[test]
    fn a_compacted_gap_is_not_recovered() {
        let (log, key, ids) = log_with(5);
        log.compact(&key, CompactRule { keep_last: Some(2), ..CompactRule::default() }).unwrap();
        let replay = Replay::read(&log, &key, Some(ids[0]), Some(ids[4]), 10, false).unwrap();
        assert!(!replay.recovered && replay.events.is_empty());
        let after_the_cut = Replay::read(&log, &key, Some(ids[2]), Some(ids[4]), 10, false).unwrap();
        assert!(after_the_cut.recovered, "nothing after the compaction mark was removed");
    }

    #[test]
    fn future_and_foreign_cursors_are_not_recovered() {
        let (log, key, ids) = log_with(3);
        let future = EventId::new(ids[2].timestamp_ms(), 99);
        assert!(!Replay::read(&log, &key, Some(future), Some(ids[2]), 10, false).unwrap().recovered);
        let foreign = EventId::new(ids[1].timestamp_ms() + 1, 2); // sequence 2, not this channel's id
        assert!(!Replay::read(&log, &key, Some(foreign), Some(ids[2]), 10, false).unwrap().recovered);
    }

    #[test]
    fn an_empty_channel_recovers_only_the_zero_cursor() {
        let log = SledLog::open_temporary().unwrap();
        let key = LogKey::new("app", "empty");
        let zero = EventId::new(0, 0);
        assert!(Replay::read(&log, &key, Some(zero), None, 10, false).unwrap().recovered);
        assert!(!Replay::read(&log, &key, Some(EventId::new(5, 1)), None, 10, false).unwrap().recovered);
    }

    #[test]
    fn a_fresh_cache_subscriber_gets_the_head_event() {
        let (log, key, ids) = log_with(3);
        let fresh = Replay::read(&log, &key, None, Some(ids[1]), 10, true).unwrap();
        assert_eq!(fresh.last.as_ref().map(|e| e.id), Some(ids[1]), "the published head, not the log's");
        assert_eq!(fresh.block(false), json!({"head": ids[1]}));
        let resumed = Replay::read(&log, &key, Some(ids[0]), Some(ids[2]), 10, true).unwrap();
        assert!(resumed.recovered && resumed.last.is_none());
    }
}

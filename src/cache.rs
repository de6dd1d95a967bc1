//! Cache channels: their "last event" is the head of their log. Reading it from the log (rather
//! than remembering the last frame fanned out) keeps it consistent with the replay watermark of a
//! subscribe that races a publish, and lets it survive a restart.

use reprise_api::EventId;
use reprise_storage::{Cursor, EventLog, LogKey, StorageError, StoredEvent};

/// The event at `head`, if the log still holds it (compaction may have removed it).
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

    fn append(log: &SledLog, key: &LogKey, data: &str) -> EventId {
        let event = NewEvent { key: key.clone(), event: "e".into(), data: data.into(), user_id: None };
        log.append(&[event]).unwrap()[0]
    }

    #[test]
    fn the_last_event_is_the_head_until_compacted() {
        let log = SledLog::open_temporary().unwrap();
        let key = LogKey { app: "a".into(), channel: "cache-c".into() };
        append(&log, &key, "1");
        append(&log, &key, "2");
        let head = append(&log, &key, "3");
        assert_eq!(last_event(&log, &key, head).unwrap().unwrap().data, "3");
        log.compact(&key, CompactRule { keep_last: Some(0), ..CompactRule::default() }).unwrap();
        assert_eq!(last_event(&log, &key, head).unwrap(), None);
    }
}

//! `reprise log export`, `import` and `stats`: a log's history as JSON Lines
//! ([`reprise_api::backup`]) and back, with the ids it was logged under.
//!
//! These work offline, on a log the caller opened (the binary opens a stopped server's data
//! directory; sled's lock makes it fail while a server uses it). An export of every channel of an
//! app, imported into an empty directory, gives a log that serves the same ids, heads and
//! compaction marks, so clients resume across a restore as across a restart.

use std::io::{BufRead, Write};

use reprise_api::backup::{BackupItem, BackupLine, BackupLineError};
use reprise_storage::{Cursor, EventId, EventLog, LogKey, StorageError, StoredEvent};

/// Events read from the log per call while exporting, and written per call while importing: big
/// enough that a call's overhead does not matter, small enough to bound memory on any channel.
const BATCH_EVENTS: usize = 1000;

/// Why an export or an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("the event log failed: {0}")]
    Log(#[from] StorageError),
    #[error("line {line}: {source}")]
    Line { line: u64, source: BackupLineError },
    /// The log refused lines `first_line..=last_line` (one batch of one channel); the lines
    /// before them were imported.
    #[error(
        "lines {first_line}-{last_line} refused: {source} (the {imported} events before line {first_line} were imported)"
    )]
    Refused { first_line: u64, last_line: u64, imported: u64, source: StorageError },
    #[error("reading the input failed: {0}")]
    Read(std::io::Error),
    #[error("writing the output failed: {0}")]
    Write(std::io::Error),
}

/// What an export or an import moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub channels: u64,
    pub events: u64,
}

/// Writes every channel of `app` (or only `channel`) to `out`: per channel its compaction mark,
/// if it has one, then its events in id order.
pub fn export(log: &dyn EventLog, app: &str, channel: Option<&str>, out: &mut dyn Write) -> Result<Moved, BackupError> {
    let keys = match channel {
        Some(channel) => vec![LogKey::new(app, channel)],
        None => log.channels(app)?,
    };
    let mut moved = Moved::default();
    for key in keys {
        let head = log.head(&key)?;
        let Some(last) = head.head else { continue }; // never appended to: nothing to restore
        let mut write = |item| {
            let line = BackupLine { app: key.app.clone(), channel: key.channel.clone(), item };
            writeln!(out, "{}", line.to_json()).map_err(BackupError::Write)
        };
        if let Some(through) = head.compacted_through {
            write(BackupItem::Compacted { through })?;
        }
        let mut cursor = Cursor::Oldest;
        loop {
            let page = log.read(&key, cursor, BATCH_EVENTS)?;
            let Some(next) = page.events.last().map(|event| event.id) else { break };
            moved.events += u64::try_from(page.events.len()).expect("usize fits in u64");
            for StoredEvent { id, event, data, user_id } in page.events {
                write(BackupItem::Event { id, event, data, user_id })?;
            }
            if next >= last {
                break; // up to the head as it was when the export began
            }
            cursor = Cursor::After(next);
        }
        moved.channels += 1;
    }
    out.flush().map_err(BackupError::Write)?;
    Ok(moved)
}

/// One channel's lines waiting to be imported together.
struct Pending {
    key: LogKey,
    mark: Option<EventId>,
    events: Vec<StoredEvent>,
    first_line: u64,
    last_line: u64,
}

/// Reads backup lines from `input` and imports them into `log`, in batches of one channel's
/// consecutive lines, then flushes. Stops at the first bad line or refused batch; what was
/// imported before it stays (and is flushed), and the error says how much that was.
pub fn import(log: &dyn EventLog, input: &mut dyn BufRead) -> Result<Moved, BackupError> {
    let mut moved = Moved::default();
    let mut last_key: Option<LogKey> = None;
    let mut pending: Option<Pending> = None;
    let mut line_number = 0;
    let mut text = String::new();
    let result = loop {
        text.clear();
        match input.read_line(&mut text) {
            Ok(0) => break Ok(()),
            Ok(_) => {}
            Err(error) => break Err(BackupError::Read(error)),
        }
        line_number += 1;
        if text.trim().is_empty() {
            continue;
        }
        let line = match BackupLine::parse(text.trim_end_matches(['\n', '\r'])) {
            Ok(line) => line,
            Err(source) => {
                // The lines before it are imported, as the error says.
                let before = pending.take().map_or(Ok(()), |batch| write_batch(log, batch, &mut moved));
                break before.and(Err(BackupError::Line { line: line_number, source }));
            }
        };
        let key = LogKey::new(line.app, line.channel);
        // A mark begins a channel, so it starts a batch of its own; so does a new channel, a full
        // batch, and an event that does not follow the one before it, so that the log refuses
        // a gap or a reused id at the very line that has it.
        let follows = |batch: &Pending| match (&line.item, batch.events.last()) {
            (BackupItem::Event { id, .. }, Some(previous)) => {
                previous.id.seq().checked_add(1) == Some(id.seq()) && *id > previous.id
            }
            _ => true,
        };
        let starts_batch = matches!(line.item, BackupItem::Compacted { .. })
            || pending
                .as_ref()
                .is_none_or(|batch| batch.key != key || batch.events.len() >= BATCH_EVENTS || !follows(batch));
        if starts_batch {
            if let Some(batch) = pending.take()
                && let Err(error) = write_batch(log, batch, &mut moved)
            {
                break Err(error);
            }
            if last_key.as_ref() != Some(&key) {
                moved.channels += 1;
                last_key = Some(key.clone());
            }
            pending =
                Some(Pending { key, mark: None, events: Vec::new(), first_line: line_number, last_line: line_number });
        }
        let batch = pending.as_mut().expect("a batch was started above");
        batch.last_line = line_number;
        match line.item {
            BackupItem::Compacted { through } => batch.mark = Some(through),
            BackupItem::Event { id, event, data, user_id } => {
                batch.events.push(StoredEvent { id, event, data, user_id })
            }
        }
    };
    let result = result.and_then(|()| match pending.take() {
        Some(batch) => write_batch(log, batch, &mut moved),
        None => Ok(()),
    });
    // What was imported is made durable also when a later line stopped the import.
    log.flush()?;
    result.map(|()| moved)
}

fn write_batch(log: &dyn EventLog, batch: Pending, moved: &mut Moved) -> Result<(), BackupError> {
    match log.import(&batch.key, batch.mark, &batch.events) {
        Ok(()) => {
            moved.events += u64::try_from(batch.events.len()).expect("usize fits in u64");
            Ok(())
        }
        Err(source) => Err(BackupError::Refused {
            first_line: batch.first_line,
            last_line: batch.last_line,
            imported: moved.events,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use reprise_storage::{CompactRule, NewEvent, SledLog};

    use super::*;

    fn append(log: &SledLog, channel: &str, data: &str) -> EventId {
        let event = NewEvent {
            key: LogKey::new("app", channel),
            event: "e".into(),
            data: data.into(),
            user_id: Some(format!("user-{data}").into()),
        };
        log.append(&[event]).unwrap()[0]
    }

    fn export_all(log: &SledLog) -> String {
        let mut out = Vec::new();
        export(log, "app", None, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// Many channels, more events than one batch, a compacted channel and one compacted to
    /// nothing: exported and imported, the new log exports the very same text.
    #[test]
    fn export_then_import_reproduces_the_log() {
        let source = SledLog::open_temporary().unwrap();
        for n in 0..(BATCH_EVENTS + 5) {
            append(&source, "busy", &n.to_string());
        }
        for n in 0..5 {
            append(&source, "trimmed", &n.to_string());
            append(&source, "emptied", &n.to_string());
        }
        source
            .compact(&LogKey::new("app", "trimmed"), CompactRule { keep_last: Some(2), ..Default::default() })
            .unwrap();
        source
            .compact(&LogKey::new("app", "emptied"), CompactRule { keep_last: Some(0), ..Default::default() })
            .unwrap();
        let text = export_all(&source);

        let target = SledLog::open_temporary().unwrap();
        let moved = import(&target, &mut text.as_bytes()).unwrap();
        assert_eq!(moved, Moved { channels: 3, events: u64::try_from(BATCH_EVENTS + 5 + 2).unwrap() });
        assert_eq!(export_all(&target), text);
        assert_eq!(
            target.head(&LogKey::new("app", "emptied")).unwrap(),
            source.head(&LogKey::new("app", "emptied")).unwrap()
        );
    }

    /// A bad line stops the import with its line number; the lines before it stay imported.
    #[test]
    fn a_bad_line_is_named_and_what_came_before_stays() {
        let source = SledLog::open_temporary().unwrap();
        append(&source, "a", "1");
        append(&source, "b", "2");
        let text = format!("{}{{\"app\":\"app\"}}\n", export_all(&source));
        let target = SledLog::open_temporary().unwrap();
        let error = import(&target, &mut text.as_bytes()).unwrap_err();
        assert!(matches!(error, BackupError::Line { line: 3, .. }), "{error}");
        assert_eq!(target.stats().unwrap().events, 2);
    }

    /// Importing the same backup twice is refused (it would reuse every id), naming the lines.
    #[test]
    fn importing_twice_is_refused() {
        let source = SledLog::open_temporary().unwrap();
        append(&source, "a", "1");
        let text = export_all(&source);
        let target = SledLog::open_temporary().unwrap();
        import(&target, &mut text.as_bytes()).unwrap();
        let error = import(&target, &mut text.as_bytes()).unwrap_err();
        assert!(
            matches!(
                &error,
                BackupError::Refused { first_line: 1, imported: 0, source: StorageError::ImportRefused(_), .. }
            ),
            "{error}"
        );
    }
}

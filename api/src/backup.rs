//! The backup format of `reprise log export` and `reprise log import`: JSON Lines, one object per
//! line, each naming its app and channel.
//!
//! ```text
//! {"app":"my-app","channel":"orders","compacted_through":"01HF8M3W6Q0000000000000028"}
//! {"app":"my-app","channel":"orders","id":"01HF8M3W6Q0000000000000029","event":"OrderShipped","data":"{\"id\":7}"}
//! {"app":"my-app","channel":"presence-room","id":"...","event":"client-typing","data":"{}","user_id":"42"}
//! ```
//!
//! An event line keeps everything a replay gives back (the id, the event name, the data string
//! byte for byte, the presence `user_id`), so a restored log serves the same ids and clients resume
//! across a restore. A `compacted_through` line, before a channel's events, carries the
//! channel's compaction mark: without it a restored channel would report old cursors as
//! recovered although their events are gone (and, for a channel compacted to nothing, would
//! forget its head and hand out its ids again). Unknown fields are refused, so a typo or a line
//! from a newer format is not silently half-read.

use serde::{Deserialize, Serialize};

use crate::EventId;

/// One line of a backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupLine {
    pub app: String,
    pub channel: String,
    pub item: BackupItem,
}

/// What a line holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackupItem {
    /// The channel's compaction mark: every event up to it was removed (its head, if it holds
    /// no events). Comes before the channel's events.
    Compacted { through: EventId },
    /// One event, with the id it was logged under.
    Event { id: EventId, event: String, data: String, user_id: Option<String> },
}

/// A line that is not a backup line.
#[derive(Debug, thiserror::Error)]
pub enum BackupLineError {
    #[error("not a backup line: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a line has either `compacted_through` or `id`, `event` and `data`")]
    Shape,
}

/// A line as read: every field optional, the shape checked by [`BackupLine::parse`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLine {
    app: String,
    channel: String,
    #[serde(default)]
    compacted_through: Option<EventId>,
    #[serde(default)]
    id: Option<EventId>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

/// A line as written: borrows the record, so an export copies no event data.
#[derive(Serialize)]
struct LineRef<'a> {
    app: &'a str,
    channel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    compacted_through: Option<EventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<EventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

impl BackupLine {
    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<BackupLine, BackupLineError> {
        let raw: RawLine = serde_json::from_str(line)?;
        let item = match (raw.compacted_through, raw.id, raw.event, raw.data, raw.user_id) {
            (Some(through), None, None, None, None) => BackupItem::Compacted { through },
            (None, Some(id), Some(event), Some(data), user_id) => BackupItem::Event { id, event, data, user_id },
            _ => return Err(BackupLineError::Shape),
        };
        Ok(BackupLine { app: raw.app, channel: raw.channel, item })
    }

    /// The line as JSON, without a newline.
    pub fn to_json(&self) -> String {
        let mut line = LineRef {
            app: &self.app,
            channel: &self.channel,
            compacted_through: None,
            id: None,
            event: None,
            data: None,
            user_id: None,
        };
        match &self.item {
            BackupItem::Compacted { through } => line.compacted_through = Some(*through),
            BackupItem::Event { id, event, data, user_id } => {
                line.id = Some(*id);
                line.event = Some(event);
                line.data = Some(data);
                line.user_id = user_id.as_deref();
            }
        }
        serde_json::to_string(&line).expect("a backup line always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_line() -> BackupLine {
        BackupLine {
            app: "app".into(),
            channel: "presence-room".into(),
            item: BackupItem::Event {
                id: EventId::new(1_700_000_000_000, 7),
                event: "client-typing".into(),
                // Data is kept byte for byte: escapes, unicode, a JSON document inside a string.
                data: "{\"text\":\"h\\u00e9 \\\"quoted\\\"\\n\",\"emoji\":\"🎉\"}".into(),
                user_id: Some("42".into()),
            },
        }
    }

    /// Every field survives a write and a read exactly, also awkward data.
    #[test]
    fn lines_round_trip_exactly() {
        let mark = BackupLine {
            app: "app".into(),
            channel: "orders".into(),
            item: BackupItem::Compacted { through: EventId::new(1_700_000_000_000, 40) },
        };
        for line in [event_line(), mark] {
            let json = line.to_json();
            assert!(!json.contains('\n'), "one line per record: {json}");
            assert_eq!(BackupLine::parse(&json).unwrap(), line, "{json}");
        }
        let no_user =
            BackupLine::parse(r#"{"app":"a","channel":"c","id":"01HF8M3W6Q0000000000000029","event":"e","data":""}"#)
                .unwrap();
        assert!(matches!(no_user.item, BackupItem::Event { user_id: None, .. }));
        assert!(!no_user.to_json().contains("user_id"));
    }

    /// The documented shape, field by field: what another tool would write or read.
    #[test]
    fn the_format_is_the_documented_one() {
        let json: serde_json::Value = serde_json::from_str(&event_line().to_json()).unwrap();
        assert_eq!(json["app"], "app");
        assert_eq!(json["channel"], "presence-room");
        assert_eq!(json["id"], EventId::new(1_700_000_000_000, 7).to_string());
        assert_eq!(json["event"], "client-typing");
        assert_eq!(json["user_id"], "42");
        assert_eq!(json.as_object().unwrap().len(), 6);
    }

    /// Half an event, a mark with event fields, or an unknown field is refused, not half-read.
    #[test]
    fn malformed_lines_are_refused() {
        let id = "01HF8M3W6Q0000000000000029";
        for line in [
            format!(r#"{{"app":"a","channel":"c","id":"{id}","event":"e"}}"#),
            format!(r#"{{"app":"a","channel":"c","compacted_through":"{id}","id":"{id}","event":"e","data":""}}"#),
            format!(r#"{{"app":"a","channel":"c","id":"{id}","event":"e","data":"","socket_id":"1.2"}}"#),
            format!(r#"{{"channel":"c","id":"{id}","event":"e","data":""}}"#),
            r#"{"app":"a","channel":"c","id":"not-an-id","event":"e","data":""}"#.to_owned(),
            "not json".to_owned(),
        ] {
            assert!(BackupLine::parse(&line).is_err(), "accepted: {line}");
        }
    }
}

//! The replay extension's HTTP payloads: reading a channel's log (`GET
//! /apps/{id}/channels/{name}/events?since=&limit=`) and trimming it (`POST /apps/{id}/compact`).
//!
//! The rules a request must meet live here, next to its shape, so that the server only maps a
//! parsed request onto its log and the parsers can be tested (and fuzzed) without a server.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::EventId;

/// Events per page when the caller names no `limit`.
pub const DEFAULT_PAGE_EVENTS: usize = 100;
/// The largest page a caller may ask for: one page is read and serialised in one go.
pub const MAX_PAGE_EVENTS: usize = 1000;

/// Where a history read starts, as `since` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryCursor {
    /// No `since`: the channel's oldest event still in the log.
    Oldest,
    /// `since` is an event id: the events after it.
    After(EventId),
    /// `since` is an RFC 3339 instant: the events appended at or after it (ms since the Unix epoch).
    FromTime { timestamp_ms: u64 },
}

/// Why a history query is refused. All of them are answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryQueryError {
    #[error("since {0:?} is neither an event id (ULID) nor an RFC 3339 timestamp")]
    InvalidSince(String),
    #[error("since {0:?} is before 1970")]
    SinceBefore1970(String),
    #[error("limit must be a whole number from 1 to {MAX_PAGE_EVENTS}")]
    InvalidLimit,
}

impl HistoryCursor {
    /// Parses `since`: a ULID event id, or an RFC 3339 instant (events at or after it).
    pub fn parse(since: Option<&str>) -> Result<Self, HistoryQueryError> {
        let Some(since) = since else { return Ok(HistoryCursor::Oldest) };
        if let Ok(id) = since.parse::<EventId>() {
            return Ok(HistoryCursor::After(id));
        }
        let instant =
            OffsetDateTime::parse(since, &Rfc3339).map_err(|_| HistoryQueryError::InvalidSince(since.to_owned()))?;
        // Rounded down, not toward zero: an instant a fraction of a millisecond before 1970 is
        // before 1970, and one inside a millisecond includes that millisecond's events.
        let millis = instant.unix_timestamp_nanos().div_euclid(1_000_000);
        let timestamp_ms = u64::try_from(millis).map_err(|_| HistoryQueryError::SinceBefore1970(since.to_owned()))?;
        Ok(HistoryCursor::FromTime { timestamp_ms })
    }
}

/// Parses `limit`: a page size from 1 to [`MAX_PAGE_EVENTS`], [`DEFAULT_PAGE_EVENTS`] if absent.
pub fn parse_limit(limit: Option<&str>) -> Result<usize, HistoryQueryError> {
    let Some(limit) = limit else { return Ok(DEFAULT_PAGE_EVENTS) };
    match limit.parse::<usize>() {
        Ok(n) if (1..=MAX_PAGE_EVENTS).contains(&n) => Ok(n),
        _ => Err(HistoryQueryError::InvalidLimit),
    }
}

/// One event of a history page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    pub id: EventId,
    pub event: String,
    pub channel: String,
    pub data: String,
    /// The sender of a logged client event on a presence channel, as in its live frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// The answer to a history read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResponse {
    pub events: Vec<HistoryEvent>,
    /// True when no event after the cursor was compacted away.
    pub recovered: bool,
    /// The channel's published head; `null` if nothing was ever published to it.
    pub head: Option<EventId>,
}

/// `POST /apps/{id}/compact`: which channel (all of the app's if absent) and which rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactRequest {
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub keep_last: Option<u64>,
    #[serde(default)]
    pub max_age_secs: Option<u64>,
    /// An event id; kept as text so that a bad one gets its own error rather than a JSON one.
    #[serde(default)]
    pub before: Option<String>,
}

/// A compaction's rules, validated: at least one is set. An event goes if any rule matches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactRules {
    /// Keep only the newest N events.
    pub keep_last: Option<u64>,
    /// Remove events older than this many seconds.
    pub max_age_secs: Option<u64>,
    /// Remove events whose id is below this one.
    pub before: Option<EventId>,
}

/// Why a compact request is refused. All of them are answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompactRequestError {
    #[error("before is not a valid event id (ULID)")]
    InvalidBefore,
    #[error("name at least one of keep_last, max_age_secs, before")]
    NoRule,
}

impl CompactRequest {
    /// The request's rules: `before` must be an event id, and at least one rule must be named
    /// (a compaction without one would remove nothing, which is surely not what was meant).
    pub fn rules(&self) -> Result<CompactRules, CompactRequestError> {
        let before = self
            .before
            .as_deref()
            .map(str::parse::<EventId>)
            .transpose()
            .map_err(|_| CompactRequestError::InvalidBefore)?;
        let rules = CompactRules { keep_last: self.keep_last, max_age_secs: self.max_age_secs, before };
        if rules.keep_last.is_none() && rules.max_age_secs.is_none() && rules.before.is_none() {
            return Err(CompactRequestError::NoRule);
        }
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cursors_parse_as_ids_or_timestamps() {
        assert_eq!(HistoryCursor::parse(None), Ok(HistoryCursor::Oldest));
        let id = EventId::new(1000, 3);
        assert_eq!(HistoryCursor::parse(Some(&id.to_string())), Ok(HistoryCursor::After(id)));
        assert_eq!(
            HistoryCursor::parse(Some("2026-01-01T00:00:01.5Z")),
            Ok(HistoryCursor::FromTime { timestamp_ms: 1_767_225_601_500 })
        );
        assert_eq!(
            HistoryCursor::parse(Some("2026-01-01T02:00:00+02:00")),
            Ok(HistoryCursor::FromTime { timestamp_ms: 1_767_225_600_000 })
        );
        assert_eq!(HistoryCursor::parse(Some("yesterday")), Err(HistoryQueryError::InvalidSince("yesterday".into())));
        assert_eq!(
            HistoryCursor::parse(Some("1969-12-31T00:00:00Z")),
            Err(HistoryQueryError::SinceBefore1970("1969-12-31T00:00:00Z".into()))
        );
    }

    /// Found by the `history_query` fuzz target: an instant less than a millisecond before 1970
    /// (here a leap second whose offset puts it at 1969-12-31T23:59:59.999999999Z) was rounded
    /// toward zero to the epoch and accepted, although `since` before 1970 is refused.
    #[test]
    fn an_instant_just_before_1970_is_refused() {
        for since in ["1970-01-01T02:00:60+02:01", "1969-12-31T23:59:59.9995Z"] {
            assert_eq!(
                HistoryCursor::parse(Some(since)),
                Err(HistoryQueryError::SinceBefore1970(since.into())),
                "{since}"
            );
        }
        assert_eq!(
            HistoryCursor::parse(Some("1970-01-01T00:00:00.0005Z")),
            Ok(HistoryCursor::FromTime { timestamp_ms: 0 })
        );
    }

    /// The message a client sees is the one docs/replay.md shows.
    #[test]
    fn a_bad_since_says_what_was_expected() {
        let error = HistoryCursor::parse(Some("yesterday")).unwrap_err();
        assert_eq!(error.to_string(), r#"since "yesterday" is neither an event id (ULID) nor an RFC 3339 timestamp"#);
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(parse_limit(None), Ok(DEFAULT_PAGE_EVENTS));
        assert_eq!(parse_limit(Some("1")), Ok(1));
        assert_eq!(parse_limit(Some("1000")), Ok(1000));
        for bad in ["0", "1001", "ten", "-1", ""] {
            assert_eq!(parse_limit(Some(bad)), Err(HistoryQueryError::InvalidLimit), "{bad:?}");
        }
    }

    #[test]
    fn history_response_has_the_documented_shape() {
        let id = EventId::new(1000, 1);
        let response = HistoryResponse {
            events: vec![HistoryEvent { id, event: "e".into(), channel: "c".into(), data: "d".into(), user_id: None }],
            recovered: true,
            head: Some(id),
        };
        let value = serde_json::to_value(&response).unwrap();
        assert_eq!(
            value,
            json!({"events":[{"id":id.to_string(),"event":"e","channel":"c","data":"d"}],"recovered":true,"head":id.to_string()})
        );
        assert_eq!(serde_json::from_value::<HistoryResponse>(value).unwrap(), response);
    }

    #[test]
    fn compact_needs_a_rule_and_a_valid_before() {
        let id = EventId::new(1000, 3);
        let request: CompactRequest =
            serde_json::from_value(json!({"channel":"a","before":id.to_string(),"keep_last":5})).unwrap();
        assert_eq!(request.rules(), Ok(CompactRules { keep_last: Some(5), max_age_secs: None, before: Some(id) }));
        let request: CompactRequest = serde_json::from_value(json!({"max_age_secs":60})).unwrap();
        assert_eq!(request.rules(), Ok(CompactRules { keep_last: None, max_age_secs: Some(60), before: None }));

        let request: CompactRequest = serde_json::from_value(json!({"channel":"a"})).unwrap();
        assert_eq!(request.rules(), Err(CompactRequestError::NoRule));
        let request: CompactRequest = serde_json::from_value(json!({"before":"yesterday"})).unwrap();
        assert_eq!(request.rules(), Err(CompactRequestError::InvalidBefore));
        assert!(serde_json::from_value::<CompactRequest>(json!({"keep_last":1,"keep":2})).is_err());
    }
}

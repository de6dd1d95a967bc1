//! The replay extension's HTTP side: `GET /channels/{name}/events?since=` (a backend reads a
//! channel's log by cursor) and `POST /compact` (an operator trims it).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use reprise_api::{ChannelName, EventId};
use reprise_storage::{CompactRule, Cursor};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ServerState;
use crate::error::ApiError;
use crate::log_service::compaction::older_than_ms;
use crate::routes::channels::parse_channel;
use crate::routes::signed::Signed;

/// Events per page when the caller names no `limit`.
pub const DEFAULT_PAGE_EVENTS: usize = 100;
/// The largest page a caller may ask for.
pub const MAX_PAGE_EVENTS: usize = 1000;

#[derive(Serialize)]
struct HistoryEvent {
    id: EventId,
    event: String,
    channel: String,
    data: String,
    /// The sender of a logged client event on a presence channel, as in its live frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
}

#[derive(Serialize)]
pub struct HistoryResponse {
    events: Vec<HistoryEvent>,
    recovered: bool,
    head: Option<EventId>,
}

/// Parses `since`: a ULID event id, or an RFC 3339 instant (events at or after it).
fn parse_cursor(since: Option<&str>) -> Result<Cursor, ApiError> {
    let Some(since) = since else { return Ok(Cursor::Oldest) };
    if let Ok(id) = since.parse::<EventId>() {
        return Ok(Cursor::After(id));
    }
    let instant = time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339).map_err(|_| {
        ApiError::BadRequest(format!("since {since:?} is neither an event id (ULID) nor an RFC 3339 timestamp"))
    })?;
    let millis = instant.unix_timestamp_nanos() / 1_000_000;
    let timestamp_ms =
        u64::try_from(millis).map_err(|_| ApiError::BadRequest(format!("since {since:?} is before 1970")))?;
    Ok(Cursor::FromTime { timestamp_ms })
}

fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    let Some(limit) = limit else { return Ok(DEFAULT_PAGE_EVENTS) };
    match limit.parse::<usize>() {
        Ok(n) if (1..=MAX_PAGE_EVENTS).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!("limit must be a whole number from 1 to {MAX_PAGE_EVENTS}"))),
    }
}

pub async fn events(
    State(state): State<Arc<ServerState>>,
    Path((_, channel)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<HistoryResponse>, ApiError> {
    let channel = parse_channel(&channel)?;
    let cursor = parse_cursor(signed.param("since"))?;
    let limit = parse_limit(signed.param("limit"))?;
    // The read stops at the published head: events after it may not be durable yet (with sync
    // durability) and are left for the next page, as they are left out of a replay.
    let (outcome, head) = state.log.history(&signed.app.hub, &signed.app.log_key(&channel), cursor, limit).await?;
    let events = outcome
        .events
        .into_iter()
        .map(|e| HistoryEvent {
            id: e.id,
            event: e.event,
            channel: channel.as_str().to_owned(),
            data: e.data,
            user_id: e.user_id,
        })
        .collect();
    Ok(Json(HistoryResponse { events, recovered: outcome.recovered, head }))
}

/// `POST /apps/{id}/compact`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompactRequest {
    channel: Option<String>,
    keep_last: Option<u64>,
    max_age_secs: Option<u64>,
    before: Option<String>,
}

pub async fn compact(State(state): State<Arc<ServerState>>, signed: Signed) -> Result<Json<Value>, ApiError> {
    let body: CompactRequest = signed.json()?;
    let before = match body.before.as_deref().map(str::parse::<EventId>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return Err(ApiError::BadRequest("before is not a valid event id (ULID)".into())),
    };
    let rule = CompactRule { keep_last: body.keep_last, older_than_ms: body.max_age_secs.map(older_than_ms), before };
    if rule == CompactRule::default() {
        return Err(ApiError::BadRequest("name at least one of keep_last, max_age_secs, before".into()));
    }
    let channel = body.channel.as_deref().map(parse_channel).transpose()?;
    let channel = channel.as_ref().map(ChannelName::as_str);
    let removed = state.log.compact(&signed.app.config.id, channel, rule).await?;
    tracing::info!(removed, "compacted the event log");
    Ok(Json(json!({ "removed": removed })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_as_ids_or_timestamps() {
        assert_eq!(parse_cursor(None).unwrap(), Cursor::Oldest);
        let id = EventId::new(1000, 3);
        assert_eq!(parse_cursor(Some(&id.to_string())).unwrap(), Cursor::After(id));
        assert_eq!(
            parse_cursor(Some("2026-01-01T00:00:01.5Z")).unwrap(),
            Cursor::FromTime { timestamp_ms: 1_767_225_601_500 }
        );
        assert_eq!(
            parse_cursor(Some("2026-01-01T02:00:00+02:00")).unwrap(),
            Cursor::FromTime { timestamp_ms: 1_767_225_600_000 }
        );
        assert!(parse_cursor(Some("yesterday")).is_err());
        assert!(parse_cursor(Some("1969-12-31T00:00:00Z")).is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(parse_limit(None).unwrap(), DEFAULT_PAGE_EVENTS);
        assert_eq!(parse_limit(Some("1000")).unwrap(), 1000);
        assert!(parse_limit(Some("0")).is_err());
        assert!(parse_limit(Some("1001")).is_err());
        assert!(parse_limit(Some("ten")).is_err());
    }
}

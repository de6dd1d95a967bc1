//! The replay extension's HTTP side: `GET /channels/{name}/events?since=` (a backend reads a
//! channel's log by cursor) and `POST /compact` (an operator trims it).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, Request, State};
use reprise_api::EventId;
use reprise_storage::{CompactRule, Cursor, EventLog, LogKey, StorageError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ServerState;
use crate::error::ApiError;
use crate::routes::channels::parse_channel;
use crate::routes::signed;

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
    Path((app_id, channel)): Path<(String, String)>,
    request: Request,
) -> Result<Json<HistoryResponse>, ApiError> {
    let signed = signed::verify(&state, &app_id, request).await?;
    let channel = parse_channel(&channel)?;
    let cursor = parse_cursor(signed.param("since"))?;
    let limit = parse_limit(signed.param("limit"))?;
    let key = signed.app.log_key(&channel);
    // The read stops at the published head: events after it may not be durable yet (with sync
    // durability) and are left for the next page, as they are left out of a replay.
    let hub = Arc::clone(&signed.app.hub);
    let name = channel.as_str().to_owned();
    let (outcome, head) = blocking(&state, move |log| {
        let head = hub.published_head(&name, || log.head(&key).map(|h| h.head))?;
        Ok((log.read(&key, cursor, limit)?, head))
    })
    .await?;
    let up_to = head.map_or(0, EventId::seq);
    let events = outcome
        .events
        .into_iter()
        .filter(|e| e.id.seq() <= up_to)
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

pub async fn compact(
    State(state): State<Arc<ServerState>>,
    Path(app_id): Path<String>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let signed = signed::verify(&state, &app_id, request).await?;
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
    let app = signed.app.config.id.clone();
    let channel = body.channel.as_deref().map(parse_channel).transpose()?;
    let removed = blocking(&state, move |log| {
        let keys = match channel {
            Some(channel) => vec![LogKey { app, channel: channel.as_str().to_owned() }],
            None => log.channels(&app)?,
        };
        compact_all(log, &keys, rule)
    })
    .await?;
    tracing::info!(removed, "compacted the event log");
    Ok(Json(json!({ "removed": removed })))
}

/// Compacts each channel with `rule`; the total removed.
pub fn compact_all(log: &dyn EventLog, keys: &[LogKey], rule: CompactRule) -> Result<u64, StorageError> {
    let mut removed = 0;
    for key in keys {
        removed += log.compact(key, rule)?;
    }
    log.flush()?;
    Ok(removed)
}

/// The absolute instant (unix ms) before which events are older than `max_age_secs`.
pub fn older_than_ms(max_age_secs: u64) -> u64 {
    let now_ms =
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    now_ms.saturating_sub(max_age_secs.saturating_mul(1000))
}

/// Runs a log call on the blocking pool (sled IO must not stall a runtime worker).
pub async fn blocking<T: Send + 'static>(
    state: &ServerState,
    call: impl FnOnce(&dyn EventLog) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ApiError> {
    let log = Arc::clone(&state.log);
    match tokio::task::spawn_blocking(move || call(log.as_ref())).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            tracing::error!(%error, "event log call failed");
            Err(ApiError::Unavailable)
        }
        Err(_) => Err(ApiError::Unavailable),
    }
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

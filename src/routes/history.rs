//! The replay extension's HTTP side: `GET /channels/{name}/events?since=` (a backend reads a
//! channel's log by cursor) and `POST /compact` (an operator trims it).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Path, Request, State};
use reprise_api::EventId;
use reprise_api::history::{self, CompactRequest, HistoryCursor, HistoryEvent, HistoryResponse};
use reprise_storage::{CompactRule, Cursor, EventLog, LogKey, StorageError};
use serde_json::{Value, json};

use crate::ServerState;
use crate::error::ApiError;
use crate::routes::channels::parse_channel;
use crate::routes::signed;

/// Maps `since` onto the log's cursor.
fn parse_cursor(since: Option<&str>) -> Result<Cursor, ApiError> {
    Ok(match HistoryCursor::parse(since).map_err(|e| ApiError::BadRequest(e.to_string()))? {
        HistoryCursor::Oldest => Cursor::Oldest,
        HistoryCursor::After(id) => Cursor::After(id),
        HistoryCursor::FromTime { timestamp_ms } => Cursor::FromTime { timestamp_ms },
    })
}

fn parse_limit(limit: Option<&str>) -> Result<usize, ApiError> {
    history::parse_limit(limit).map_err(|e| ApiError::BadRequest(e.to_string()))
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

pub async fn compact(
    State(state): State<Arc<ServerState>>,
    Path(app_id): Path<String>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let signed = signed::verify(&state, &app_id, request).await?;
    let body: CompactRequest = signed.json()?;
    let rules = body.rules().map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let rule = CompactRule {
        keep_last: rules.keep_last,
        older_than_ms: rules.max_age_secs.map(older_than_ms),
        before: rules.before,
    };
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

//! The replay extension's HTTP side: `GET /channels/{name}/events?since=` (a backend reads a
//! channel's log by cursor) and `POST /compact` (an operator trims it).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use reprise_api::ChannelName;
use reprise_api::history::{self, CompactRequest, HistoryCursor, HistoryEvent, HistoryResponse};
use reprise_storage::{CompactRule, Cursor};
use serde_json::{Value, json};

use crate::ServerState;
use crate::error::ApiError;
use crate::log_service::compaction::older_than_ms;
use crate::metrics::Compaction;
use crate::routes::channels::parse_channel;
use crate::routes::signed::Signed;

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

pub async fn compact(State(state): State<Arc<ServerState>>, signed: Signed) -> Result<Json<Value>, ApiError> {
    let body: CompactRequest = signed.json()?;
    let rules = body.rules().map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let rule = CompactRule {
        keep_last: rules.keep_last,
        older_than_ms: rules.max_age_secs.map(older_than_ms),
        before: rules.before,
    };
    let channel = body.channel.as_deref().map(parse_channel).transpose()?;
    let channel = channel.as_ref().map(ChannelName::as_str);
    let removed = state.log.compact(&signed.app.config.id, channel, rule).await?;
    state.metrics.compacted(&signed.app.config.id, Compaction::Api, removed);
    tracing::info!(removed, "compacted the event log");
    Ok(Json(json!({ "removed": removed })))
}

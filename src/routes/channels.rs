//! Channel queries (`/channels`, `/channels/{name}`, `/channels/{name}/users`) and
//! `terminate_connections`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use reprise_api::http::{CachedEvent, ChannelInfo, ChannelsResponse, InfoRequest, UserEntry, UsersResponse};
use reprise_api::{ChannelName, ErrorCode};
use serde_json::{Value, json};

use crate::ServerState;
use crate::error::ApiError;
use crate::routes::signed::Signed;

pub async fn list(signed: Signed) -> Result<Json<ChannelsResponse>, ApiError> {
    let prefix = signed.param("filter_by_prefix").unwrap_or_default().to_owned();
    let info = InfoRequest::parse(signed.param("info"));
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(ApiError::BadRequest("info=user_count needs filter_by_prefix=presence-".into()));
    }
    let mut response = ChannelsResponse::default();
    for (name, counts) in signed.app.hub.occupied(&prefix) {
        let entry = ChannelInfo { user_count: info.user_count.then_some(counts.users), ..ChannelInfo::default() };
        response.channels.insert(name, entry);
    }
    Ok(Json(response))
}

pub async fn show(
    State(state): State<Arc<ServerState>>,
    Path((_, channel)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<ChannelInfo>, ApiError> {
    let channel = parse_channel(&channel)?;
    let info = InfoRequest::parse(signed.param("info"));
    if info.user_count && !channel.is_presence() {
        return Err(ApiError::BadRequest("info=user_count is only available for presence channels".into()));
    }
    let counts = signed.app.hub.counts(channel.as_str());
    let cache = if info.cache && channel.is_cache() { cached_event(&state, &signed, &channel).await? } else { None };
    Ok(Json(ChannelInfo {
        occupied: Some(counts.subscriptions > 0),
        subscription_count: info.subscription_count.then_some(counts.subscriptions),
        user_count: info.user_count.then_some(counts.users),
        cache,
    }))
}

/// A cache channel's last event: the event at its published head (an event still being
/// committed is not shown yet).
async fn cached_event(
    state: &ServerState,
    signed: &Signed,
    channel: &ChannelName,
) -> Result<Option<CachedEvent>, ApiError> {
    let last = state.log.last_event(&signed.app.hub, &signed.app.log_key(channel)).await?;
    Ok(last.map(|event| CachedEvent { event: event.event, data: event.data }))
}

pub async fn users(
    Path((_, channel)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<UsersResponse>, ApiError> {
    let channel = parse_channel(&channel)?;
    if !channel.is_presence() {
        return Err(ApiError::BadRequest("users are only available for presence channels".into()));
    }
    let users = signed.app.hub.users(channel.as_str()).into_iter().map(|id| UserEntry { id }).collect();
    Ok(Json(UsersResponse { users }))
}

/// Closes every socket that joined a presence channel as this user. They close with 4200
/// (reconnect now): a client that reconnects must be authorised again by the app's auth
/// endpoint, which is where an app refuses a banned user.
pub async fn terminate(Path((_, user_id)): Path<(String, String)>, signed: Signed) -> Result<Json<Value>, ApiError> {
    let closed = signed.app.hub.terminate_user(&user_id, ErrorCode::Reconnect.as_u16());
    tracing::info!(closed, "terminated a user's connections");
    Ok(Json(json!({})))
}

pub fn parse_channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| ApiError::BadRequest(format!("channel {name:?}: {e}")))
}

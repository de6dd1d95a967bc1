//! Channel queries (`/channels`, `/channels/{name}`, `/channels/{name}/users`), Reverb's
//! `/connections`, and `terminate_connections`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{Path, State};
use reprise_api::http::{
    CachedEvent, ChannelInfo, ChannelsResponse, ConnectionsResponse, InfoRequest, UserEntry, UsersResponse,
};
use reprise_api::{ChannelName, ErrorCode};
use serde_json::{Value, json};

use crate::ServerState;
use crate::apps::App;
use crate::cluster::messages::BusMessage;
use crate::error::ApiError;
use crate::hub::ChannelCounts;
use crate::routes::signed::Signed;

pub async fn list(State(state): State<Arc<ServerState>>, signed: Signed) -> Result<Json<ChannelsResponse>, ApiError> {
    let prefix = signed.param("filter_by_prefix").unwrap_or_default().to_owned();
    let info = InfoRequest::parse(signed.param("info"));
    if info.user_count && !prefix.starts_with("presence-") {
        return Err(ApiError::BadRequest("info=user_count needs filter_by_prefix=presence-".into()));
    }
    let mut occupied: HashMap<String, ChannelCounts> = signed.app.hub.occupied(&prefix).into_iter().collect();
    if let Some(cluster) = &state.cluster {
        // The other nodes' subscriptions (up to a second old), and cluster-wide user counts.
        for (name, count) in cluster.remote_counts(&signed.app.config.id).await? {
            if name.starts_with(&prefix) && count > 0 {
                occupied.entry(name).or_default().subscriptions += count;
            }
        }
        if info.user_count {
            for (name, counts) in &mut occupied {
                counts.users = cluster.user_count(&signed.app.config.id, name).await?;
            }
        }
    }
    let mut response = ChannelsResponse::default();
    for (name, counts) in occupied {
        let entry = ChannelInfo {
            subscription_count: info.subscription_count.then_some(counts.subscriptions),
            user_count: info.user_count.then_some(counts.users),
            ..ChannelInfo::default()
        };
        response.channels.insert(name, entry);
    }
    Ok(Json(response))
}

/// `GET /apps/{id}/connections` (Reverb's; Pusher has no such call): the app's open connections,
/// subscribed or not. In cluster mode every live node's: the others' as of their last count, up
/// to about 2 s old.
pub async fn connections(signed: Signed) -> Json<ConnectionsResponse> {
    let hub = &signed.app.hub;
    let connections = hub.connections.load(Ordering::Relaxed) + hub.connections_elsewhere.load(Ordering::Relaxed);
    Json(ConnectionsResponse { connections })
}

/// A channel's subscriptions and presence users: this node's, or in cluster mode the cluster's
/// (other nodes' subscriptions as of their last count, up to a second old).
pub async fn channel_counts(state: &ServerState, app: &App, channel: &str) -> Result<ChannelCounts, ApiError> {
    let mut counts = app.hub.counts(channel);
    if let Some(cluster) = &state.cluster {
        counts.subscriptions += cluster.remote_count(&app.config.id, channel).await?;
        if channel.starts_with("presence-") {
            counts.users = cluster.user_count(&app.config.id, channel).await?;
        }
    }
    Ok(counts)
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
    let counts = channel_counts(&state, &signed.app, channel.as_str()).await?;
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
    State(state): State<Arc<ServerState>>,
    Path((_, channel)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<UsersResponse>, ApiError> {
    let channel = parse_channel(&channel)?;
    if !channel.is_presence() {
        return Err(ApiError::BadRequest("users are only available for presence channels".into()));
    }
    let ids = match &state.cluster {
        Some(cluster) => cluster.users(&signed.app.config.id, channel.as_str()).await?,
        None => signed.app.hub.users(channel.as_str()),
    };
    let users = ids.into_iter().map(|id| UserEntry { id }).collect();
    Ok(Json(UsersResponse { users }))
}

/// Closes every socket that joined a presence channel as this user. They close with 4200
/// (reconnect now): a client that reconnects must be authorised again by the app's auth
/// endpoint, which is where an app refuses a banned user.
///
/// In cluster mode every node closes the user's sockets it holds (told over the bus).
pub async fn terminate(
    State(state): State<Arc<ServerState>>,
    Path((_, user_id)): Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    if let Some(cluster) = &state.cluster {
        cluster.publish(&BusMessage::Terminate { app: signed.app.config.id.clone(), user_id }).await?;
        return Ok(Json(json!({})));
    }
    let closed = signed.app.hub.terminate_user(&user_id, ErrorCode::Reconnect.as_u16());
    tracing::info!(closed, "terminated a user's connections");
    Ok(Json(json!({})))
}

pub fn parse_channel(name: &str) -> Result<ChannelName, ApiError> {
    ChannelName::parse(name).map_err(|e| ApiError::BadRequest(format!("channel {name:?}: {e}")))
}

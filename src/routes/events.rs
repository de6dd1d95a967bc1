//! `POST /apps/{id}/events` and `POST /apps/{id}/batch_events`: validate, then hand the events to
//! the publisher, which logs them, fans them out and returns their ids.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use reprise_api::http::{
    BatchItemResponse, BatchRequest, BatchResponse, ChannelInfo, InfoRequest, MAX_BATCH_EVENTS, MAX_CHANNELS_PER_EVENT,
    TriggerRequest, TriggerResponse, write_trigger_ids,
};
use reprise_api::{ChannelName, EventId};

use crate::ServerState;
use crate::apps::App;
use crate::error::ApiError;
use crate::hub::ChannelCounts;
use crate::publisher::{PublishError, PublishItem};
use crate::routes::signed::Signed;

/// Pusher's limit on an event name, in bytes.
const MAX_EVENT_NAME_BYTES: usize = 200;

pub fn trigger(
    State(state): State<Arc<ServerState>>,
    signed: Signed,
) -> impl Future<Output = Result<Response, ApiError>> {
    // Everything before the publish is done here, before the future exists, and the request
    // (body, parsed JSON) is dropped with it: the future boxed for each request (by `front`, or by
    // axum) keeps only what the awaits need. With axum's box it was 1,328 bytes, which glibc
    // serves from its large bins after merging every freed small block (`malloc_consolidate`);
    // below 1 KiB it comes from the thread's cache (docs/benchmarks.md, round two, eighth pass).
    let app = Arc::clone(&signed.app);
    let prepared = trigger_items(signed);
    async move {
        let (channels, info, items) = prepared?;
        let ids = publish(&state, &app, items).await?;
        if info == InfoRequest::default() {
            // The usual answer, written as it is (`write_trigger_ids`).
            let mut ids: Vec<(&str, EventId)> = channels.iter().map(ChannelName::as_str).zip(ids).collect();
            let mut body = Vec::with_capacity(16 + ids.iter().map(|(channel, _)| channel.len() + 32).sum::<usize>());
            write_trigger_ids(&mut body, &mut ids);
            return Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response());
        }
        let mut response = TriggerResponse::default();
        for (channel, id) in channels.into_iter().zip(ids) {
            // Boxed: asked for rarely, and its future (a cluster round trip) would otherwise make
            // every trigger's larger.
            let info = Box::pin(channel_info(&state, &app, &channel, info)).await?;
            response.channels.insert(channel.to_string(), info);
            response.ids.insert(channel.into(), id);
        }
        Ok(Json(response).into_response())
    }
}

/// A trigger's channels, the `info` it asks for, and its event for each channel.
fn trigger_items(signed: Signed) -> Result<(Vec<ChannelName>, InfoRequest, Vec<PublishItem>), ApiError> {
    let body: TriggerRequest = signed.json()?;
    let names = body.channel_names();
    if names.is_empty() {
        return Err(ApiError::BadRequest("name a channel in \"channel\" or \"channels\"".into()));
    }
    if names.len() > MAX_CHANNELS_PER_EVENT {
        return Err(ApiError::BadRequest(format!("at most {MAX_CHANNELS_PER_EVENT} channels per event")));
    }
    let channels = names
        .into_iter()
        .map(|name| validate(&signed.app, name, &body.name, &body.data, body.socket_id.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    let info = InfoRequest::parse(body.info.as_deref());
    // The payload moves to the publisher, copied only for each channel but the last.
    let (mut event, mut data) = (body.name, body.data);
    let mut items = Vec::with_capacity(channels.len());
    for (at, channel) in channels.iter().enumerate() {
        let last = at + 1 == channels.len();
        let take = |text: &mut String| if last { std::mem::take(text) } else { text.clone() };
        items.push(PublishItem {
            channel: channel.clone(),
            event: take(&mut event),
            data: take(&mut data),
            except_socket: body.socket_id.clone(),
            user_id: None,
        });
    }
    Ok((channels, info, items))
}

pub async fn batch(State(state): State<Arc<ServerState>>, signed: Signed) -> Result<Json<BatchResponse>, ApiError> {
    let body: BatchRequest = signed.json()?;
    if body.batch.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::BadRequest(format!("at most {MAX_BATCH_EVENTS} events per batch")));
    }
    let channels = body
        .batch
        .iter()
        .map(|event| validate(&signed.app, &event.channel, &event.name, &event.data, event.socket_id.as_deref()))
        .collect::<Result<Vec<_>, _>>()?;
    // The payloads move to the publisher; each event's `info` stays for the answer.
    let mut infos = Vec::with_capacity(channels.len());
    let mut items = Vec::with_capacity(channels.len());
    for (event, channel) in body.batch.into_iter().zip(&channels) {
        infos.push(InfoRequest::parse(event.info.as_deref()));
        items.push(PublishItem {
            channel: channel.clone(),
            event: event.name,
            data: event.data,
            except_socket: event.socket_id,
            user_id: None,
        });
    }
    let ids = publish(&state, &signed.app, items).await?;
    let mut batch = Vec::with_capacity(channels.len());
    for ((channel, id), info) in channels.into_iter().zip(ids).zip(infos) {
        let info = channel_info(&state, &signed.app, &channel, info).await?;
        batch.push(BatchItemResponse { info, ids: BTreeMap::from([(channel.into(), id)]) });
    }
    Ok(Json(BatchResponse { batch }))
}

/// Validates one event for one channel, and names the channel.
fn validate(
    app: &App,
    channel: &str,
    name: &str,
    data: &str,
    socket_id: Option<&str>,
) -> Result<ChannelName, ApiError> {
    let channel = ChannelName::parse(channel).map_err(|e| ApiError::BadRequest(format!("channel {channel:?}: {e}")))?;
    if name.is_empty() || name.len() > MAX_EVENT_NAME_BYTES {
        return Err(ApiError::BadRequest(format!("event name must be 1 to {MAX_EVENT_NAME_BYTES} bytes")));
    }
    if name.starts_with("pusher:") || name.starts_with("pusher_internal:") {
        return Err(ApiError::BadRequest("event names starting with pusher: are reserved".into()));
    }
    if data.len() > app.config.max_message_size_bytes {
        return Err(ApiError::PayloadTooLarge(app.config.max_message_size_bytes));
    }
    if let Some(socket_id) = socket_id
        && !is_socket_id(socket_id)
    {
        return Err(ApiError::BadRequest(format!("socket_id {socket_id:?} is not a socket id")));
    }
    Ok(channel)
}

/// Pusher socket ids are `\d+\.\d+`.
fn is_socket_id(text: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    text.split_once('.').is_some_and(|(a, b)| digits(a) && digits(b))
}

async fn publish(state: &ServerState, app: &Arc<App>, items: Vec<PublishItem>) -> Result<Vec<EventId>, ApiError> {
    state.publisher.publish(app, items).await.map_err(|error| match error {
        PublishError::NotDurable => ApiError::NotDurable,
        PublishError::OutcomeUnknown => ApiError::OutcomeUnknown,
        PublishError::Storage | PublishError::ShuttingDown => ApiError::Unavailable,
    })
}

pub async fn channel_info(
    state: &ServerState,
    app: &App,
    channel: &ChannelName,
    info: InfoRequest,
) -> Result<ChannelInfo, ApiError> {
    let counts = if info == InfoRequest::default() {
        ChannelCounts::default() // nothing asked: no cluster round trip
    } else {
        crate::routes::channels::channel_counts(state, app, channel.as_str()).await?
    };
    Ok(ChannelInfo {
        occupied: None,
        subscription_count: info.subscription_count.then_some(counts.subscriptions),
        user_count: (info.user_count && channel.is_presence()).then_some(counts.users),
        cache: None,
    })
}

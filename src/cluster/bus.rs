//! The bus subscriber: every node hears every bus message and serves its own sockets.
//!
//! Logged events go out in sequence order per channel (`AppHub::deliver`). A jump (a pub/sub
//! message lost, or sent while the bus connection was down) is filled from the shared log before
//! the event after it goes out, and a tail lost with nothing after it is caught by [`catch_up`],
//! which the maintenance round runs every few seconds and the bus runs after every reconnect. So
//! a subscriber never silently misses an event because its node missed a message.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reprise_api::presence::PresenceMember;
use reprise_api::{ChannelName, ErrorCode, EventId, frames};
use reprise_storage::Cursor;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::messages::BusMessage;
use super::{Cluster, HEALTH_COMPONENT, signins};
use crate::ServerState;
use crate::apps::App;
use crate::hub::{Delivery, Frame, Logged, RosterFull};

/// Events read from the log per page when a gap is filled.
const FILL_PAGE_EVENTS: usize = 1000;
/// How long to wait before reconnecting a lost bus connection.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);
/// How often an idle bus connection is pinged: a Redis that vanished without closing the socket
/// is noticed within this plus the command timeout.
const PING_INTERVAL: Duration = Duration::from_secs(3);

/// Subscribes to the bus and serves what it says, reconnecting until shutdown.
pub async fn run(cluster: Arc<Cluster>, state: Arc<ServerState>, shutdown: CancellationToken) {
    let mut reconnected = false;
    loop {
        let subscribed = tokio::select! {
            subscribed = subscribe(&cluster) => subscribed,
            () = shutdown.cancelled() => return,
        };
        let (mut sink, mut messages) = match subscribed {
            Ok(halves) => halves,
            Err(error) => {
                cluster.health.report(HEALTH_COMPONENT, format!("cannot subscribe to the cluster bus: {error}"));
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT_DELAY) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        cluster.health.clear(HEALTH_COMPONENT);
        if reconnected {
            if let Some(metrics) = &state.metrics.cluster {
                metrics.bus_reconnects.inc();
            }
            // Redis may have restarted empty: put this node's members back, then fetch whatever
            // was published while the bus was down.
            tracing::info!("cluster bus reconnected: restoring presence and sign-ins, and catching up");
            cluster.command_connection_ready().await;
            rejoin_presence(&cluster, &state).await;
            signins::reconcile(&cluster, &state).await;
            for app in state.apps.iter() {
                for (channel, _) in app.hub.occupied("") {
                    cluster.count_changed(&app.config.id, &channel);
                }
            }
            catch_up(&state).await;
        }
        reconnected = true;
        let mut ping = tokio::time::interval(PING_INTERVAL);
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => handle(&cluster, &state, message.get_payload_bytes()).await,
                    None => break,
                },
                _ = ping.tick() => {
                    // Any reply will do: in subscribed mode Redis answers a PING with an array.
                    let pinged = tokio::time::timeout(PING_INTERVAL, sink.ping::<redis::Value>()).await;
                    if !matches!(pinged, Ok(Ok(_))) {
                        break;
                    }
                }
                () = shutdown.cancelled() => return,
            }
        }
        cluster.health.report(HEALTH_COMPONENT, "lost the cluster bus connection to Redis; reconnecting");
    }
}

async fn subscribe(cluster: &Cluster) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), redis::RedisError> {
    let mut pubsub = cluster.client.get_async_pubsub().await?;
    pubsub.subscribe(cluster.bus_channel()).await?;
    Ok(pubsub.split())
}

/// Serves one bus message on this node.
async fn handle(cluster: &Cluster, state: &ServerState, payload: &[u8]) {
    let Some(message) = BusMessage::parse(payload) else {
        tracing::debug!("ignored a bus message this node does not understand");
        count(state, "unknown");
        return;
    };
    count(state, message.kind());
    match message {
        BusMessage::Event { app, channel, seq, timestamp_ms, event, data, user_id, except_socket } => {
            // Every node hears every event: most are for channels nobody here watches, so look
            // before building a frame. (A subscriber that registers right after this look reads
            // the event from the log: its head is settled from there.)
            let Some(app) = state.apps.by_id(&app).filter(|app| app.hub.tracks(&channel)) else { return };
            let Ok(channel) = ChannelName::parse(&channel) else { return };
            let id = EventId::new(timestamp_ms, seq);
            let frame = logged_frame(&channel, id, &event, &data, user_id.as_deref());
            if let Delivery::Gap { after } = app.hub.deliver(&channel, id, &frame, except_socket.as_deref()) {
                fill(state, app, &channel, after, seq - 1).await;
                app.hub.deliver(&channel, id, &frame, except_socket.as_deref());
            }
        }
        BusMessage::ClientEvent { app, channel, event, data, user_id, except_socket } => {
            let (Some(app), Ok(channel)) = (state.apps.by_id(&app), ChannelName::parse(&channel)) else { return };
            let frame = Frame::event((&event, channel.as_str(), &data), None, user_id.as_deref(), None);
            app.hub.publish(&channel, &frame, Some(&except_socket));
        }
        BusMessage::MemberAdded { app, channel, user_id, user_info, except_socket } => {
            let (Some(app), Ok(channel)) = (state.apps.by_id(&app), ChannelName::parse(&channel)) else { return };
            let info: Value = serde_json::from_str(&user_info).unwrap_or(Value::Null);
            let frame = Frame::plain(frames::member_added(channel.as_str(), &user_id, &info));
            app.hub.publish(&channel, &frame, Some(&except_socket));
        }
        BusMessage::MemberRemoved { app, channel, user_id } => {
            let (Some(app), Ok(channel)) = (state.apps.by_id(&app), ChannelName::parse(&channel)) else { return };
            app.hub.publish(&channel, &Frame::plain(frames::member_removed(channel.as_str(), &user_id)), None);
        }
        BusMessage::UserStatus { app, user_id, online, version } => {
            if let Some(app) = state.apps.by_id(&app) {
                app.hub.user_changed(&user_id, online, version);
            }
        }
        BusMessage::Terminate { app, user_id } => {
            let Some(app) = state.apps.by_id(&app) else { return };
            let closed = app.hub.terminate_user(&user_id, ErrorCode::Reconnect.as_u16());
            if closed > 0 {
                tracing::info!(closed, node = %cluster.node_id, "terminated a user's connections");
            }
        }
    }
}

fn count(state: &ServerState, kind: &'static str) {
    if let Some(metrics) = &state.metrics.cluster {
        metrics.bus_message(kind);
    }
}

fn logged_frame(channel: &ChannelName, id: EventId, event: &str, data: &str, user_id: Option<&str>) -> Arc<Frame> {
    let logged = Logged { channel: channel.clone(), id, event: Some(event.into()) };
    Frame::event((event, channel.as_str(), data), Some(id), user_id, Some(logged))
}

/// Delivers, from the log, the events of `channel` after `after` up to sequence `up_to`.
///
/// Events compacted away meanwhile cannot be delivered: this node's subscribers of the channel
/// are then asked to reconnect (4200), and their resume says `recovered:false`, as it would
/// have on a single node.
async fn fill(state: &ServerState, app: &App, channel: &ChannelName, after: EventId, up_to: u64) {
    let key = app.log_key(channel);
    let mut cursor = after;
    while cursor.seq() < up_to {
        let read_key = key.clone();
        let page = state.log.blocking(move |log| log.read(&read_key, Cursor::After(cursor), FILL_PAGE_EVENTS)).await;
        let page = match page {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, channel = channel.as_str(), "cannot fill a gap from the log; the next check retries");
                return;
            }
        };
        let Some(first) = page.events.first() else { return };
        if first.id.seq() != cursor.seq() + 1 {
            tracing::warn!(
                channel = channel.as_str(),
                "events compacted before this node delivered them: subscribers resume"
            );
            app.hub.restart_channel(channel, page.head, ErrorCode::Reconnect.as_u16());
            if let Some(metrics) = &state.metrics.cluster {
                metrics.channel_restarts.inc();
            }
            return;
        }
        for event in page.events.iter().take_while(|event| event.id.seq() <= up_to) {
            let frame = logged_frame(channel, event.id, &event.event, &event.data, event.user_id.as_deref());
            match app.hub.deliver(channel, event.id, &frame, None) {
                Delivery::Delivered => {
                    cursor = event.id;
                    if let Some(metrics) = &state.metrics.cluster {
                        metrics.gap_events.inc();
                    }
                }
                Delivery::Duplicate => cursor = event.id,
                Delivery::NotTracked | Delivery::Gap { .. } => return,
            }
        }
        if page.events.len() < FILL_PAGE_EVENTS {
            return;
        }
    }
}

/// Brings every channel this node serves up to its log's head: the tail of a channel whose last
/// bus messages were lost has no later message to reveal the gap.
pub async fn catch_up(state: &ServerState) {
    for app in state.apps.iter() {
        for (name, head) in app.hub.tracked_heads() {
            let Ok(channel) = ChannelName::parse(&name) else { continue };
            let key = app.log_key(&channel);
            let Ok(log_head) = state.log.blocking(move |log| log.head(&key)).await else { return };
            let Some(log_head) = log_head.head else { continue };
            let after = head.unwrap_or(EventId::new(0, 0));
            if log_head.seq() > after.seq() {
                fill(state, app, &channel, after, log_head.seq()).await;
            }
        }
    }
}

/// Puts this node's presence members back into the cluster's rosters (after Redis came back,
/// possibly empty). Users already there are left as they are.
async fn rejoin_presence(cluster: &Cluster, state: &ServerState) {
    for app in state.apps.iter() {
        for (channel, socket, user_id, user_info) in app.hub.presence_members() {
            let member = PresenceMember { user_id, user_info };
            // No member_added webhook here: the member is not new to the app, only to this Redis.
            match cluster.join(&app.config.id, &channel, &socket, &member, app.config.presence_max_members).await {
                Ok(Ok(_)) => {}
                Ok(Err(RosterFull)) => {
                    tracing::warn!(channel, "a member could not be put back: others filled the roster meanwhile");
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot restore presence after a reconnect; the next reconnect retries");
                    return;
                }
            }
        }
    }
}

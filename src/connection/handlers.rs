//! The Pusher protocol messages a client sends: subscribe (with replay), unsubscribe, client
//! events, sign-in, ping.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::BytesMut;
use reprise_api::frames::{self, ClientMessage, FrameError, SubscribeRequest};
use reprise_api::presence::PresenceMember;
use reprise_api::webhook::{WebhookEvent, WebhookKind};
use reprise_api::{ChannelName, ErrorCode, EventId, signature};
use serde_json::{Value, json};

use super::Connection;
use crate::cluster::messages::BusMessage;
use crate::config::ClientEventsFrom;
use crate::hub::{Frame, RosterFull, put_event_frame, put_text_frame};
use crate::publisher::{PublishError, PublishItem};

/// A replay is written in chunks of about this much: a few system calls for thousands of events,
/// without holding a large one in memory.
const REPLAY_CHUNK_BYTES: usize = 16 * 1024;
/// The `type` of a subscription refused by a presence limit (soketi's name for it).
const LIMIT_REACHED: &str = "LimitReached";

impl Connection {
    /// Handles one client frame. Returns false if the socket is gone.
    pub(super) async fn handle_text(&mut self, text: &str) -> bool {
        match frames::parse_client_message(text) {
            Ok(ClientMessage::Ping) => self.write(frames::pong()).await,
            Ok(ClientMessage::Pong) => true,
            Ok(ClientMessage::Subscribe(request)) => self.subscribe(request).await,
            Ok(ClientMessage::Unsubscribe { channel }) => {
                if self.membership.leave(&channel) {
                    self.replay_watermarks.remove(&channel);
                }
                true
            }
            Ok(ClientMessage::ClientEvent { event, channel, data }) => self.client_event(event, channel, data).await,
            Ok(ClientMessage::Signin { auth, user_data }) => self.sign_in(&auth, &user_data).await,
            Err(error) => {
                log_repeatable!(self, "bad client frame", %error);
                let code = match error {
                    FrameError::InvalidClientEvent => Some(ErrorCode::Unauthorized),
                    _ => None,
                };
                self.write(frames::error(code, &error.to_string())).await
            }
        }
    }

    async fn subscription_error(&mut self, channel: &str, kind: &str, message: &str, status: u16) -> bool {
        log_repeatable!(self, "subscription refused", channel, kind, message);
        self.write(frames::subscription_error(channel, kind, message, status)).await
    }

    async fn subscribe(&mut self, request: SubscribeRequest) -> bool {
        let channel = match ChannelName::parse(&request.channel) {
            Ok(channel) => channel,
            Err(error) => {
                return self.subscription_error(&request.channel, "InvalidChannel", &error.to_string(), 400).await;
            }
        };
        let config = &self.membership.app.config;
        if channel.requires_auth() {
            let authorised = request.auth.as_deref().is_some_and(|auth| {
                let data = if channel.is_presence() { request.channel_data.as_deref() } else { None };
                signature::verify_socket_auth(
                    &config.key,
                    &self.membership.app.signing_key,
                    &self.membership.socket.id,
                    channel.as_str(),
                    data,
                    auth,
                )
            });
            if !authorised {
                let message = "Invalid or missing auth signature for this socket and channel";
                return self.subscription_error(channel.as_str(), "AuthError", message, 401).await;
            }
        }
        if let Some(owner) = channel.server_to_user_id()
            && self.membership.user_id() != Some(owner)
        {
            let message = "Only a socket signed in as this user may subscribe to its channel";
            return self.subscription_error(channel.as_str(), "AuthError", message, 403).await;
        }
        let member = if channel.is_presence() {
            match request.channel_data.as_deref().map(PresenceMember::parse) {
                Some(Ok(member)) => Some(member),
                _ => {
                    let message = "Presence channels need channel_data with a user_id";
                    return self.subscription_error(channel.as_str(), "AuthError", message, 400).await;
                }
            }
        } else {
            None
        };
        let max_member_bytes = config.presence_max_member_size_bytes;
        if member.as_ref().is_some_and(|member| member.user_info.to_string().len() > max_member_bytes) {
            let message = format!("The maximum size of a presence member's user_info is {max_member_bytes} bytes");
            return self.subscription_error(channel.as_str(), LIMIT_REACHED, &message, 413).await;
        }
        let max_members = config.presence_max_members;
        let since = match request.since.as_deref().map(str::parse::<EventId>) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(_)) => {
                let message = "since is not a valid event id (expected a 26-character ULID)";
                return self.subscription_error(channel.as_str(), "InvalidCursor", message, 400).await;
            }
        };
        let app = Arc::clone(&self.membership.app);
        let key = app.log_key(&channel);
        if self.membership.is_subscribed(channel.as_str()) {
            // Already subscribed (a client re-sending subscribe): confirm without a second join.
            let Ok(head) = self.state.log.published_head(&app.hub, &key).await else {
                return self.log_unavailable(channel.as_str()).await;
            };
            let mut data = app.hub.roster(&channel).unwrap_or_else(|| json!({}));
            data["replay"] = json!({ "head": head });
            return self.write(frames::subscription_succeeded(channel.as_str(), &data)).await;
        }

        // Subscribe, then read: live events from here on queue in the outbox while the log is
        // read, and the watermark drops the ones the replay already contains. No gap, no duplicate.
        let cluster_member = self.state.cluster.as_ref().and(member.clone());
        let Ok(roster) = app.hub.subscribe(&channel, &self.membership.socket, member, max_members) else {
            return self.roster_full(channel.as_str(), max_members).await;
        };
        self.membership.add(channel.as_str());
        // In cluster mode the roster is the cluster's, and joining it announces the member.
        let roster = match (&self.state.cluster, cluster_member) {
            (Some(cluster), Some(member)) => {
                let socket = &self.membership.socket;
                match cluster.join(&app.config.id, channel.as_str(), socket, &member, max_members).await {
                    Ok(Ok((roster, added))) => {
                        // The user's first socket anywhere: the cluster decided it here, once.
                        if let (true, Some(webhooks)) = (added, app.hub.webhooks()) {
                            let (channel, user_id) = (channel.as_str().to_owned(), member.user_id.clone());
                            webhooks.emit(WebhookEvent::MemberAdded { channel, user_id });
                        }
                        Some(roster)
                    }
                    Ok(Err(RosterFull)) => {
                        self.membership.leave(channel.as_str());
                        return self.roster_full(channel.as_str(), max_members).await;
                    }
                    Err(error) => {
                        log!(error, self, %error, channel = channel.as_str(), "joining the cluster's roster failed");
                        self.membership.leave(channel.as_str());
                        let message = "The cluster is unavailable";
                        return self.subscription_error(channel.as_str(), "ServerError", message, 503).await;
                    }
                }
            }
            _ => roster,
        };
        let read = async {
            let head = self.state.log.published_head(&app.hub, &key).await?;
            self.state.log.replay(&key, since, head, channel.is_cache()).await
        };
        let replay = match read.await {
            Ok(replay) => replay,
            Err(error) => {
                log!(error, self, %error, channel = channel.as_str(), "reading the event log failed");
                self.membership.leave(channel.as_str());
                return self.log_unavailable(channel.as_str()).await;
            }
        };
        let mut data = roster.unwrap_or_else(|| json!({}));
        data["replay"] = replay.block(since.is_some());
        if let (Some(app), Some(_)) = (self.app_metrics(), since) {
            let resumes = if replay.recovered { &app.resumes_recovered } else { &app.resumes_not_recovered };
            resumes.inc();
            app.events_replayed.inc_by(replay.events.len() as u64);
        }
        if !self.write(frames::subscription_succeeded(channel.as_str(), &data)).await {
            return false;
        }
        // Encoded into one buffer and written a chunk at a time: a few system calls for the
        // whole replay.
        let (mut out, mut scratch) = (BytesMut::new(), Vec::new());
        for event in &replay.events {
            let fields = (event.event.as_str(), channel.as_str(), event.data.as_str());
            put_event_frame(&mut out, &mut scratch, fields, Some(event.id), event.user_id.as_deref());
            if out.len() >= REPLAY_CHUNK_BYTES {
                if !self.write_wire(&out).await {
                    return false;
                }
                out.clear();
            }
        }
        if let Some(watermark) = replay.watermark {
            self.replay_watermarks.insert(channel.as_str(), watermark);
        }
        // A client that resumed has everything; one that starts fresh or could not be
        // recovered gets the cache channel's last event, as Pusher sends it.
        if channel.is_cache() && !replay.recovered {
            match &replay.last {
                Some(last) => {
                    let fields = (last.event.as_str(), channel.as_str(), last.data.as_str());
                    put_event_frame(&mut out, &mut scratch, fields, Some(last.id), last.user_id.as_deref());
                }
                None => {
                    if let Some(webhooks) = app.hub.webhooks() {
                        webhooks.emit(WebhookEvent::CacheMiss { channel: channel.as_str().to_owned() });
                    }
                    put_text_frame(&mut out, &frames::cache_miss(channel.as_str()));
                }
            }
        }
        out.is_empty() || self.write_wire(&out).await
    }

    /// A new user refused by a full presence roster (this node's, or the cluster's).
    async fn roster_full(&mut self, channel: &str, max_members: usize) -> bool {
        let message = format!("The maximum number of members of a presence channel ({max_members}) was reached");
        self.subscription_error(channel, LIMIT_REACHED, &message, 403).await
    }

    async fn log_unavailable(&mut self, channel: &str) -> bool {
        self.subscription_error(channel, "ServerError", "The event log is unavailable", 503).await
    }

    async fn client_event(&mut self, event: String, channel: String, data: Value) -> bool {
        let config = &self.membership.app.config;
        let channel = match ChannelName::parse(&channel) {
            _ if config.accept_client_events_from == ClientEventsFrom::None => {
                let message = "Client events are disabled for this app";
                return self.write(frames::error(Some(ErrorCode::Unauthorized), message)).await;
            }
            Ok(channel) if channel.allows_client_events() => channel,
            _ => {
                let message = "Client events are only allowed on private and presence channels";
                return self.write(frames::error(Some(ErrorCode::Unauthorized), message)).await;
            }
        };
        let subscription = self.membership.app.hub.subscription(channel.as_str(), &self.membership.socket);
        if subscription.is_none() && config.accept_client_events_from == ClientEventsFrom::Members {
            let message = "Client events can only be sent to a channel the socket is subscribed to";
            return self.write(frames::error(Some(ErrorCode::Unauthorized), message)).await;
        }
        if !self.client_event_budget.take(config.client_events_per_sec) {
            log_repeatable!(self, "client event rate limit exceeded");
            if let Some(app) = self.app_metrics() {
                app.client_events_rate_limited.inc();
            }
            let message = "Client event rejected due to rate limit";
            return self.write(frames::error(Some(ErrorCode::ClientEventRateLimit), message)).await;
        }
        let user_id = subscription.flatten();
        let data = frames::client_event_data(&data);
        if let Some(webhooks) = self.membership.app.hub.webhooks()
            && webhooks.wants(WebhookKind::ClientEvent)
        {
            // Told by the node the client sent it to: once, also in cluster mode.
            webhooks.emit(WebhookEvent::ClientEvent {
                channel: channel.as_str().to_owned(),
                event: event.clone(),
                data: data.clone(),
                socket_id: self.membership.socket.id.to_string(),
                user_id: user_id.clone(),
            });
        }
        if config.log_client_events {
            let item = PublishItem {
                channel,
                event,
                data,
                except_socket: Some(self.membership.socket.id.to_string()),
                user_id,
            };
            return match self.state.publisher.publish(&self.membership.app, vec![item]).await {
                Ok(_) => true,
                Err(PublishError::NotDurable) => {
                    self.write(frames::error(None, "The event was relayed but could not be made durable")).await
                }
                Err(_) => self.write(frames::error(None, "The event could not be logged or relayed")).await,
            };
        }
        if let Some(cluster) = &self.state.cluster {
            // Every node relays it to its own subscribers (this one included), sender excluded.
            let relayed = BusMessage::ClientEvent {
                app: self.membership.app.config.id.clone(),
                channel: channel.as_str().to_owned(),
                event,
                data,
                user_id,
                except_socket: self.membership.socket.id.to_string(),
            };
            if cluster.publish(&relayed).await.is_err() {
                return self
                    .write(frames::error(None, "The event could not be relayed: the cluster is unavailable"))
                    .await;
            }
            return true;
        }
        let frame = Frame::event((&event, channel.as_str(), &data), None, user_id.as_deref(), None);
        self.membership.app.hub.publish(&channel, &frame, Some(&self.membership.socket.id));
        true
    }

    /// `pusher:signin`: checks the user signature and remembers the user for
    /// `terminate_connections` and watchlists. A refusal is `pusher:error` 4009; the socket stays
    /// open. The watchlist's status follows the `signin_success` (it is queued, and the success
    /// is written first).
    async fn sign_in(&mut self, auth: &str, user_data: &str) -> bool {
        let config = &self.membership.app.config;
        if !signature::verify_user_auth(
            &config.key,
            &self.membership.app.signing_key,
            &self.membership.socket.id,
            user_data,
            auth,
        ) {
            log_repeatable!(self, "signin refused: invalid signature");
            return self.write(frames::error(Some(ErrorCode::Unauthorized), "Invalid signin signature")).await;
        }
        let user = match reprise_api::user::parse_user_data(user_data) {
            Ok(user) => user,
            Err(error) => {
                log_repeatable!(self, "signin refused", %error);
                return self.write(frames::error(Some(ErrorCode::Unauthorized), &error.to_string())).await;
            }
        };
        for channel in self.membership.sign_in(user.id.clone(), user.watchlist.clone()) {
            log!(info, self, channel, "signed in as another user: left the previous user's channel");
            self.replay_watermarks.remove(&channel);
        }
        if let Some(cluster) = self.state.cluster.clone() {
            self.membership.signing_in_cluster();
            let app = Arc::clone(&self.membership.app);
            match cluster.sign_in(&app.config.id, &self.membership.socket, &user.id, &user.watchlist).await {
                Ok(snapshot) => {
                    let online: HashSet<String> = snapshot.online.into_iter().collect();
                    app.hub.watchlist_snapshot(&self.membership.socket, snapshot.version, &online);
                }
                Err(error) => {
                    log!(error, self, %error, "recording a signin in the cluster failed");
                    self.membership.sign_out();
                    let message = "The signin could not be recorded: the cluster is unavailable";
                    return self.write(frames::error(None, message)).await;
                }
            }
        }
        self.write(frames::signin_success(user_data)).await
    }
}

//! What one connection holds elsewhere in the server (its subscriptions and presence places, its
//! sign-in, its quota slot), given back in `Drop`: however the connection ends, a panic in its
//! handling included, it leaves no ghost member, subscription or slot behind.

use std::sync::Arc;

use reprise_api::ChannelName;
use reprise_api::webhook::WebhookEvent;

use super::admission::ConnectionSlot;
use crate::apps::App;
use crate::cluster::Cluster;
use crate::hub::Socket;

pub struct Membership {
    pub app: Arc<App>,
    pub socket: Arc<Socket>,
    /// The channels this socket is subscribed to.
    ///
    /// A `Vec`, not a set: a socket holds a handful of channels, and an empty `HashSet` that gets
    /// its first entry allocates four buckets, four times what a one-entry `Vec` takes, on every
    /// idle socket. Lookups are linear, which is what a handful costs anyway.
    channels: Vec<String>,
    /// Its sign-in, once it signed in: boxed, since most sockets never do and every socket's
    /// task would carry the room.
    sign_in: Option<Box<SignIn>>,
    /// Held for the connection's life: dropping it gives the app's connection slot back.
    _slot: ConnectionSlot,
    /// In cluster mode: told about subscription counts and presence places this socket gives up.
    cluster: Option<Arc<Cluster>>,
}

#[derive(Default)]
struct SignIn {
    /// The user this socket signed in as (`pusher:signin`), if any.
    user_id: Option<String>,
    /// Whether a sign-in of this socket may be recorded in the cluster (the script was sent,
    /// whether or not its answer came back): then leaving signs it out there.
    in_cluster: bool,
}

impl Membership {
    pub fn new(app: Arc<App>, socket: Arc<Socket>, slot: ConnectionSlot, cluster: Option<Arc<Cluster>>) -> Self {
        Membership { app, socket, channels: Vec::new(), sign_in: None, _slot: slot, cluster }
    }

    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.channels.iter().any(|c| c == channel)
    }

    /// Records a subscription the hub has registered.
    pub fn add(&mut self, channel: &str) {
        if !self.is_subscribed(channel) {
            // Most sockets hold one channel: room for one (24 bytes), where a first push would
            // make room for four (96).
            if self.channels.is_empty() {
                self.channels.reserve_exact(1);
            }
            self.channels.push(channel.to_owned());
            if let Some(cluster) = &self.cluster {
                cluster.count_changed(&self.app.config.id, channel);
            }
        }
    }

    /// Leaves `channel` in the hub too. Returns whether the socket was subscribed.
    pub fn leave(&mut self, channel: &str) -> bool {
        let Some(index) = self.channels.iter().position(|c| c == channel) else { return false };
        self.channels.swap_remove(index);
        self.app.hub.unsubscribe(channel, &self.socket);
        self.left_in_cluster(channel);
        true
    }

    /// Tells the cluster (in cluster mode) that this socket left `channel`: its count, and its
    /// place in the cluster's presence roster (in the background: leaving never waits on Redis;
    /// if Redis cannot be told now, the sweep of dead places does it later).
    fn left_in_cluster(&self, channel: &str) {
        let Some(cluster) = &self.cluster else { return };
        cluster.count_changed(&self.app.config.id, channel);
        if !channel.starts_with("presence-") {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (cluster, app, channel) = (Arc::clone(cluster), Arc::clone(&self.app), channel.to_owned());
        let socket_key = cluster.socket_key(&self.socket);
        runtime.spawn(async move {
            match cluster.leave(&app.config.id, &channel, &socket_key).await {
                // The user's last socket anywhere: the cluster decided it here, once.
                Ok(Some(user_id)) => {
                    if let Some(webhooks) = app.hub.webhooks() {
                        webhooks.emit(WebhookEvent::MemberRemoved { channel, user_id });
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "could not leave the cluster's roster; the next reconnect or sweep retries");
                }
            }
        });
    }

    pub fn user_id(&self) -> Option<&str> {
        self.sign_in.as_ref()?.user_id.as_deref()
    }

    /// Records a sign-in as `user_id` watching `watchlist`, replacing an earlier one. Signing in
    /// as another user leaves the earlier user's `#server-to-user-` channel, whose events are
    /// that user's alone; returns the channels left.
    pub fn sign_in(&mut self, user_id: String, watchlist: Vec<String>) -> Vec<String> {
        let previous =
            self.sign_in.as_mut().and_then(|sign_in| sign_in.user_id.take()).filter(|previous| *previous != user_id);
        let left: Vec<String> = match &previous {
            Some(previous) => ChannelName::for_user(previous)
                .ok()
                .filter(|channel| self.is_subscribed(channel.as_str()))
                .map(|channel| channel.as_str().to_owned())
                .into_iter()
                .collect(),
            None => Vec::new(),
        };
        for channel in &left {
            self.leave(channel);
        }
        self.app.hub.sign_in(&user_id, &self.socket, previous.as_deref(), watchlist);
        self.sign_in.get_or_insert_default().user_id = Some(user_id);
        left
    }

    /// Forgets this node's record of the sign-in (one the cluster could not record).
    pub fn sign_out(&mut self) {
        if let Some(user_id) = self.sign_in.as_mut().and_then(|sign_in| sign_in.user_id.take()) {
            self.app.hub.sign_out(&user_id, &self.socket);
        }
    }

    /// Notes that the cluster may hold a sign-in of this socket from now on.
    pub fn signing_in_cluster(&mut self) {
        self.sign_in.get_or_insert_default().in_cluster = true;
    }

    /// Signs this socket out of the cluster, in the background (leaving never waits on Redis;
    /// if Redis cannot be told now, the reconcile after a reconnect, or the sweep of a dead
    /// node, does it).
    fn signed_out_in_cluster(&self) {
        let in_cluster = self.sign_in.as_ref().is_some_and(|sign_in| sign_in.in_cluster);
        let Some(cluster) = self.cluster.as_ref().filter(|_| in_cluster) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (cluster, app) = (Arc::clone(cluster), self.app.config.id.clone());
        let serial = [self.socket.serial().to_string()];
        runtime.spawn(async move {
            if let Err(error) = cluster.sign_out(&app, &cluster.node_id, &serial).await {
                tracing::warn!(%error, "could not sign out in the cluster; the next reconnect retries");
            }
        });
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.socket.close_outbox();
        for channel in std::mem::take(&mut self.channels) {
            self.app.hub.unsubscribe(&channel, &self.socket);
            self.left_in_cluster(&channel);
        }
        self.sign_out();
        self.signed_out_in_cluster();
    }
}

#[cfg(test)]
mod tests {
    use reprise_api::ChannelName;
    use reprise_api::presence::PresenceMember;
    use reprise_api::signature::SigningKey;
    use serde_json::Value;

    use super::*;
    use crate::config::AppConfig;
    use crate::connection::admission::reserve_slot;
    use crate::hub::{AppHub, SocketId};

    /// A connection whose handling panics still leaves its presence channel (the others get
    /// `member_removed`), its sign-in and its connection slot.
    #[test]
    fn a_panicking_connection_leaves_no_ghost_member() {
        let config = AppConfig::default();
        let signing_key = SigningKey::new(&config.secret);
        let app = Arc::new(App { config, signing_key, hub: Arc::new(AppHub::default()), metrics: None });
        let room = ChannelName::parse("presence-room").unwrap();
        let watcher = Socket::new(SocketId::fixed("1.1"), 16);
        let as_member = |id: &str| Some(PresenceMember { user_id: id.into(), user_info: Value::Null });
        app.hub.subscribe(&room, &watcher, as_member("watcher"), usize::MAX).unwrap();

        let app_in_task = Arc::clone(&app);
        let room_in_task = room.clone();
        let panicked = std::thread::spawn(move || {
            let socket = Socket::new(SocketId::fixed("2.2"), 16);
            let slot = reserve_slot(&app_in_task).unwrap();
            let mut membership = Membership::new(Arc::clone(&app_in_task), Arc::clone(&socket), slot, None);
            app_in_task.hub.subscribe(&room_in_task, &socket, as_member("ghost"), usize::MAX).unwrap();
            membership.add(room_in_task.as_str());
            membership.sign_in("ghost".into(), Vec::new());
            panic!("a bug in the middle of handling a frame");
        })
        .join();
        assert!(panicked.is_err());

        assert_eq!(app.hub.users("presence-room"), vec!["watcher".to_owned()]);
        let frames: Vec<_> = std::iter::from_fn(|| watcher.pop_frame()).collect();
        assert!(frames.last().unwrap().text.contains("member_removed"), "{frames:?}");
        assert_eq!(app.hub.connections.load(std::sync::atomic::Ordering::Acquire), 0);
        assert_eq!(app.hub.terminate_user("ghost", 4009), 0, "the sign-in is gone too");
    }
}

//! Cluster-wide channel occupancy, for the `channel_occupied` / `channel_vacated` webhooks, which
//! must describe the whole cluster (first subscriber anywhere, last anywhere) and be sent once:
//!
//! - `{p}:occupancy:{app}:{channel}`: the nodes with at least one subscriber of the channel;
//! - `{p}:occupied_channels:{app}`: the channels with such a set, for the sweep;
//! - `{p}:subcount:{app}:{channel}`: node -> its subscriptions to the channel, for the
//!   `subscription_count` webhook (kept only for apps that want it).
//!
//! A node reports only its own transitions (its first local subscriber, its last), in the order
//! they happened (one relay task per app), with a Lua script that also says whether the cluster
//! as a whole changed: the one node whose report took the set from empty to one node (or from
//! one to empty) tells its webhooks. A dead node's places are removed by the census sweep, like
//! its presence, and whichever node removes the last one tells `channel_vacated`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use reprise_api::webhook::WebhookEvent;
use reprise_api::webhook::WebhookKind;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{Cluster, ClusterError};
use crate::webhooks::Clustered;
use crate::webhooks::batcher::Departures;
use crate::webhooks::sink::WebhookSink;

/// KEYS: the channel's nodes, the occupied channels. ARGV: node, channel. 1 if the channel was
/// vacant everywhere before.
static OCCUPY: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
            redis.call('SADD', KEYS[2], ARGV[2])
            if redis.call('SCARD', KEYS[1]) == 1 then return 1 end
        end
        return 0
        ",
    )
});

/// KEYS: the channel's nodes, the occupied channels. ARGV: node, channel. 1 if the channel is
/// vacant everywhere now.
static VACATE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('SREM', KEYS[1], ARGV[1]) == 1 and redis.call('SCARD', KEYS[1]) == 0 then
            redis.call('SREM', KEYS[2], ARGV[2])
            return 1
        end
        return 0
        ",
    )
});

/// KEYS: the channel's counts. ARGV: node, its count. Records the node's count and returns the
/// cluster's.
static COUNT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if ARGV[2] == '0' then
            redis.call('HDEL', KEYS[1], ARGV[1])
        else
            redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        end
        local total = 0
        for _, count in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(count) end
        return total
        ",
    )
});

impl Cluster {
    /// Records `node`'s subscriptions to `channel` and returns the cluster's, for the
    /// `subscription_count` webhook: each change is told once, by the node where it happened,
    /// with the cluster's count at that moment.
    async fn count_subscriptions(&self, app: &str, channel: &str, node: &str, count: u64) -> Result<u64, ClusterError> {
        let mut redis = self.connection();
        let key = self.key(&["subcount", app, channel]);
        let result: Result<u64, _> = COUNT.key(key).arg(node).arg(count).invoke_async(&mut redis).await;
        self.observe(result)
    }

    fn occupancy_keys(&self, app: &str, channel: &str) -> [String; 2] {
        [self.key(&["occupancy", app, channel]), self.key(&["occupied_channels", app])]
    }

    /// Records that `node` has subscribers of `channel`; true if nobody had before.
    async fn occupy(&self, app: &str, channel: &str, node: &str) -> Result<bool, ClusterError> {
        let [nodes, channels] = self.occupancy_keys(app, channel);
        let mut redis = self.connection();
        let result: Result<u8, _> =
            OCCUPY.key(nodes).key(channels).arg(node).arg(channel).invoke_async(&mut redis).await;
        Ok(self.observe(result)? == 1)
    }

    /// Records that `node` has no subscriber of `channel` left; true if nobody has now.
    async fn vacate(&self, app: &str, channel: &str, node: &str) -> Result<bool, ClusterError> {
        let [nodes, channels] = self.occupancy_keys(app, channel);
        let mut redis = self.connection();
        let result: Result<u8, _> =
            VACATE.key(nodes).key(channels).arg(node).arg(channel).invoke_async(&mut redis).await;
        Ok(self.observe(result)? == 1)
    }

    /// Whether any node has subscribers of `channel` now.
    pub async fn is_occupied(&self, app: &str, channel: &str) -> Result<bool, ClusterError> {
        let [nodes, _] = self.occupancy_keys(app, channel);
        let mut redis = self.connection();
        let result: Result<usize, _> = redis::cmd("SCARD").arg(nodes).query_async(&mut redis).await;
        Ok(self.observe(result)? > 0)
    }

    /// Removes the places (and counts) of nodes not in `live_nodes`, telling `webhooks` of each
    /// channel left vacant and of its new count. Returns how many places were removed.
    pub async fn sweep_occupancy(
        &self,
        app: &str,
        live_nodes: &[String],
        webhooks: Option<&WebhookSink>,
    ) -> Result<usize, ClusterError> {
        let mut redis = self.connection();
        let channels_key = self.key(&["occupied_channels", app]);
        let channels: Result<Vec<String>, _> = redis::cmd("SMEMBERS").arg(&channels_key).query_async(&mut redis).await;
        let mut removed = 0;
        for channel in self.observe(channels)? {
            let [nodes_key, _] = self.occupancy_keys(app, &channel);
            let nodes: Result<Vec<String>, _> = redis::cmd("SMEMBERS").arg(&nodes_key).query_async(&mut redis).await;
            for node in self.observe(nodes)? {
                if live_nodes.contains(&node) {
                    continue;
                }
                removed += 1;
                let vacated = self.vacate(app, &channel, &node).await?;
                let Some(webhooks) = webhooks else { continue };
                if vacated {
                    webhooks.emit(WebhookEvent::ChannelVacated { channel: channel.clone() });
                }
                if webhooks.wants(WebhookKind::SubscriptionCount) {
                    let subscription_count = self.count_subscriptions(app, &channel, &node, 0).await?;
                    webhooks.emit(WebhookEvent::SubscriptionCount { channel: channel.clone(), subscription_count });
                }
            }
        }
        Ok(removed)
    }
}

/// Reports this node's occupancy and count changes of one app's channels (from its hub, in order)
/// to the cluster, and tells `webhooks` the ones that changed the cluster's (every count change,
/// with the cluster's count). Ends when the hub is gone.
pub async fn relay(
    cluster: Arc<Cluster>,
    app_id: String,
    mut changes_rx: mpsc::Receiver<WebhookEvent>,
    webhooks: Arc<WebhookSink>,
) {
    // Set while Redis fails, so that is logged once per outage, not once per subscribe.
    let mut failing = false;
    while let Some(change) = changes_rx.recv().await {
        let node = &cluster.node_id;
        let decided = match &change {
            WebhookEvent::ChannelOccupied { channel } => cluster.occupy(&app_id, channel, node).await,
            WebhookEvent::ChannelVacated { channel } => cluster.vacate(&app_id, channel, node).await,
            WebhookEvent::SubscriptionCount { channel, subscription_count: here } => {
                match cluster.count_subscriptions(&app_id, channel, node, *here).await {
                    Ok(subscription_count) => {
                        webhooks.emit(WebhookEvent::SubscriptionCount { channel: channel.clone(), subscription_count });
                        failing = false;
                        continue;
                    }
                    Err(error) => Err(error),
                }
            }
            _ => continue,
        };
        match decided {
            Ok(cluster_changed) => {
                failing = false;
                if cluster_changed {
                    webhooks.emit(change);
                }
            }
            // Redis is failing (reported to health): this change is not counted, so the channel's
            // occupancy webhooks may be missing or late until it settles (docs/webhooks.md).
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, app = %app_id, "cannot record channel occupancy in the cluster; webhooks about it \
                    may be missing until Redis answers again");
            }
            Err(_) => {}
        }
    }
}

/// In cluster mode a held departure is confirmed against the cluster when its hold ends: a user
/// or channel back on another node within the hold is not reported gone.
pub struct ClusterDepartures {
    pub cluster: Arc<Cluster>,
    pub app_id: String,
}

impl Departures for ClusterDepartures {
    fn still_gone<'a>(&'a self, event: &'a WebhookEvent) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        Box::pin(async move {
            let back = match event {
                WebhookEvent::ChannelVacated { channel } => self.cluster.is_occupied(&self.app_id, channel).await,
                WebhookEvent::MemberRemoved { channel, user_id } => {
                    self.cluster.is_present(&self.app_id, channel, user_id).await
                }
                _ => Ok(false),
            };
            // Not knowing, send it: a departure is never swallowed because Redis was unreachable.
            !back.unwrap_or(false)
        })
    }
}

/// What the webhooks need of the cluster: departures confirmed against it, occupancy relayed.
pub struct ClusterWebhooks {
    pub cluster: Arc<Cluster>,
    /// Where the relays run (they end when the hubs, which feed them, are dropped).
    pub relays: TaskTracker,
}

impl Clustered for ClusterWebhooks {
    fn departures(&self, app_id: &str) -> Arc<dyn Departures> {
        Arc::new(ClusterDepartures { cluster: Arc::clone(&self.cluster), app_id: app_id.to_owned() })
    }

    fn relay(&self, app_id: &str, sink: Arc<WebhookSink>) -> Arc<WebhookSink> {
        let mut kinds = WebhookKind::ChannelOccupied.bit() | WebhookKind::ChannelVacated.bit();
        if sink.wants(WebhookKind::SubscriptionCount) {
            kinds |= WebhookKind::SubscriptionCount.bit();
        }
        let (relay_sink, changes_rx) = WebhookSink::new(app_id, kinds, sink.stats());
        self.relays.spawn(relay(Arc::clone(&self.cluster), app_id.to_owned(), changes_rx, sink));
        Arc::new(relay_sink)
    }
}

//! Cluster mode: equal nodes that share the log, presence and fan-out through Redis.
//!
//! - The log is shared (`reprise_storage::RedisLog`): the committer of whichever node took a
//!   publish appends it there with one Lua script that also announces it on the bus.
//! - Every node fans out what the bus announces, in sequence order per channel, and fills any jump
//!   from the log first (`bus`), so a lost pub/sub message is never a silent gap.
//! - Presence rosters are cluster-wide (`presence`): `member_added` when a user's first socket
//!   anywhere joins, `member_removed` when their last one leaves or its node dies.
//! - Who is signed in is cluster-wide too (`signins`): watchlists hear `online` when a user's
//!   first socket anywhere signs in and `offline` when their last one goes or its node dies.
//! - Subscription counts and node liveness are published for the HTTP API (`census`), and
//!   connection counts for apps' `max_connections` (`connections`).
//! - Channel occupancy is cluster-wide for the webhooks (`occupancy`): occupied on the first
//!   subscriber anywhere, vacated on the last, decided once.
//! - Chores that one node per round should do, such as retention, go by turns (`turns`).
//!
//! A node never talks to another node directly: everything goes through Redis.

pub mod bus;
pub mod census;
pub mod connections;
pub mod messages;
pub mod occupancy;
pub mod presence;
pub mod signins;
pub mod turns;

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use reprise_api::EventId;
use reprise_storage::{EventLog, NewEvent, StorageError};

use self::messages::BusMessage;
use crate::config::ClusterConfig;
use crate::health::Health;
use crate::hub::Socket;

/// The shared log as the committer uses it in cluster mode: an append that also announces every
/// event on the bus, atomically, so the bus and the log never disagree on order.
pub trait SharedLog: EventLog {
    fn append_announced(
        &self,
        events: &[NewEvent],
        except_sockets: &[Option<String>],
    ) -> Result<Vec<EventId>, StorageError>;
}

impl SharedLog for reprise_storage::RedisLog {
    fn append_announced(
        &self,
        events: &[NewEvent],
        except_sockets: &[Option<String>],
    ) -> Result<Vec<EventId>, StorageError> {
        reprise_storage::RedisLog::append_announced(self, events, except_sockets)
    }
}

/// How many times, and how far apart, [`Cluster::command_connection_ready`] pings.
const COMMAND_READY_ATTEMPTS: u32 = 20;
const COMMAND_READY_DELAY: Duration = Duration::from_millis(100);

/// The `health` component Redis problems are reported under.
/// Opens the cluster's shared log in Redis as `settings` say (URL, prefix, timeout, idle
/// channels' expiry); blocking, on `handle`'s runtime. Serving nodes add `wait_replicas`.
pub fn open_log(
    settings: &ClusterConfig,
    handle: tokio::runtime::Handle,
) -> Result<reprise_storage::RedisLog, StorageError> {
    let timeout = Duration::from_secs(settings.redis_timeout_secs);
    Ok(reprise_storage::RedisLog::connect_with_timeout(&settings.redis_url, &settings.prefix, handle, timeout)?
        .with_idle_ttl(Duration::from_secs(settings.channel_idle_ttl_secs)))
}

pub const HEALTH_COMPONENT: &str = "redis";

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct ClusterError(#[from] redis::RedisError);

/// This node's handle on the cluster.
pub struct Cluster {
    /// Random per process: names this node's sockets and heartbeat in Redis.
    pub node_id: String,
    prefix: String,
    /// For the bus subscription, which needs a connection of its own.
    client: redis::Client,
    /// Multiplexed and reconnecting: every other command.
    redis: ConnectionManager,
    health: Arc<Health>,
    /// Channels whose subscription count changed since the census last wrote this node's counts.
    /// A std Mutex: one insert per subscribe, one swap per census round.
    dirty_counts: Mutex<HashSet<(String, String)>>,
    /// The live nodes at the last heartbeat (`census`).
    live_nodes: Mutex<Vec<String>>,
    /// Whether that heartbeat's view was complete: false just after Redis restarted empty,
    /// until every live node has had time to send a heartbeat (no sweep meanwhile).
    live_view_complete: AtomicBool,
}

impl Cluster {
    /// Connects to Redis (failing if it cannot be reached within the timeout).
    pub async fn connect(config: &ClusterConfig, health: Arc<Health>) -> Result<Cluster, ClusterError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let timeout = Duration::from_secs(config.redis_timeout_secs);
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_max_delay(Duration::from_secs(1));
        let redis = ConnectionManager::new_with_config(client.clone(), manager_config).await?;
        let node_id = format!("{:016x}", rand::random::<u64>());
        Ok(Cluster {
            node_id,
            prefix: config.prefix.clone(),
            client,
            redis,
            health,
            dirty_counts: Mutex::new(HashSet::new()),
            live_nodes: Mutex::new(Vec::new()),
            live_view_complete: AtomicBool::new(false),
        })
    }

    /// The prefix of every key the cluster keeps in Redis.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A key under the cluster's prefix.
    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    pub fn bus_channel(&self) -> String {
        self.key(&["bus"])
    }

    /// How a socket of this node is named in the cluster's presence records.
    pub fn socket_key(&self, socket: &Socket) -> String {
        format!("{}:{}", self.node_id, socket.serial())
    }

    /// A connection for one command (a cheap clone of the multiplexed one).
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// Announces `message` to every node (this one included).
    pub async fn publish(&self, message: &BusMessage) -> Result<(), ClusterError> {
        let mut redis = self.connection();
        let result: Result<(), _> =
            redis::cmd("PUBLISH").arg(self.bus_channel()).arg(message.to_json()).query_async(&mut redis).await;
        self.observe(result)
    }

    /// Pings Redis on the command connection until it answers (at most `COMMAND_READY_ATTEMPTS`
    /// tries, a little apart). After Redis restarted, the connection manager learns that its
    /// connection is gone only from the first command that fails on it, and reconnects then:
    /// without this, the first step of restoring a node's state would be that failed command.
    pub async fn command_connection_ready(&self) -> bool {
        for _ in 0..COMMAND_READY_ATTEMPTS {
            let mut redis = self.connection();
            let pinged: Result<String, _> = redis::cmd("PING").query_async(&mut redis).await;
            if pinged.is_ok() {
                return true;
            }
            tokio::time::sleep(COMMAND_READY_DELAY).await;
        }
        false
    }

    /// Reports a Redis failure to `health` (cleared by the next success) and passes it on.
    fn observe<T>(&self, result: Result<T, redis::RedisError>) -> Result<T, ClusterError> {
        match result {
            Ok(value) => {
                self.health.clear(HEALTH_COMPONENT);
                Ok(value)
            }
            Err(error) => {
                self.health.report(HEALTH_COMPONENT, format!("Redis is unreachable or failing: {error}"));
                Err(ClusterError(error))
            }
        }
    }

    /// Notes that this node's subscription count of `channel` changed.
    pub fn count_changed(&self, app: &str, channel: &str) {
        self.dirty_counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((app.to_owned(), channel.to_owned()));
    }

    fn take_dirty_counts(&self) -> HashSet<(String, String)> {
        std::mem::take(&mut *self.dirty_counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

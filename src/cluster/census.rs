//! Which nodes are alive, and how many subscriptions each has per channel, for the HTTP API's
//! cluster-wide answers; and the maintenance round that keeps both (and presence) current.
//!
//! - `{p}:nodes`: node id -> its last heartbeat (Redis time, ms). A node is alive while its
//!   heartbeat is younger than [`NODE_DEAD_AFTER`].
//! - `{p}:subs:{app}`: `{node}|{channel}` -> that node's subscriptions to the channel, written
//!   once a second for the channels whose count changed.
//!
//! Counts of other nodes are up to a second old; this node's own are exact (read from its hub).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Cluster, ClusterError};
use crate::ServerState;

/// How often the maintenance round runs: counts are written each round.
const ROUND: Duration = Duration::from_secs(1);
/// Heartbeats, the sweep of dead nodes' presence and sign-ins, and the check for lost bus messages run every
/// this many rounds.
const HEARTBEAT_ROUNDS: u32 = 2;
const SWEEP_ROUNDS: u32 = 2;
/// A node whose heartbeat is older than this is dead: its presence members are removed (with
/// `member_removed`) and its counts no longer count. Three missed heartbeats (every 2 s), so a
/// slow round is not a death; with a sweep every 2 s, a killed node's members are gone within
/// about 9 s.
pub const NODE_DEAD_AFTER: Duration = Duration::from_secs(6);

/// KEYS: nodes, since. ARGV: node id, dead-after ms. Records this node's heartbeat (Redis time,
/// so nodes' clocks need not agree) and returns whether the view is complete (1 or 0), then the
/// live nodes.
///
/// `since` is when the nodes hash was begun. A Redis that restarted empty knows no heartbeat
/// until each node sends its next one: for the first dead-after period, a node missing from the
/// hash may well be alive, so the view is incomplete and nothing may be swept on its account.
static HEARTBEAT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        if redis.call('EXISTS', KEYS[2]) == 0 then
            redis.call('SET', KEYS[2], string.format('%.0f', now))
        end
        local complete = 0
        if now - tonumber(redis.call('GET', KEYS[2])) > tonumber(ARGV[2]) then
            complete = 1
        end
        redis.call('HSET', KEYS[1], ARGV[1], string.format('%.0f', now))
        local all = redis.call('HGETALL', KEYS[1])
        local live = {}
        for i = 1, #all, 2 do
            local age = now - tonumber(all[i + 1])
            if age <= tonumber(ARGV[2]) then
                table.insert(live, all[i])
            elseif age > 100 * tonumber(ARGV[2]) then
                redis.call('HDEL', KEYS[1], all[i])
            end
        end
        return {complete, live}
        ",
    )
});

impl Cluster {
    fn nodes_key(&self) -> String {
        self.key(&["nodes"])
    }

    fn subs_key(&self, app: &str) -> String {
        self.key(&["subs", app])
    }

    /// Records this node's heartbeat; returns the live nodes (this one included).
    pub async fn heartbeat(&self) -> Result<Vec<String>, ClusterError> {
        let mut redis = self.connection();
        let dead_after_ms = u64::try_from(NODE_DEAD_AFTER.as_millis()).expect("seconds fit");
        let result = HEARTBEAT
            .key(self.nodes_key())
            .key(self.key(&["nodes_since"]))
            .arg(&self.node_id)
            .arg(dead_after_ms)
            .invoke_async(&mut redis)
            .await;
        let (complete, live): (u8, Vec<String>) = match self.observe(result) {
            Ok(view) => view,
            Err(error) => {
                // Not knowing who is alive, presume nobody: no sweep until a heartbeat succeeds.
                self.live_nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
                self.live_view_complete.store(false, Ordering::Relaxed);
                return Err(error);
            }
        };
        *self.live_nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = live.clone();
        self.live_view_complete.store(complete == 1, Ordering::Relaxed);
        Ok(live)
    }

    /// Whether `live`, the last heartbeat's view, may be trusted to say who is dead (see
    /// [`HEARTBEAT`]).
    fn may_sweep(&self, live: &[String]) -> bool {
        self.live_view_complete.load(Ordering::Relaxed) && live.contains(&self.node_id)
    }

    /// The live nodes at the last heartbeat (empty if it failed).
    pub fn live_nodes(&self) -> Vec<String> {
        self.live_nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The other nodes alive at the last heartbeat.
    fn other_live_nodes(&self) -> Vec<String> {
        let live = self.live_nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        live.iter().filter(|node| **node != self.node_id).cloned().collect()
    }

    /// Writes this node's counts of the channels whose count changed.
    async fn write_counts(&self, state: &ServerState) -> Result<(), ClusterError> {
        let dirty = self.take_dirty_counts();
        if dirty.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (app_id, channel) in &dirty {
            let Some(app) = state.apps.by_id(app_id) else { continue };
            let field = format!("{}|{channel}", self.node_id);
            match app.hub.counts(channel).subscriptions {
                0 => pipe.hdel(self.subs_key(app_id), field),
                count => pipe.hset(self.subs_key(app_id), field, count),
            };
        }
        let mut redis = self.connection();
        let result: Result<(), _> = pipe.query_async(&mut redis).await;
        if result.is_err() {
            // Written again next round.
            self.dirty_counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(dirty);
        }
        self.observe(result)
    }

    /// Subscriptions per channel on the other live nodes (add this node's own from its hub).
    pub async fn remote_counts(&self, app: &str) -> Result<HashMap<String, usize>, ClusterError> {
        let mut redis = self.connection();
        let result: Result<HashMap<String, usize>, _> =
            redis::cmd("HGETALL").arg(self.subs_key(app)).query_async(&mut redis).await;
        let others = self.other_live_nodes();
        let mut counts = HashMap::new();
        for (field, count) in self.observe(result)? {
            let Some((node, channel)) = field.split_once('|') else { continue };
            if others.iter().any(|live| live == node) {
                *counts.entry(channel.to_owned()).or_default() += count;
            }
        }
        Ok(counts)
    }

    /// One channel's subscriptions on the other live nodes.
    pub async fn remote_count(&self, app: &str, channel: &str) -> Result<usize, ClusterError> {
        let others = self.other_live_nodes();
        if others.is_empty() {
            return Ok(0);
        }
        let fields: Vec<String> = others.iter().map(|node| format!("{node}|{channel}")).collect();
        let mut redis = self.connection();
        let result: Result<Vec<Option<usize>>, _> =
            redis::cmd("HMGET").arg(self.subs_key(app)).arg(fields).query_async(&mut redis).await;
        Ok(self.observe(result)?.into_iter().flatten().sum())
    }

    /// Forgets the counts of nodes that are not alive.
    async fn sweep_counts(&self, app: &str, live: &[String]) -> Result<(), ClusterError> {
        let mut redis = self.connection();
        let fields: Result<Vec<String>, _> = redis::cmd("HKEYS").arg(self.subs_key(app)).query_async(&mut redis).await;
        let dead: Vec<String> = self
            .observe(fields)?
            .into_iter()
            .filter(|field| field.split_once('|').is_some_and(|(node, _)| !live.iter().any(|l| l == node)))
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        let result: Result<(), _> = redis::cmd("HDEL").arg(self.subs_key(app)).arg(dead).query_async(&mut redis).await;
        self.observe(result)
    }
}

/// The maintenance round, until shutdown: counts every second; heartbeat; connection counts
/// (`connections`); then the sweep of dead nodes (presence, sign-ins and counts) and the check
/// that no channel missed the tail of its log.
pub async fn run(cluster: Arc<Cluster>, state: Arc<ServerState>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(ROUND);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u32 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        round = round.wrapping_add(1);
        // Failures are reported to health by `observe`; the next round tries again.
        let _ = cluster.write_counts(&state).await;
        if round % HEARTBEAT_ROUNDS == 1 {
            let _ = cluster.heartbeat().await;
        }
        let _ = cluster.share_connection_counts(&state).await;
        if round % SWEEP_ROUNDS != 1 {
            continue;
        }
        // Only with a fresh, complete view that includes this node: a stale, empty or partial
        // one (just after Redis restarted empty) would sweep away live members, this node's own
        // included.
        let live = cluster.live_nodes();
        if cluster.may_sweep(&live) {
            for app in state.apps.iter() {
                let app_id = &app.config.id;
                match cluster.sweep_presence(app_id, &live, app.hub.webhooks()).await {
                    Ok(0) | Err(_) => {}
                    Ok(removed) => tracing::info!(app = %app_id, removed, "removed the presence of dead nodes"),
                }
                match cluster.sweep_sign_ins(app_id, &live).await {
                    Ok(0) | Err(_) => {}
                    Ok(removed) => tracing::info!(app = %app_id, removed, "signed out the sockets of dead nodes"),
                }
                // Only apps with webhooks keep occupancy in Redis.
                if let Some(webhooks) = app.hub.webhooks() {
                    let _ = cluster.sweep_occupancy(app_id, &live, Some(webhooks)).await;
                }
                let _ = cluster.sweep_counts(app_id, &live).await;
                let _ = cluster.sweep_connection_counts(app_id, &live).await;
            }
        }
        super::bus::catch_up(&state).await;
    }
}

//! An app's open connections across the cluster, for its `max_connections` and for
//! `GET /apps/{id}/connections`. Per app, `{p}:conns:{app}` holds node id -> that node's open
//! connections. Every census round (1 s) each node writes its own count and reads the others',
//! and both admission and the endpoint add the other live nodes' sum to this node's exact count
//! (`AppHub::connections_elsewhere`). Nothing on the way of a connection waits on Redis.
//!
//! So the others' figures are up to about two rounds old (written up to a round before this
//! node reads them, read up to a round before a connection arrives): connections opened at the
//! same time on several nodes can take the app over its limit by what the other nodes admitted
//! in those last ~2 s, never more. A dead node's share stops counting once it is presumed dead
//! (`NODE_DEAD_AFTER`), and the sweep deletes it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use super::{Cluster, ClusterError};
use crate::ServerState;

impl Cluster {
    fn connections_key(&self, app: &str) -> String {
        self.key(&["conns", app])
    }

    /// Writes this node's connection count of every app, and takes the other live nodes' counts
    /// (one round trip for all apps). Without a fresh view of the live nodes (the last heartbeat
    /// failed), or if Redis fails, the last figures are kept.
    pub async fn share_connection_counts(&self, state: &ServerState) -> Result<(), ClusterError> {
        if state.apps.iter().next().is_none() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for app in state.apps.iter() {
            let key = self.connections_key(&app.config.id);
            pipe.hset(&key, &self.node_id, app.hub.connections.load(Ordering::Relaxed)).ignore();
            pipe.hgetall(&key);
        }
        let mut redis = self.connection();
        let result: Result<Vec<HashMap<String, usize>>, _> = pipe.query_async(&mut redis).await;
        let counts = self.observe(result)?;
        let live = self.live_nodes();
        if !live.contains(&self.node_id) {
            return Ok(());
        }
        for (app, counts) in state.apps.iter().zip(counts) {
            let elsewhere: usize = counts
                .iter()
                .filter(|(node, _)| **node != self.node_id && live.contains(node))
                .map(|(_, count)| count)
                .sum();
            app.hub.connections_elsewhere.store(elsewhere, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Deletes the connection counts of nodes that are not alive.
    pub async fn sweep_connection_counts(&self, app: &str, live: &[String]) -> Result<(), ClusterError> {
        let mut redis = self.connection();
        let nodes: Result<Vec<String>, _> =
            redis::cmd("HKEYS").arg(self.connections_key(app)).query_async(&mut redis).await;
        let dead: Vec<String> = self.observe(nodes)?.into_iter().filter(|node| !live.contains(node)).collect();
        if dead.is_empty() {
            return Ok(());
        }
        let result: Result<(), _> =
            redis::cmd("HDEL").arg(self.connections_key(app)).arg(dead).query_async(&mut redis).await;
        self.observe(result)
    }
}

//! Chores that any node could do but only one should, once per round: retention (idempotent,
//! but N nodes each scanning every channel of the shared log is N times the Redis load).
//!
//! A turn is a lease: `SET {prefix}:turn:{chore} {node} NX PX {round}`. The first node to ask
//! in a round gets it; it expires with the round, so if that node dies the next round goes to
//! whoever asks first. No clock is shared but Redis's own.

use std::time::Duration;

use super::{Cluster, ClusterError};

impl Cluster {
    /// Whether this node does `chore` this round (`round` long). Fails when Redis does: the
    /// caller skips the round, and another node, or this one next round, does it.
    pub async fn claim_turn(&self, chore: &str, round: Duration) -> Result<bool, ClusterError> {
        let lease_ms = u64::try_from(round.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut redis = self.connection();
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.key(&["turn", chore]))
            .arg(&self.node_id)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms)
            .query_async(&mut redis)
            .await
            .map_err(ClusterError)?;
        Ok(claimed.is_some())
    }
}

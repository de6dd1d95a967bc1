//! The cluster's webhook queue, in Redis (cluster mode has no data directory):
//!
//! - `{p}:webhooks:{target}`: a stream, one entry per webhook request (`i` id, `t` creation time,
//!   `b` body), entry id `{n}-0` from the counter `{p}:webhooks:{target}:seq`;
//! - `{p}:webhooks:{target}:lease`: the node delivering the target now, with an expiry.
//!
//! Any node queues (one Lua script: bounded, ordered); exactly one node at a time delivers each
//! target, the holder of its lease, which it renews before every attempt. A node that dies stops
//! renewing, and another takes over within [`LEASE`]: webhooks survive any node's death, and are
//! sent once cluster-wide (at least once: a holder that dies between a 2xx and the removal
//! leaves the request to be sent again, with the same id).

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::StreamRangeReply;

use super::queue::{Position, QueueError, QueuedWebhook, WebhookQueue};

/// How long a lease lasts without renewal: how soon another node takes over a dead one's targets.
/// Longer than a delivery attempt with the default `timeout_secs` (the lease is renewed before
/// each), so a live holder keeps it; an attempt that takes longer may be repeated by another node
/// (with the same id).
pub const LEASE: Duration = Duration::from_secs(15);

/// KEYS: stream, counter. ARGV: max pending, then (id, created ms, body) per webhook. Returns
/// how many were queued.
static PUSH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local room = tonumber(ARGV[1]) - redis.call('XLEN', KEYS[1])
        local queued = 0
        for i = 2, #ARGV, 3 do
            if queued >= room then break end
            local n = redis.call('INCR', KEYS[2])
            redis.call('XADD', KEYS[1], n .. '-0', 'i', ARGV[i], 't', ARGV[i + 1], 'b', ARGV[i + 2])
            queued = queued + 1
        end
        return queued
        ",
    )
});

/// KEYS: lease. ARGV: node, lease ms. Takes or renews the lease; 1 if this node holds it.
static HOLD: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local holder = redis.call('GET', KEYS[1])
        if not holder or holder == ARGV[1] then
            redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
            return 1
        end
        return 0
        ",
    )
});

/// KEYS: lease. ARGV: node. Gives the lease up if this node holds it.
static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 0
        ",
    )
});

pub struct RedisQueue {
    redis: ConnectionManager,
    prefix: String,
    node_id: String,
    /// The trait is called on the blocking pool; each call runs its command on the runtime.
    runtime: tokio::runtime::Handle,
}

fn backend(error: redis::RedisError) -> QueueError {
    QueueError::Backend(error.to_string())
}

impl RedisQueue {
    pub fn new(redis: ConnectionManager, prefix: &str, node_id: &str, runtime: tokio::runtime::Handle) -> Self {
        RedisQueue { redis, prefix: prefix.to_owned(), node_id: node_id.to_owned(), runtime }
    }

    fn key(&self, target: &str, part: Option<&str>) -> String {
        match part {
            Some(part) => format!("{}:webhooks:{target}:{part}", self.prefix),
            None => format!("{}:webhooks:{target}", self.prefix),
        }
    }

    fn run<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> Result<T, QueueError> {
        self.runtime.block_on(command).map_err(backend)
    }
}

impl WebhookQueue for RedisQueue {
    fn push(&self, target: &str, webhooks: &[QueuedWebhook], max_pending: usize) -> Result<usize, QueueError> {
        let mut invocation = PUSH.key(self.key(target, None));
        invocation.key(self.key(target, Some("seq"))).arg(max_pending);
        for webhook in webhooks {
            invocation.arg(webhook.id.to_string()).arg(webhook.created_ms).arg(&webhook.body);
        }
        let mut redis = self.redis.clone();
        self.run(invocation.invoke_async(&mut redis))
    }

    fn first(&self, target: &str) -> Result<Option<(Position, QueuedWebhook)>, QueueError> {
        let mut redis = self.redis.clone();
        let reply: StreamRangeReply = self.run(
            redis::cmd("XRANGE")
                .arg(self.key(target, None))
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut redis),
        )?;
        let Some(entry) = reply.ids.first() else { return Ok(None) };
        let corrupt = || QueueError::Corrupt(format!("webhook entry {} of {target} is malformed", entry.id));
        let position = entry.id.split_once('-').and_then(|(n, _)| n.parse().ok()).ok_or_else(corrupt)?;
        let id: String = entry.get("i").ok_or_else(corrupt)?;
        let webhook = QueuedWebhook {
            id: id.parse().map_err(|_| corrupt())?,
            created_ms: entry.get("t").ok_or_else(corrupt)?,
            body: entry.get("b").ok_or_else(corrupt)?,
        };
        Ok(Some((position, webhook)))
    }

    fn remove(&self, target: &str, position: Position) -> Result<(), QueueError> {
        let mut redis = self.redis.clone();
        let removed: usize = self
            .run(redis::cmd("XDEL").arg(self.key(target, None)).arg(format!("{position}-0")).query_async(&mut redis))?;
        let _ = removed;
        Ok(())
    }

    fn pending(&self, target: &str) -> Result<usize, QueueError> {
        let mut redis = self.redis.clone();
        self.run(redis::cmd("XLEN").arg(self.key(target, None)).query_async(&mut redis))
    }

    fn hold(&self, target: &str) -> Result<bool, QueueError> {
        let lease_ms = u64::try_from(LEASE.as_millis()).expect("seconds fit");
        let mut redis = self.redis.clone();
        let held: u8 = self
            .run(HOLD.key(self.key(target, Some("lease"))).arg(&self.node_id).arg(lease_ms).invoke_async(&mut redis))?;
        Ok(held == 1)
    }

    fn release(&self, target: &str) {
        let mut redis = self.redis.clone();
        let released: Result<u8, _> =
            self.run(RELEASE.key(self.key(target, Some("lease"))).arg(&self.node_id).invoke_async(&mut redis));
        if let Err(error) = released {
            tracing::warn!(%error, "could not give a webhook lease up; another node takes over when it expires");
        }
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use reprise_storage::private_redis::PrivateRedis;

    use super::*;

    /// The Redis queue passes the cases every backend passes, and one node at a time holds a
    /// target's lease: another takes it once it is given up.
    #[test]
    fn the_redis_queue_passes_the_conformance_cases_and_leases_are_exclusive() {
        let redis = PrivateRedis::start().expect("a private redis-server");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = redis::Client::open(redis.url()).unwrap();
        let manager = runtime.block_on(ConnectionManager::new(client)).unwrap();
        let node_a = RedisQueue::new(manager.clone(), "test", "node-a", runtime.handle().clone());
        super::super::queue::conformance::fifo_bounded_and_removable(&node_a);
        let node_b = RedisQueue::new(manager, "test", "node-b", runtime.handle().clone());
        assert!(node_a.hold("app:t").unwrap());
        assert!(node_a.hold("app:t").unwrap(), "renewed by its holder");
        assert!(!node_b.hold("app:t").unwrap(), "held by another node");
        node_b.release("app:t");
        assert!(!node_b.hold("app:t").unwrap(), "only the holder can give it up");
        node_a.release("app:t");
        assert!(node_b.hold("app:t").unwrap());
    }
}

//! The durable queue of webhook requests, one FIFO per target, behind a small trait with a
//! backend per mode: a sled database of its own under the data directory (single node), Redis
//! (cluster mode). A webhook is in the queue before it counts as sent, and leaves it only once its
//! target answered 2xx (or it was given up): delivery is at least once, in order per target.
//!
//! The trait is synchronous: the sled backend blocks on the disk, so every call is made on the
//! blocking pool.

use std::time::{SystemTime, UNIX_EPOCH};

/// One webhook request as queued: its stable id (sent as `X-Reprise-Webhook-Id` on every
/// attempt), when it was created, and the exact body that is signed and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedWebhook {
    pub id: ulid::Ulid,
    pub created_ms: u64,
    pub body: String,
}

/// The on-disk form: a format-version byte, the id (16 bytes), the creation time (8 bytes, big
/// endian), then the body's UTF-8 bytes.
const FORMAT_VERSION: u8 = 1;
const HEADER_BYTES: usize = 1 + 16 + 8;

impl QueuedWebhook {
    pub fn new(body: String) -> Self {
        QueuedWebhook { id: ulid::Ulid::new(), created_ms: now_ms(), body }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.body.len());
        bytes.push(FORMAT_VERSION);
        bytes.extend_from_slice(&self.id.to_bytes());
        bytes.extend_from_slice(&self.created_ms.to_be_bytes());
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, QueueError> {
        if bytes.len() < HEADER_BYTES {
            return Err(QueueError::Corrupt("a queued webhook is truncated".into()));
        }
        if bytes[0] != FORMAT_VERSION {
            return Err(QueueError::Corrupt(format!("unknown queued webhook format {}", bytes[0])));
        }
        let id = ulid::Ulid::from_bytes(bytes[1..17].try_into().expect("16 bytes"));
        let created_ms = u64::from_be_bytes(bytes[17..25].try_into().expect("8 bytes"));
        let body = String::from_utf8(bytes[HEADER_BYTES..].to_vec())
            .map_err(|_| QueueError::Corrupt("a queued webhook body is not UTF-8".into()))?;
        Ok(QueuedWebhook { id, created_ms, body })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("webhook queue: {0}")]
    Backend(String),
    #[error("webhook queue: {0}")]
    Corrupt(String),
}

/// Where a webhook stands in its target's queue: the backend's position of it.
pub type Position = u64;

pub trait WebhookQueue: Send + Sync {
    /// Appends `webhooks` to `target`'s queue, in order, as long as it holds fewer than
    /// `max_pending`; durable (for the backend's meaning of it) when this returns. Returns how many
    /// were queued: the rest did not fit.
    fn push(&self, target: &str, webhooks: &[QueuedWebhook], max_pending: usize) -> Result<usize, QueueError>;
    /// The oldest webhook of `target`, without removing it.
    fn first(&self, target: &str) -> Result<Option<(Position, QueuedWebhook)>, QueueError>;
    /// Removes a webhook `first` returned (delivered, or given up).
    fn remove(&self, target: &str, position: Position) -> Result<(), QueueError>;
    /// How many webhooks `target` has waiting.
    fn pending(&self, target: &str) -> Result<usize, QueueError>;
    /// Whether this process may deliver `target`'s queue now. A shared queue has one deliverer
    /// at a time (this takes or renews its lease); a process's own queue is always its own.
    fn hold(&self, _target: &str) -> Result<bool, QueueError> {
        Ok(true)
    }
    /// Every target this queue holds webhooks for, configured now or not (the process's own
    /// queue only: a shared one answers for the cluster elsewhere).
    fn targets(&self) -> Result<Vec<String>, QueueError> {
        Ok(Vec::new())
    }
    /// Gives up what `hold` took (on shutdown), so another process takes over at once.
    fn release(&self, _target: &str) {}
    /// Whether other processes queue into it too: then a deliverer must look for work it was not
    /// woken for.
    fn shared(&self) -> bool {
        false
    }
}

pub fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// The cases every backend must pass.
#[cfg(test)]
pub mod conformance {
    use super::*;

    pub fn fifo_bounded_and_removable(queue: &dyn WebhookQueue) {
        let (a, b) = ("app:a", "app:b");
        assert_eq!(queue.first(a).unwrap(), None);
        let webhooks: Vec<QueuedWebhook> = (0..3).map(|n| QueuedWebhook::new(format!("{{\"n\":{n}}}"))).collect();
        assert_eq!(queue.push(a, &webhooks[..2], 3).unwrap(), 2);
        assert_eq!(queue.push(a, &[webhooks[2].clone(), QueuedWebhook::new("{}".into())], 3).unwrap(), 1, "full");
        assert_eq!(queue.push(a, &[QueuedWebhook::new("{}".into())], 3).unwrap(), 0);
        assert_eq!(queue.push(b, &webhooks[..1], 3).unwrap(), 1, "targets are separate");
        assert_eq!((queue.pending(a).unwrap(), queue.pending(b).unwrap()), (3, 1));
        for webhook in &webhooks {
            let (position, first) = queue.first(a).unwrap().expect("queued");
            assert_eq!(&first, webhook, "oldest first");
            queue.remove(a, position).unwrap();
        }
        assert_eq!(queue.first(a).unwrap(), None);
        assert_eq!(queue.pending(a).unwrap(), 0);
        assert_eq!(queue.push(a, &webhooks[..1], 3).unwrap(), 1, "room again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queued_webhook_round_trips_and_bad_bytes_are_refused() {
        let webhook = QueuedWebhook::new("{\"time_ms\":1,\"events\":[]}".into());
        assert_eq!(QueuedWebhook::decode(&webhook.encode()).unwrap(), webhook);
        assert!(QueuedWebhook::decode(&webhook.encode()[..10]).is_err());
        let mut future = webhook.encode();
        future[0] = 9;
        assert!(matches!(QueuedWebhook::decode(&future), Err(QueueError::Corrupt(_))));
    }
}

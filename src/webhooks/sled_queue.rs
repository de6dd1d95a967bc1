//! The single-node webhook queue: a sled database of its own in `<data_dir>/webhooks`, apart from
//! the event log (whose format and watermark it leaves untouched). One tree per target; keys are
//! sled's `generate_id` (big endian), which only grows, also across crashes, so a tree's first
//! key is its oldest webhook.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use reprise_storage::DurableFlush;

use super::queue::{Position, QueueError, QueuedWebhook, WebhookQueue};

pub struct SledQueue {
    db: sled::Db,
    /// Syncs sled's log file and blob files after its flush, which only hands them to the OS:
    /// enough for `kill -9` but not for a power cut (as for the event log, docs/architecture.md).
    /// None for a temporary queue.
    durable: Option<DurableFlush>,
    /// Webhooks waiting per target, counted once from the tree on first use (sled's `len` is a
    /// scan) and kept here. A std Mutex: a map lookup and an add, never held across IO.
    pending: Mutex<HashMap<String, usize>>,
}

fn backend(error: sled::Error) -> QueueError {
    QueueError::Backend(error.to_string())
}

impl SledQueue {
    pub fn open(path: &Path) -> Result<Self, QueueError> {
        // sled's own flusher is off: a push flushes before it returns.
        let db = sled::Config::new().path(path).flush_every_ms(None).open().map_err(backend)?;
        let durable = DurableFlush::new(path).map_err(|e| QueueError::Backend(e.to_string()))?;
        Ok(SledQueue { db, durable: Some(durable), pending: Mutex::new(HashMap::new()) })
    }

    #[cfg(test)]
    pub fn temporary() -> Self {
        let db = sled::Config::new().temporary(true).open().expect("temporary sled");
        SledQueue { db, durable: None, pending: Mutex::new(HashMap::new()) }
    }

    fn tree(&self, target: &str) -> Result<sled::Tree, QueueError> {
        self.db.open_tree(format!("target/{target}")).map_err(backend)
    }

    /// Runs `change` on `target`'s pending count, reading it from the tree the first time.
    fn with_pending<T>(&self, target: &str, tree: &sled::Tree, change: impl FnOnce(&mut usize) -> T) -> T {
        let mut pending = self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = pending.entry(target.to_owned()).or_insert_with(|| tree.len());
        change(count)
    }
}

impl WebhookQueue for SledQueue {
    fn push(&self, target: &str, webhooks: &[QueuedWebhook], max_pending: usize) -> Result<usize, QueueError> {
        let tree = self.tree(target)?;
        let room = self.with_pending(target, &tree, |count| max_pending.saturating_sub(*count));
        let fitting = &webhooks[..webhooks.len().min(room)];
        if fitting.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        for webhook in fitting {
            let key = self.db.generate_id().map_err(backend)?;
            batch.insert(&key.to_be_bytes(), webhook.encode());
        }
        tree.apply_batch(batch).map_err(backend)?;
        // Durable before it counts as sent: one flush per batch of events.
        match &self.durable {
            Some(durable) => durable.flush(&self.db).map_err(|e| QueueError::Backend(e.to_string()))?,
            None => {
                self.db.flush().map_err(backend)?;
            }
        }
        self.with_pending(target, &tree, |count| *count += fitting.len());
        Ok(fitting.len())
    }

    fn first(&self, target: &str) -> Result<Option<(Position, QueuedWebhook)>, QueueError> {
        let Some((key, value)) = self.tree(target)?.first().map_err(backend)? else { return Ok(None) };
        let position = u64::from_be_bytes(
            key.as_ref().try_into().map_err(|_| QueueError::Corrupt("a webhook key is not 8 bytes".into()))?,
        );
        Ok(Some((position, QueuedWebhook::decode(&value)?)))
    }

    fn remove(&self, target: &str, position: Position) -> Result<(), QueueError> {
        let tree = self.tree(target)?;
        // Not flushed: a crash that forgets the removal sends the webhook again (at least once).
        if tree.remove(position.to_be_bytes()).map_err(backend)?.is_some() {
            self.with_pending(target, &tree, |count| *count = count.saturating_sub(1));
        }
        Ok(())
    }

    fn pending(&self, target: &str) -> Result<usize, QueueError> {
        let tree = self.tree(target)?;
        Ok(self.with_pending(target, &tree, |count| *count))
    }

    fn targets(&self) -> Result<Vec<String>, QueueError> {
        let names = self.db.tree_names();
        Ok(names
            .iter()
            .filter_map(|name| std::str::from_utf8(name).ok()?.strip_prefix("target/"))
            .map(str::to_owned)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sled_queue_passes_the_conformance_cases() {
        super::super::queue::conformance::fifo_bounded_and_removable(&SledQueue::temporary());
    }

    /// What was pushed is there after the database is closed and opened again, oldest first.
    #[test]
    fn pushed_webhooks_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let webhooks: Vec<QueuedWebhook> = (0..2).map(|n| QueuedWebhook::new(format!("{n}"))).collect();
        {
            let queue = SledQueue::open(dir.path()).unwrap();
            queue.push("app:t", &webhooks, 10).unwrap();
        }
        let queue = SledQueue::open(dir.path()).unwrap();
        assert_eq!(queue.targets().unwrap(), vec!["app:t".to_owned()]);
        assert_eq!(queue.pending("app:t").unwrap(), 2);
        assert_eq!(queue.first("app:t").unwrap().unwrap().1, webhooks[0]);
    }

    /// A webhook too large for sled's log segments (over 128 KiB: it carries up to 20 events,
    /// each up to the app's event size limit) goes to a blob file of its own, which sled never
    /// syncs: the push's flush does, so a power cut right after it loses nothing.
    #[test]
    fn a_push_syncs_the_blob_a_large_webhook_makes() {
        let dir = tempfile::tempdir().unwrap();
        let queue = SledQueue::open(dir.path()).unwrap();
        let webhooks = [QueuedWebhook::new("x".repeat(20 * 7_500))];
        queue.push("app:t", &webhooks, 100).unwrap();
        assert!(queue.db.blobs_written() > 0, "a 150 KB webhook is a blob");
        assert_eq!(queue.durable.as_ref().unwrap().blob_files_not_synced().unwrap(), Vec::<std::ffi::OsString>::new());
    }
}

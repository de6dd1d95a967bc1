//! Fail-stop for the event log's disk: a write the disk refused, or a write that never comes
//! back, stops the server (issue 11), instead of leaving it up and refusing every publish.
//!
//! Why stop rather than carry on: sled 0.34 keeps the first error of its log writer (a full disk
//! gives `ENOSPC`) and returns it from every later append and flush; only opening the database
//! again clears it. So after one failed write the log never writes again, however much space is
//! freed. And after a failed fsync the kernel may already have dropped the pages it could not
//! write, so a later fsync that succeeds proves nothing about them.
//!
//! Why not reopen sled in-process: every holder of the database (the committer, a compaction or
//! a read on the blocking pool) would have to let go of it first, and the events appended but
//! not flushed before the failure (answered 500 "not durable", yet fanned out) are gone from the
//! reopened log while the hub still holds them as channels' published heads; their ids would be
//! handed out again. A restart rebuilds all of that from the log and its watermark. So: `/up`
//! reports the `log` problem, the server shuts down as on SIGTERM (sockets get 4200, publishes in
//! flight are answered) and `run` returns an error, so the process exits 1 and its supervisor
//! (systemd `Restart=`) starts it again; the new process opens once the disk takes writes again.
//!
//! Why a watchdog: sled 0.34 can miss waking a flush that waits for its writer when that writer
//! fails (`pagecache/logger.rs` stores the error without notifying), so on a full disk a flush
//! may block forever, and with it the committer and every publish behind it. A write that has
//! not returned after `log_write_timeout_secs` is treated as a failed one, and publishes waiting
//! for the committer are answered 500 (outcome unknown) instead of waiting with it.
//!
//! Why no write reaches the log after the first refused one: for the same two reasons it could
//! not succeed, and it could block until the watchdog gives up. The server's final flush on the
//! way down was such a write: on a full tmpfs (`tests/full_disk.rs` with sled's leaves made
//! larger) it waited out `log_write_timeout_secs` (30 s) before the process exited, and the exit
//! then blamed a disk that did not answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use reprise_storage::{
    ChannelHead, CompactRule, Cursor, EventId, EventLog, LogKey, LogStats, NewEvent, ReadOutcome, StorageError,
    StoredEvent,
};
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// The component named on `/up` and in the exit message.
const COMPONENT: &str = "log";
/// Longest pause between two looks of the watchdog.
const WATCHDOG_TICK_MAX: Duration = Duration::from_secs(1);

/// The server's log: the backend's, watched for disk failures.
pub struct GuardedLog {
    inner: Arc<dyn EventLog>,
    health: Arc<Health>,
    /// Fired on a disk failure: the server shuts down.
    shutdown: CancellationToken,
    /// Fired when a write stalled: publishes stop waiting for the committer, which may never
    /// answer them.
    stalled: CancellationToken,
    /// When each write in progress began, by serial (so the first entry is the oldest). A std
    /// Mutex: held for one insert or remove, never across the write itself or an await.
    writes: Mutex<BTreeMap<u64, Instant>>,
    next_serial: AtomicU64,
    /// The first disk error of a write: every later write fails with it at once.
    refused: OnceLock<String>,
}

/// Removes a write from `writes` however it ends (an error, a panic).
struct InProgress<'a> {
    log: &'a GuardedLog,
    serial: u64,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.log.writes.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.serial);
    }
}

impl GuardedLog {
    pub fn new(inner: Arc<dyn EventLog>, health: Arc<Health>, shutdown: CancellationToken) -> Self {
        GuardedLog {
            inner,
            health,
            shutdown,
            stalled: CancellationToken::new(),
            writes: Mutex::new(BTreeMap::new()),
            next_serial: AtomicU64::new(0),
            refused: OnceLock::new(),
        }
    }

    /// Fires once a write has stalled (see the module header).
    pub fn stalled(&self) -> CancellationToken {
        self.stalled.clone()
    }

    /// Runs one write; a disk error stops the server.
    fn write<T>(
        &self,
        what: &'static str,
        call: impl FnOnce(&dyn EventLog) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        if let Some(error) = self.refused.get() {
            return Err(StorageError::Io(error.clone()));
        }
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        self.writes.lock().unwrap_or_else(PoisonError::into_inner).insert(serial, Instant::now());
        let _in_progress = InProgress { log: self, serial };
        let result = call(self.inner.as_ref());
        if let Err(StorageError::Io(error)) = &result {
            let _ = self.refused.set(error.clone());
            self.fail(format!(
                "the disk refused a write of the event log ({what}: {error}); restart once it takes writes again"
            ));
        }
        result
    }

    fn fail(&self, problem: String) {
        self.health.report_fatal(COMPONENT, problem);
        self.shutdown.cancel();
    }

    /// Declares the disk failed once a write has been running for `timeout`; ends then, or
    /// when `stop` fires.
    pub async fn watch(self: Arc<Self>, timeout: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval((timeout / 4).min(WATCHDOG_TICK_MAX));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => return,
            }
            let oldest = self.writes.lock().unwrap_or_else(PoisonError::into_inner).values().next().copied();
            if oldest.is_some_and(|started| started.elapsed() >= timeout) {
                self.fail(format!(
                    "a write to the event log has not returned for {} s: the disk is not answering",
                    timeout.as_secs()
                ));
                self.stalled.cancel();
                return;
            }
        }
    }
}

impl EventLog for GuardedLog {
    fn append(&self, events: &[NewEvent]) -> Result<Vec<EventId>, StorageError> {
        self.write("append", |log| log.append(events))
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.write("flush", EventLog::flush)
    }

    fn compact(&self, key: &LogKey, rule: CompactRule) -> Result<u64, StorageError> {
        self.write("compaction", |log| log.compact(key, rule))
    }

    fn import(
        &self,
        key: &LogKey,
        compacted_through: Option<EventId>,
        events: &[StoredEvent],
    ) -> Result<(), StorageError> {
        self.write("import", |log| log.import(key, compacted_through, events))
    }

    // Reads are not guarded: a failed read changes nothing on disk, and the caller answers 503.
    fn read(&self, key: &LogKey, cursor: Cursor, limit: usize) -> Result<ReadOutcome, StorageError> {
        self.inner.read(key, cursor, limit)
    }

    fn head(&self, key: &LogKey) -> Result<ChannelHead, StorageError> {
        self.inner.head(key)
    }

    fn channels(&self, app: &str) -> Result<Vec<LogKey>, StorageError> {
        self.inner.channels(app)
    }

    fn stats(&self) -> Result<LogStats, StorageError> {
        self.inner.stats()
    }
}

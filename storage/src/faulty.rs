//! [`FaultyLog`]: a test double that wraps a real log and fails on demand, for the failure paths
//! no real disk produces when a test asks (an append refused, a flush that fails or crawls, a
//! head that cannot be read, a panic inside the log).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::{ChannelHead, CompactRule, Cursor, EventLog, LogKey, LogStats, NewEvent, ReadOutcome, StorageError};

/// A failure [`FaultyLog`] can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `append` fails before writing anything, for a reason other than the disk
    /// ([`StorageError::Backend`]).
    Append,
    /// `append` fails before writing anything with a disk error ([`StorageError::Io`]), as a full
    /// disk does.
    AppendDiskFull,
    /// `flush` fails with a disk error ([`StorageError::Io`]), after the inner flush, as a disk
    /// error reported late would.
    Flush,
    /// `head` and `read` fail.
    Read,
    /// `append` panics.
    PanicOnAppend,
}

/// Wraps `inner`, failing the operations whose fault is switched on.
pub struct FaultyLog<L> {
    inner: L,
    append: AtomicBool,
    append_disk_full: AtomicBool,
    flush: AtomicBool,
    read: AtomicBool,
    panic_on_append: AtomicBool,
    /// Each flush sleeps this long first (a slow disk).
    flush_delay: Mutex<Duration>,
}

impl<L: EventLog> FaultyLog<L> {
    pub fn new(inner: L) -> Self {
        FaultyLog {
            inner,
            append: AtomicBool::new(false),
            append_disk_full: AtomicBool::new(false),
            flush: AtomicBool::new(false),
            read: AtomicBool::new(false),
            panic_on_append: AtomicBool::new(false),
            flush_delay: Mutex::new(Duration::ZERO),
        }
    }

    /// Switches `fault` on or off.
    pub fn set(&self, fault: Fault, on: bool) {
        let flag = match fault {
            Fault::Append => &self.append,
            Fault::AppendDiskFull => &self.append_disk_full,
            Fault::Flush => &self.flush,
            Fault::Read => &self.read,
            Fault::PanicOnAppend => &self.panic_on_append,
        };
        flag.store(on, Ordering::SeqCst);
    }

    /// Makes every flush take at least `delay`.
    pub fn set_flush_delay(&self, delay: Duration) {
        *self.flush_delay.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = delay;
    }

    fn failing(flag: &AtomicBool, what: &str) -> Result<(), StorageError> {
        if flag.load(Ordering::SeqCst) {
            return Err(StorageError::Backend(format!("injected {what} failure")));
        }
        Ok(())
    }
}

impl<L: EventLog> EventLog for FaultyLog<L> {
    fn append(&self, events: &[NewEvent]) -> Result<Vec<crate::EventId>, StorageError> {
        assert!(!self.panic_on_append.load(Ordering::SeqCst), "injected panic in append");
        Self::failing(&self.append, "append")?;
        if self.append_disk_full.load(Ordering::SeqCst) {
            return Err(StorageError::Io("injected append failure: No space left on device".into()));
        }
        self.inner.append(events)
    }

    fn flush(&self) -> Result<(), StorageError> {
        let delay = *self.flush_delay.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::thread::sleep(delay);
        self.inner.flush()?;
        if self.flush.load(Ordering::SeqCst) {
            return Err(StorageError::Io("injected flush failure: No space left on device".into()));
        }
        Ok(())
    }

    fn read(&self, key: &LogKey, cursor: Cursor, limit: usize) -> Result<ReadOutcome, StorageError> {
        Self::failing(&self.read, "read")?;
        self.inner.read(key, cursor, limit)
    }

    fn head(&self, key: &LogKey) -> Result<ChannelHead, StorageError> {
        Self::failing(&self.read, "head read")?;
        self.inner.head(key)
    }

    fn compact(&self, key: &LogKey, rule: CompactRule) -> Result<u64, StorageError> {
        self.inner.compact(key, rule)
    }

    fn channels(&self, app: &str) -> Result<Vec<LogKey>, StorageError> {
        self.inner.channels(app)
    }

    fn stats(&self) -> Result<LogStats, StorageError> {
        self.inner.stats()
    }

    fn import(
        &self,
        key: &LogKey,
        compacted_through: Option<crate::EventId>,
        events: &[crate::StoredEvent],
    ) -> Result<(), StorageError> {
        Self::failing(&self.append, "import")?;
        self.inner.import(key, compacted_through, events)
    }
}

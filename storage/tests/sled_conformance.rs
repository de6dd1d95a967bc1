//! `SledLog` honours the `EventLog` contract, both in a temporary sled and in a directory on disk.

use std::sync::Mutex;

use reprise_storage::{
    ChannelHead, CompactRule, Cursor, EventId, EventLog, LogKey, LogStats, NewEvent, ReadOutcome, SledLog,
    StorageError, StoredEvent, conformance,
};

#[test]
fn temporary_sled_conforms() {
    conformance::run_all(&|clock| -> Box<dyn EventLog> {
        Box::new(SledLog::open_temporary().unwrap().with_clock(clock))
    });
}

#[test]
fn on_disk_sled_conforms() {
    // Each log gets its own directory, kept until the whole suite is done.
    let dirs = Mutex::new(Vec::new());
    conformance::run_all(&|clock| -> Box<dyn EventLog> {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path()).unwrap().with_clock(clock);
        dirs.lock().unwrap().push(dir);
        Box::new(log)
    });
}

/// With room for one channel's state, nearly every operation reads a swept channel back from
/// sled, including under concurrent appends: the contract must hold all the same.
#[test]
fn sled_with_a_one_channel_state_cache_conforms() {
    conformance::run_all(&|clock| -> Box<dyn EventLog> {
        Box::new(SledLog::open_temporary().unwrap().with_clock(clock).with_cached_channels(1))
    });
}

/// The suite must be able to fail: a log that forgets compaction marks is caught.
#[test]
fn conformance_catches_a_broken_log() {
    struct ForgetsCompaction(SledLog);
    impl EventLog for ForgetsCompaction {
        fn append(&self, events: &[NewEvent]) -> Result<Vec<EventId>, StorageError> {
            self.0.append(events)
        }
        fn flush(&self) -> Result<(), StorageError> {
            self.0.flush()
        }
        fn read(&self, key: &LogKey, cursor: Cursor, limit: usize) -> Result<ReadOutcome, StorageError> {
            let mut outcome = self.0.read(key, cursor, limit)?;
            outcome.recovered = true;
            Ok(outcome)
        }
        fn head(&self, key: &LogKey) -> Result<ChannelHead, StorageError> {
            self.0.head(key)
        }
        fn compact(&self, key: &LogKey, rule: CompactRule) -> Result<u64, StorageError> {
            self.0.compact(key, rule)
        }
        fn channels(&self, app: &str) -> Result<Vec<LogKey>, StorageError> {
            self.0.channels(app)
        }
        fn stats(&self) -> Result<LogStats, StorageError> {
            self.0.stats()
        }
        fn import(
            &self,
            key: &LogKey,
            compacted_through: Option<EventId>,
            events: &[StoredEvent],
        ) -> Result<(), StorageError> {
            self.0.import(key, compacted_through, events)
        }
    }
    let factory = |clock| -> Box<dyn EventLog> {
        Box::new(ForgetsCompaction(SledLog::open_temporary().unwrap().with_clock(clock)))
    };
    let result = std::panic::catch_unwind(|| conformance::compact_keep_last(&factory));
    assert!(result.is_err(), "a log that always claims recovery must fail the suite");
}

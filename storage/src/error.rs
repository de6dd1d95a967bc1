//! `StorageError`: the one error type of the log. Backend errors are flattened into messages so no
//! sled or bincode type appears in the public API.

/// Why a log operation failed. Expected outcomes (an unknown channel, a cursor that cannot be fully
/// recovered) are not errors: they are part of the normal results.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend failed for a reason other than its disk (a lock held by another process, a
    /// call that did not complete, ...). The operation did not happen; retrying may help.
    #[error("storage backend failed: {0}")]
    Backend(String),
    /// The disk failed a read, write or sync (full, read-only, failing hardware). After a failed
    /// write or sync the log cannot be trusted to write again until it is reopened: sled 0.34
    /// keeps the first error of its log writer and returns it from every later write and flush
    /// (only a new `open` clears it), and after a failed fsync the kernel may already have dropped
    /// the pages it could not write, so a retry that succeeds proves nothing.
    #[error("the event log's disk failed: {0}")]
    Io(String),
    /// A stored record or key could not be decoded. Retrying will not help.
    #[error("corrupt log data: {0}")]
    Corrupt(String),
    /// A stored record was written by a format version this build does not know (a newer release).
    #[error("unsupported on-disk format version {0}")]
    UnsupportedFormat(u8),
    /// The log holds fewer appends than had been made durable (its files were damaged or
    /// replaced): it refuses to open rather than serve a shorter history and hand out ids again.
    /// [`crate::SledLog::open_accepting_data_loss`] opens it anyway.
    #[error("{0}")]
    DataLoss(crate::DataLoss),
    /// Another process (or another open log) holds the data directory's lock. Retrying helps only
    /// once that one has stopped.
    #[error("the data directory is locked: {0}")]
    Locked(String),
    /// An import would leave a gap in a channel's sequence or reuse an id (see
    /// [`crate::EventLog::import`]); nothing was written.
    #[error("import refused: {0}")]
    ImportRefused(String),
    /// The key cannot be stored (an app id or channel name containing a NUL byte).
    #[error("invalid log key: {0}")]
    InvalidKey(String),
}

impl StorageError {
    /// Turns a sled error into ours, keeping its message.
    pub(crate) fn from_sled(error: sled::Error) -> Self {
        match error {
            sled::Error::Corruption { .. } => StorageError::Corrupt(error.to_string()),
            // Another process holding the directory is reported as an IO error; the disk is fine.
            _ if crate::sled_log::is_lock_contention(&error) => StorageError::Backend(error.to_string()),
            sled::Error::Io(io) => StorageError::Io(io.to_string()),
            other => StorageError::Backend(other.to_string()),
        }
    }
}

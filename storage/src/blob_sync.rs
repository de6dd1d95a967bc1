//! Makes sled's blob files durable: sled 0.34 writes a page larger than 128 KiB (a quarter of a
//! 512 KiB segment) to a file of its own in `blobs/` and never fsyncs it, nor the directory, so a
//! power cut after a flush could lose a page the flushed log points to.
//!
//! A page is a B-tree leaf of up to 17 entries, so events of about 7.5 KiB each already make one
//! (a logged event may carry up to the app's `max_message_size_bytes`, 10 KB by default, and the
//! HTTP body limit allows much more): capping event sizes below the threshold is not practical.
//! Instead every flush syncs the blob files it has not synced yet, then the directory.
//!
//! Which files: those listed *before* sled's flush starts. Everything appended before the flush
//! was called has already been serialised (sled writes a blob while the page update that needs
//! it holds its place in the log, before the flush can complete that part of the log), so each of
//! them is complete once the flush returns. A blob that appears during the flush belongs to a later
//! append and may still be half written: the next flush takes it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use crate::StorageError;

/// The blob files of one sled directory that are known to be durable.
pub(crate) struct BlobSync {
    dir: PathBuf,
    /// Names synced so far (blob names are log sequence numbers, never reused while the file
    /// exists); pruned to what still exists on every pass, so it stays as small as the directory.
    /// A std mutex: held for set operations only, never across the fsyncs.
    synced: Mutex<HashSet<OsString>>,
}

impl BlobSync {
    pub(crate) fn new(dir: PathBuf) -> Self {
        BlobSync { dir, synced: Mutex::new(HashSet::new()) }
    }

    /// The blob files not synced yet. Call before sled's flush; hand the result to
    /// [`BlobSync::sync`] after it. Usually empty, and then it costs one `readdir`.
    pub(crate) fn unsynced(&self) -> Result<Vec<OsString>, StorageError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            // sled creates the directory with its first blob.
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(self.failed("list", &error)),
        };
        let mut present = HashSet::new();
        for entry in entries {
            present.insert(entry.map_err(|e| self.failed("list", &e))?.file_name());
        }
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        synced.retain(|name| present.contains(name));
        Ok(present.into_iter().filter(|name| !synced.contains(name)).collect())
    }

    /// Fsyncs these blob files and then the directory that names them.
    pub(crate) fn sync(&self, names: Vec<OsString>) -> Result<(), StorageError> {
        if names.is_empty() {
            return Ok(());
        }
        for name in &names {
            match File::open(self.dir.join(name)).and_then(|file| file.sync_data()) {
                Ok(()) => {}
                // sled removed it meanwhile (the page was rewritten): nothing to keep.
                Err(error) if error.kind() == ErrorKind::NotFound => {}
                Err(error) => return Err(self.failed("fsync", &error)),
            }
        }
        File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(|e| self.failed("fsync", &e))?;
        self.synced.lock().unwrap_or_else(PoisonError::into_inner).extend(names);
        Ok(())
    }

    fn failed(&self, what: &str, error: &std::io::Error) -> StorageError {
        StorageError::Io(format!("{what} of sled's blob files in {} failed: {error}", self.dir.display()))
    }
}

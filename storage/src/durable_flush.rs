//! A flush of a sled directory that survives a power cut. sled's own flush only hands its log to
//! the OS (the vendored sled's patch 5; sled 0.34 itself used `sync_file_range`, which neither
//! syncs the file's metadata nor asks the drive to empty its write cache), and it never syncs the
//! files it writes pages over 128 KiB to, nor their directory ([`BlobSync`]): enough for
//! `kill -9`, not for a power cut. Every sled database Reprise keeps on disk (the event log, the
//! webhook queue) flushes through this.

use std::ffi::OsString;
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::StorageError;
use crate::blob_sync::{BlobCounts, BlobSync};

/// Flushes one on-disk sled database so that what the flush covered is on the drive.
pub struct DurableFlush {
    dir: PathBuf,
    /// sled's log file, `db` in its directory: `fdatasync`ed after sled's flush, once per flush
    /// (a flush covers a whole group of commits).
    log_file: File,
    /// sled's blob files, in `blobs/`.
    blobs: BlobSync,
}

impl DurableFlush {
    /// For the sled database open in `dir`.
    pub fn new(dir: &Path) -> Result<Self, StorageError> {
        let log_file = File::open(dir.join("db"))
            .map_err(|e| StorageError::Io(format!("opening sled's log file in {}: {e}", dir.display())))?;
        Ok(DurableFlush { dir: dir.to_owned(), log_file, blobs: BlobSync::new(dir.join("blobs")) })
    }

    /// sled's flush of `db` (the database open in this directory), then an `fdatasync` of every
    /// blob file not synced before and of their directory, then of the log file.
    pub fn flush(&self, db: &sled::Db) -> Result<(), StorageError> {
        let blobs = self.blobs.unsynced(|| BlobCounts { started: db.blobs_started(), written: db.blobs_written() })?;
        db.flush().map_err(StorageError::from_sled)?;
        self.blobs.sync(blobs)?;
        self.log_file.sync_data().map_err(|e| {
            StorageError::Io(format!("fdatasync of sled's log file in {} failed: {e}", self.dir.display()))
        })
    }

    /// The blob files in the directory now that no flush has synced: empty right after a flush
    /// while nothing else writes. Reads the directory every time (for checks and tests; a flush
    /// reads it only when sled wrote a blob).
    pub fn blob_files_not_synced(&self) -> Result<Vec<OsString>, StorageError> {
        let entries = match std::fs::read_dir(self.dir.join("blobs")) {
            Ok(entries) => entries,
            Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(StorageError::Io(format!("listing sled's blob files failed: {error}"))),
        };
        let synced = self.blobs.synced_names();
        let mut not_synced = Vec::new();
        for entry in entries {
            let name =
                entry.map_err(|e| StorageError::Io(format!("listing sled's blob files failed: {e}")))?.file_name();
            if !synced.contains(&name) {
                not_synced.push(name);
            }
        }
        Ok(not_synced)
    }
}

#[cfg(test)]
mod tests {
    use super::DurableFlush;

    /// A page too large for sled's log segments is written to a blob file of its own, which sled
    /// never fsyncs: the flush does, with the directory. Without it the file stays unsynced.
    #[test]
    fn a_flush_syncs_the_blob_a_write_made() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).flush_every_ms(None).open().unwrap();
        let durable = DurableFlush::new(dir.path()).unwrap();
        db.insert(b"small", &b"x"[..]).unwrap();
        durable.flush(&db).unwrap();
        assert_eq!(db.blobs_written(), 0);
        assert!(durable.blob_files_not_synced().unwrap().is_empty(), "no blob directory yet");

        db.insert(b"big", "x".repeat(300 * 1024).as_bytes()).unwrap();
        db.flush().unwrap();
        assert!(db.blobs_written() > 0, "a 300 KiB page is a blob");
        assert!(!durable.blob_files_not_synced().unwrap().is_empty(), "sled's own flush syncs no blob");
        durable.flush(&db).unwrap();
        assert_eq!(durable.blob_files_not_synced().unwrap(), Vec::<std::ffi::OsString>::new());
    }
}

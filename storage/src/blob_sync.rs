//! Makes sled's blob files durable: sled 0.34 writes a page larger than 128 KiB (a quarter of a
//! 512 KiB segment) to a file of its own in `blobs/` and never fsyncs it, nor the directory, so a
//! power cut after a flush could lose a page the flushed log points to.
//!
//! A page is a B-tree leaf, which past 64 KiB splits at 17 entries (sled patch 10), so events of
//! about 7.5 KiB each already make one
//! (a logged event may carry up to the app's `max_message_size_bytes`, 10 KB by default, and the
//! HTTP body limit allows much more): capping event sizes below the threshold is not practical.
//! Instead every flush syncs the blob files it has not synced yet, then the directory. It reads
//! the directory only when sled's count of blobs written (`Db::blobs_written`, sled patch 12)
//! moved since every file listed before was synced: almost every flush writes no blob.
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
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};

use rustix::fs::{Dir, Mode, OFlags};

use crate::StorageError;

/// The blob files of one sled directory that are known to be durable.
pub(crate) struct BlobSync {
    dir: PathBuf,
    /// A std mutex: held while listing and for set operations, never across the fsyncs.
    state: Mutex<Listing>,
}

/// What one flush must sync: the blob files not synced yet, and sled's count of blobs written
/// ([`sled::Db::blobs_written`]) as it was before they were listed.
pub(crate) struct Unsynced {
    names: Vec<OsString>,
    blobs_written: u64,
}

impl Unsynced {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

struct Listing {
    /// The directory, open once it exists, and read again from its start on a flush that needs it (an
    /// `lseek` and a `getdents64`). `std::fs::read_dir` opened and closed it each time, with a
    /// 32 KiB buffer per flush, large enough to make glibc merge every freed small block first
    /// (docs/benchmarks.md, round two, eighth pass).
    dir: Option<Dir>,
    /// Names synced so far (blob names are log sequence numbers, never reused while the file
    /// exists); pruned to what still exists on every pass, so it stays as small as the directory.
    synced: HashSet<OsString>,
    /// sled's count of blobs written at a listing whose every file has since been synced: while
    /// the count stays there, no blob appeared, and the directory is not listed again (three
    /// system calls per flush otherwise, for a directory that is usually empty).
    all_synced_at: Option<u64>,
}

impl BlobSync {
    pub(crate) fn new(dir: PathBuf) -> Self {
        BlobSync { dir, state: Mutex::new(Listing { dir: None, synced: HashSet::new(), all_synced_at: None }) }
    }

    /// The blob files not synced yet. Call before sled's flush, with sled's count of blobs
    /// written read just before ([`sled::Db::blobs_written`]); hand the result to
    /// [`BlobSync::sync`] after it. Lists the directory only if the count moved since every
    /// listed file was synced; an empty directory costs an `lseek` and a `getdents64`.
    pub(crate) fn unsynced(&self, blobs_written: u64) -> Result<Unsynced, StorageError> {
        let nothing = Unsynced { names: Vec::new(), blobs_written };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Listing { dir, synced, all_synced_at } = &mut *state;
        if *all_synced_at == Some(blobs_written) {
            return Ok(nothing);
        }
        let dir = match dir {
            Some(dir) => dir,
            None => {
                match rustix::fs::open(&self.dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
                    Ok(fd) => dir.insert(Dir::new(fd).map_err(|e| self.failed("list", &e.into()))?),
                    // sled creates the directory with its first blob.
                    Err(rustix::io::Errno::NOENT) => return Ok(nothing),
                    Err(error) => return Err(self.failed("list", &error.into())),
                }
            }
        };
        dir.rewind();
        let mut present = HashSet::new();
        while let Some(entry) = dir.read() {
            let entry = entry.map_err(|e| self.failed("list", &e.into()))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                present.insert(OsString::from_vec(name.to_vec()));
            }
        }
        synced.retain(|name| present.contains(name));
        Ok(Unsynced { names: present.into_iter().filter(|name| !synced.contains(name)).collect(), blobs_written })
    }

    /// Fsyncs these blob files and then the directory that names them.
    pub(crate) fn sync(&self, unsynced: Unsynced) -> Result<(), StorageError> {
        let Unsynced { names, blobs_written } = unsynced;
        if names.is_empty() {
            self.all_synced_at(blobs_written);
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
        self.state.lock().unwrap_or_else(PoisonError::into_inner).synced.extend(names);
        self.all_synced_at(blobs_written);
        Ok(())
    }

    /// Every blob counted by `blobs_written` is synced: the directory need not be listed again
    /// until the count moves. (Two flushes never overlap in the committer; if they did, the
    /// later count could only be the higher, so keeping the higher is right either way.)
    fn all_synced_at(&self, blobs_written: u64) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.all_synced_at = Some(state.all_synced_at.map_or(blobs_written, |at| at.max(blobs_written)));
    }

    /// The names synced so far (as of the last listing's pruning).
    #[cfg(test)]
    pub(crate) fn synced_names(&self) -> HashSet<OsString> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).synced.clone()
    }

    fn failed(&self, what: &str, error: &std::io::Error) -> StorageError {
        StorageError::Io(format!("{what} of sled's blob files in {} failed: {error}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::ffi::OsString;
    use std::fs;

    use super::BlobSync;

    fn names(list: &[&str]) -> HashSet<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// The names one pass would sync.
    fn listed(blobs: &BlobSync, count: u64) -> HashSet<OsString> {
        blobs.unsynced(count).unwrap().names.into_iter().collect()
    }

    /// The directory is listed afresh on every pass whose count moved, from before it exists to
    /// files coming, being synced, going and coming back under the same name. (`count` plays
    /// sled's count of blobs written: one more for each file the test writes.)
    #[test]
    fn lists_each_blob_until_it_is_synced_across_passes() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("blobs");
        let blobs = BlobSync::new(dir.clone());
        assert!(listed(&blobs, 0).is_empty(), "no directory yet");

        fs::create_dir(&dir).unwrap();
        assert!(listed(&blobs, 0).is_empty(), "an empty directory");
        fs::write(dir.join("17"), b"page").unwrap();
        fs::write(dir.join("42"), b"page").unwrap();
        let first = blobs.unsynced(2).unwrap();
        assert_eq!(first.names.iter().cloned().collect::<HashSet<_>>(), names(&["17", "42"]));
        assert_eq!(listed(&blobs, 2).len(), 2, "not synced yet: listed again");
        blobs.sync(first).unwrap();
        assert!(listed(&blobs, 2).is_empty(), "all synced");

        fs::remove_file(dir.join("17")).unwrap();
        fs::write(dir.join("99"), b"page").unwrap();
        assert_eq!(listed(&blobs, 3), names(&["99"]));
        // A name that went and came back is a new file: it needs its own sync.
        fs::write(dir.join("17"), b"page").unwrap();
        assert_eq!(listed(&blobs, 4), names(&["17", "99"]));

        // Past what one `getdents64` into a small buffer returns.
        let many: Vec<String> = (1000..1400).map(|n| n.to_string()).collect();
        for name in &many {
            fs::write(dir.join(name), b"").unwrap();
        }
        let listed = listed(&blobs, 404);
        assert_eq!(listed.len(), many.len() + 2);
        assert!(many.iter().all(|name| listed.contains(&OsString::from(name))));
    }

    /// Once every listed file is synced, a pass at the same count does not list the directory
    /// (a file sled did not count is not seen); the next count lists it again. Files listed but
    /// not yet synced are listed again whatever the count.
    #[test]
    fn an_unchanged_count_is_not_listed_again() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("blobs");
        fs::create_dir(&dir).unwrap();
        let blobs = BlobSync::new(dir.clone());
        fs::write(dir.join("1"), b"page").unwrap();
        assert_eq!(listed(&blobs, 1), names(&["1"]));
        assert_eq!(listed(&blobs, 1), names(&["1"]), "listed, not synced: listed again");
        blobs.sync(blobs.unsynced(1).unwrap()).unwrap();

        fs::write(dir.join("2"), b"page").unwrap();
        assert!(listed(&blobs, 1).is_empty(), "the count did not move: not listed");
        assert_eq!(listed(&blobs, 2), names(&["2"]));
        blobs.sync(blobs.unsynced(2).unwrap()).unwrap();
        assert!(listed(&blobs, 2).is_empty());
    }
}

//! Makes sled's blob files durable: sled 0.34 writes a page larger than 128 KiB (a quarter of a
//! 512 KiB segment) to a file of its own in `blobs/` and never fsyncs it, nor the directory, so a
//! power cut after a flush could lose a page the flushed log points to.
//!
//! A page is a B-tree leaf, which past 64 KiB splits at 17 entries (sled patch 10), so events of
//! about 7.5 KiB each already make one (a logged event may carry up to the app's
//! `max_message_size_bytes`, 10 KB by default, and the HTTP body limit allows much more): capping
//! event sizes below the threshold is not practical. Instead every flush syncs the blob files it
//! has not synced yet, then the directory. It reads the directory only when sled's count of blobs
//! written (`Db::blobs_written`, sled patch 12) moved since every file listed before was synced:
//! almost every flush writes no blob.
//!
//! Which files: those listed *before* sled's flush starts. Everything appended before the flush
//! was called has already been serialised (sled writes a blob while the page update that needs
//! it holds its place in the log, before the flush can complete that part of the log), so each of
//! them is complete once the flush returns. A blob that another thread is writing meanwhile (a
//! compaction rewriting a large leaf) belongs to a later flush and may be listed half written:
//! sled's count of blobs started, read after the listing, shows it, and then nothing that listing
//! found is taken for synced, so the next flush syncs it again once it is whole.

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

/// sled's counts of blob files: `started` before each file is created, `written` once its write
/// returned ([`sled::Db::blobs_started`], [`sled::Db::blobs_written`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlobCounts {
    pub(crate) started: u64,
    pub(crate) written: u64,
}

/// What one flush must sync: the blob files not synced yet, and, if no blob was being written
/// while they were listed (so each of them was complete), sled's count of blobs written before
/// the listing.
pub(crate) struct Unsynced {
    names: Vec<OsString>,
    complete_at: Option<u64>,
}

struct Listing {
    /// The directory, open once it exists, and read again from its start when a flush needs it
    /// (an `lseek` and a `getdents64`). `std::fs::read_dir` opened and closed it each time, with a
    /// 32 KiB buffer per flush, large enough to make glibc merge every freed small block first
    /// (docs/benchmarks.md, round two, eighth pass).
    dir: Option<Dir>,
    /// Names synced so far, each complete when it was listed (blob names are log sequence
    /// numbers, never reused while the file exists); pruned to what still exists on every
    /// listing, so it stays as small as the directory.
    synced: HashSet<OsString>,
    /// sled's count of blobs written before a listing whose every file has since been synced:
    /// while the count stays there, no blob was completed since, and the directory is not read
    /// again (an `lseek` and two `getdents64` per flush, for a directory that is usually empty).
    all_synced_at: Option<u64>,
}

impl BlobSync {
    pub(crate) fn new(dir: PathBuf) -> Self {
        BlobSync { dir, state: Mutex::new(Listing { dir: None, synced: HashSet::new(), all_synced_at: None }) }
    }

    /// The blob files not synced yet. Call before sled's flush, with a way to read sled's
    /// counts; hand the result to [`BlobSync::sync`] after it. Reads the directory only if
    /// sled's count of blobs written moved since every file listed before was synced.
    ///
    /// A blob that another thread (a compaction rewriting a large leaf) is writing while the
    /// directory is read may be listed half written: then none of the files listed counts as
    /// synced after [`BlobSync::sync`] (they are synced, and again at the next flush), so a file
    /// is never taken for durable before it was complete. Blobs of the appends before the flush
    /// were written by the appending thread, so they are counted and complete by now.
    pub(crate) fn unsynced(&self, counts: impl Fn() -> BlobCounts) -> Result<Unsynced, StorageError> {
        let before = counts();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Listing { dir, synced, all_synced_at } = &mut *state;
        if *all_synced_at == Some(before.written) {
            return Ok(Unsynced { names: Vec::new(), complete_at: Some(before.written) });
        }
        // Every blob started by the end of the listing had been written before it began: none
        // was in progress while it ran (`started` never falls below `written`).
        let complete_at = |after: BlobCounts| (after.started == before.written).then_some(before.written);
        let dir = match dir {
            Some(dir) => dir,
            None => {
                match rustix::fs::open(&self.dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
                    Ok(fd) => dir.insert(Dir::new(fd).map_err(|e| self.failed("list", &e.into()))?),
                    // sled creates the directory with its first blob.
                    Err(rustix::io::Errno::NOENT) => {
                        return Ok(Unsynced { names: Vec::new(), complete_at: complete_at(counts()) });
                    }
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
        let complete_at = complete_at(counts());
        synced.retain(|name| present.contains(name));
        Ok(Unsynced { names: present.into_iter().filter(|name| !synced.contains(name)).collect(), complete_at })
    }

    /// Fsyncs these blob files and then the directory that names them; records them as synced
    /// if no blob was being written while they were listed.
    pub(crate) fn sync(&self, unsynced: Unsynced) -> Result<(), StorageError> {
        let Unsynced { names, complete_at } = unsynced;
        if !names.is_empty() {
            for name in &names {
                match File::open(self.dir.join(name)).and_then(|file| file.sync_data()) {
                    Ok(()) => {}
                    // sled removed it meanwhile (the page was rewritten): nothing to keep.
                    Err(error) if error.kind() == ErrorKind::NotFound => {}
                    Err(error) => return Err(self.failed("fsync", &error)),
                }
            }
            File::open(&self.dir).and_then(|dir| dir.sync_all()).map_err(|e| self.failed("fsync", &e))?;
        }
        // A listing during a blob's write proves nothing about the files it found.
        let Some(written) = complete_at else { return Ok(()) };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.synced.extend(names);
        // Two flushes never overlap in the committer; if they did, the later count could only be
        // the higher, so keeping the higher is right either way.
        state.all_synced_at = Some(state.all_synced_at.map_or(written, |at| at.max(written)));
        Ok(())
    }

    /// The names synced so far (as of the last listing's pruning).
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
    use std::path::PathBuf;

    use super::{BlobCounts, BlobSync};

    fn names(list: &[&str]) -> HashSet<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// A `blobs` directory holding `files` (name, contents), its path, and a `BlobSync` of it
    /// (the first is the temporary directory to keep alive).
    fn blob_dir(files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, BlobSync) {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("blobs");
        fs::create_dir(&dir).unwrap();
        for (name, contents) in files {
            fs::write(dir.join(name), contents).unwrap();
        }
        let blobs = BlobSync::new(dir.clone());
        (base, dir, blobs)
    }

    /// sled's counts with no blob being written: `n` started and written.
    fn settled(n: u64) -> impl Fn() -> BlobCounts {
        move || BlobCounts { started: n, written: n }
    }

    /// The names one pass would sync, with no blob being written and `n` written so far.
    fn listed(blobs: &BlobSync, n: u64) -> HashSet<OsString> {
        blobs.unsynced(settled(n)).unwrap().names.into_iter().collect()
    }

    /// The directory is listed afresh on every pass whose count moved, from before it exists to
    /// files coming, being synced, going and coming back under the same name. (`n` plays sled's
    /// count of blobs written: one more for each file the test writes.)
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
        let first = blobs.unsynced(settled(2)).unwrap();
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

    /// Once every listed file is synced, a pass at the same count does not read the directory
    /// (a file sled did not count is not seen); the next count lists it again. Files listed but
    /// not yet synced are listed again whatever the count.
    #[test]
    fn an_unchanged_count_is_not_listed_again() {
        let (_base, dir, blobs) = blob_dir(&[("1", "page")]);
        assert_eq!(listed(&blobs, 1), names(&["1"]));
        assert_eq!(listed(&blobs, 1), names(&["1"]), "listed, not synced: listed again");
        blobs.sync(blobs.unsynced(settled(1)).unwrap()).unwrap();

        fs::write(dir.join("2"), b"page").unwrap();
        assert!(listed(&blobs, 1).is_empty(), "the count did not move: not listed");
        assert_eq!(listed(&blobs, 2), names(&["2"]));
        blobs.sync(blobs.unsynced(settled(2)).unwrap()).unwrap();
        assert!(listed(&blobs, 2).is_empty());
    }

    /// A blob being written while the directory is read may be listed half written: what that
    /// listing found is synced but not taken for synced, so the next pass syncs it again (and,
    /// once no blob is in progress, for good).
    #[test]
    fn a_listing_during_a_blob_write_proves_nothing() {
        let (_base, _dir, blobs) = blob_dir(&[("1", "page"), ("2", "half a pa")]);
        // Blob 1 written, blob 2 started and still being written.
        let writing = || BlobCounts { started: 2, written: 1 };
        let during = blobs.unsynced(writing).unwrap();
        assert_eq!(during.names.iter().cloned().collect::<HashSet<_>>(), names(&["1", "2"]));
        blobs.sync(during).unwrap();
        assert!(blobs.synced_names().is_empty(), "nothing taken for synced");
        assert_eq!(listed(&blobs, 1), names(&["1", "2"]), "the same count lists again");

        // Blob 2 finished only after the listing began: started moved past written before.
        let calls = std::cell::Cell::new(0);
        let finishing = || {
            calls.set(calls.get() + 1);
            if calls.get() == 1 { BlobCounts { started: 1, written: 1 } } else { BlobCounts { started: 2, written: 2 } }
        };
        let racing = blobs.unsynced(finishing).unwrap();
        blobs.sync(racing).unwrap();
        assert!(blobs.synced_names().is_empty(), "a blob started during the listing");

        blobs.sync(blobs.unsynced(settled(2)).unwrap()).unwrap();
        assert_eq!(blobs.synced_names(), names(&["1", "2"]));
        assert!(listed(&blobs, 2).is_empty());
    }
}

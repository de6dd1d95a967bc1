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

struct Listing {
    /// The directory, open once it exists, and read again from its start on every flush (an
    /// `lseek` and a `getdents64`). `std::fs::read_dir` opened and closed it each time, with a
    /// 32 KiB buffer per flush, large enough to make glibc merge every freed small block first
    /// (docs/benchmarks.md, round two, eighth pass).
    dir: Option<Dir>,
    /// Names synced so far (blob names are log sequence numbers, never reused while the file
    /// exists); pruned to what still exists on every pass, so it stays as small as the directory.
    synced: HashSet<OsString>,
}

impl BlobSync {
    pub(crate) fn new(dir: PathBuf) -> Self {
        BlobSync { dir, state: Mutex::new(Listing { dir: None, synced: HashSet::new() }) }
    }

    /// The blob files not synced yet. Call before sled's flush; hand the result to
    /// [`BlobSync::sync`] after it. Usually empty, and then it costs one `getdents64`.
    pub(crate) fn unsynced(&self) -> Result<Vec<OsString>, StorageError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Listing { dir, synced } = &mut *state;
        let dir = match dir {
            Some(dir) => dir,
            None => {
                match rustix::fs::open(&self.dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
                    Ok(fd) => dir.insert(Dir::new(fd).map_err(|e| self.failed("list", &e.into()))?),
                    // sled creates the directory with its first blob.
                    Err(rustix::io::Errno::NOENT) => return Ok(Vec::new()),
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
        self.state.lock().unwrap_or_else(PoisonError::into_inner).synced.extend(names);
        Ok(())
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

    /// The directory is listed afresh on every pass, from before it exists to files coming,
    /// being synced, going and coming back under the same name.
    #[test]
    fn lists_each_blob_until_it_is_synced_across_passes() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("blobs");
        let blobs = BlobSync::new(dir.clone());
        assert!(blobs.unsynced().unwrap().is_empty(), "no directory yet");

        fs::create_dir(&dir).unwrap();
        assert!(blobs.unsynced().unwrap().is_empty(), "an empty directory");
        fs::write(dir.join("17"), b"page").unwrap();
        fs::write(dir.join("42"), b"page").unwrap();
        let first = blobs.unsynced().unwrap();
        assert_eq!(first.iter().cloned().collect::<HashSet<_>>(), names(&["17", "42"]));
        assert_eq!(blobs.unsynced().unwrap().len(), 2, "not synced yet: listed again");
        blobs.sync(first).unwrap();
        assert!(blobs.unsynced().unwrap().is_empty(), "all synced");

        fs::remove_file(dir.join("17")).unwrap();
        fs::write(dir.join("99"), b"page").unwrap();
        assert_eq!(blobs.unsynced().unwrap().into_iter().collect::<HashSet<_>>(), names(&["99"]));
        // A name that went and came back is a new file: it needs its own sync.
        fs::write(dir.join("17"), b"page").unwrap();
        assert_eq!(blobs.unsynced().unwrap().into_iter().collect::<HashSet<_>>(), names(&["17", "99"]));

        // Past what one `getdents64` into a small buffer returns.
        let many: Vec<String> = (1000..1400).map(|n| n.to_string()).collect();
        for name in &many {
            fs::write(dir.join(name), b"").unwrap();
        }
        let listed: HashSet<OsString> = blobs.unsynced().unwrap().into_iter().collect();
        assert_eq!(listed.len(), many.len() + 2);
        assert!(many.iter().all(|name| listed.contains(&OsString::from(name))));
    }
}

//! The watermark: a small file beside sled's (`reprise.watermark` in the data directory) that
//! records how many appends had been made durable, so that a log that comes back shorter is
//! noticed instead of served.
//!
//! Why a separate file: sled recovers its log up to the first message that fails its checksum and
//! silently drops the rest, so a flipped or truncated `db` file opens as an older, shorter log
//! (issue 11). Nothing inside sled can notice that; a record that sled does not manage can.
//!
//! Why this shape: it is written after flushes that appended something (under load up to 100
//! times a second, each record covering the flushes since the last; by [`WatermarkWriter`]'s
//! thread, so that a commit does not wait for it), so it is one fixed-size slot written in place
//! and one `fdatasync`: no rename, no directory sync, no size change. Two slots, 4 KiB apart so
//! that one torn write can never touch both, are written in turn, each with a generation and a
//! CRC-32: a write torn by a power cut leaves the other slot, one record older, which is still a correct
//! (if slightly low) watermark. A failed write is retried in the same slot, so the last good one
//! is never the one overwritten next. It holds two numbers (appends and the latest id time), not
//! per-channel heads: a table of 100,000+ channels cannot be rewritten on every commit.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::StorageError;
use crate::codec::{self, WATERMARK_SLOT_BYTES, WatermarkSlot};

/// The file's name in the data directory.
pub(crate) const WATERMARK_FILE: &str = "reprise.watermark";

/// Distance between the two slots: a sector of any drive, so one torn write damages one slot.
const SLOT_STRIDE_BYTES: u64 = 4096;

/// The file's whole size, fixed at creation.
const FILE_BYTES: u64 = 2 * SLOT_STRIDE_BYTES;

/// What the file said when it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reading {
    /// No file: a new data directory, or one from a release without watermarks.
    Absent,
    /// The current slot.
    Valid(WatermarkSlot),
    /// The file exists but neither slot is valid: it was damaged.
    Unreadable,
}

/// The open watermark file and its current slot.
pub(crate) struct Watermark {
    file: File,
    current: WatermarkSlot,
}

impl Watermark {
    /// Opens the watermark in `dir`, creating it (saying nothing is durable yet, synced, with its
    /// directory entry synced) if it does not exist, and reads it.
    pub(crate) fn open(dir: &Path) -> Result<(Watermark, Reading), StorageError> {
        let path = dir.join(WATERMARK_FILE);
        let failed = |what: &str, error: std::io::Error| {
            StorageError::Io(format!("watermark {}: {what}: {error}", path.display()))
        };
        match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => {
                let reading = read_slots(&file).map_err(|e| failed("read", e))?;
                let current = match reading {
                    Reading::Valid(slot) => slot,
                    Reading::Absent | Reading::Unreadable => WatermarkSlot::default(),
                };
                Ok((Watermark { file, current }, reading))
            }
            Err(error) if error.kind() == ErrorKind::NotFound => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| failed("create", e))?;
                file.set_len(FILE_BYTES).map_err(|e| failed("size", e))?;
                // A valid first slot (nothing durable yet), so that the file never reads as
                // damaged just because no append was flushed before the next start.
                let blank = WatermarkSlot::default();
                file.write_all_at(&codec::encode_watermark(&blank), 0).map_err(|e| failed("write", e))?;
                file.sync_all().map_err(|e| failed("fsync", e))?;
                File::open(dir).and_then(|d| d.sync_all()).map_err(|e| failed("fsync of its directory", e))?;
                Ok((Watermark { file, current: WatermarkSlot::default() }, Reading::Absent))
            }
            Err(error) => Err(failed("open", error)),
        }
    }

    /// What the file holds now.
    #[cfg(test)]
    pub(crate) fn current(&self) -> WatermarkSlot {
        self.current
    }

    /// Records that `appends` appends (the latest id at `max_time_ms`) are durable, unless it
    /// already says so. Only call it after the flush that made them durable returned. Blocking:
    /// one small write and one `fdatasync`.
    pub(crate) fn record(&mut self, appends: u64, max_time_ms: u64) -> Result<(), StorageError> {
        if appends <= self.current.appends && max_time_ms <= self.current.max_time_ms {
            return Ok(());
        }
        let next = WatermarkSlot {
            generation: self.current.generation + 1,
            appends: appends.max(self.current.appends),
            max_time_ms: max_time_ms.max(self.current.max_time_ms),
        };
        let offset = (next.generation % 2) * SLOT_STRIDE_BYTES;
        self.file
            .write_all_at(&codec::encode_watermark(&next), offset)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| StorageError::Io(format!("writing the watermark failed: {e}")))?;
        self.current = next;
        Ok(())
    }
}

/// Writes the watermark from a thread of its own, so that a flush does not wait for the
/// watermark's `fdatasync` after its own (two `fdatasync`s per group commit made publishing a
/// third more costly in CPU and up to half as fast as before the watermark existed; see
/// docs/benchmarks.md, round two).
///
/// Safe because the watermark may lag what is durable, never lead it: a flush hands over only
/// totals that its own `fdatasync` already made durable. The writer writes the latest totals it
/// was given, one record at a time, so at most one slot is ever being written (a torn write
/// leaves the other, as [`Watermark::record`] requires), and at most one record per
/// [`RECORD_INTERVAL`]: the flushes of a busy moment are recorded together (a record per group
/// commit was an `fdatasync` per commit and an eighth of a busy server's CPU; see
/// docs/benchmarks.md, round two, fourth pass). A record that fails is reported by a later
/// flush, which fails with it: the events of the flush that handed it over were durable, so
/// that flush's answer stands. Dropping the writer waits for the record in progress and writes
/// the latest handed over at once: a clean close leaves the watermark exact; a crash leaves it
/// behind by what was flushed in the last [`RECORD_INTERVAL`] and the record then in progress,
/// which a damage check cannot see past.
pub(crate) struct WatermarkWriter {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    state: Mutex<WriterState>,
    /// Signalled when totals are handed over to an idle thread, when a record ends, and on drop.
    changed: Condvar,
}

/// The least time between the starts of two records. Under load the watermark is written ~100
/// times a second instead of once per group commit; an idle server's first flush is recorded at
/// once.
pub(crate) const RECORD_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Default)]
struct WriterState {
    /// The latest totals handed over and not yet taken by the thread: (appends, max_time_ms).
    pending: Option<(u64, u64)>,
    /// The thread is writing a record.
    busy: bool,
    /// The thread waits for totals (rather than resting between records): only then does a
    /// hand-over wake it, which spares a `futex` call per flush under load.
    idle: bool,
    /// The first record that failed, reported by every later hand-over.
    failed: Option<String>,
    stopping: bool,
}

impl WatermarkWriter {
    /// Starts the thread; records begin at least `interval` apart ([`RECORD_INTERVAL`] but in
    /// tests).
    pub(crate) fn start(mut watermark: Watermark, interval: Duration) -> Result<Self, StorageError> {
        let shared = Arc::new(Shared { state: Mutex::new(WriterState::default()), changed: Condvar::new() });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("reprise-watermark".into())
            .spawn(move || {
                let shared = thread_shared;
                let mut state = lock(&shared.state);
                loop {
                    let Some((appends, max_time_ms)) = state.pending.take() else {
                        if state.stopping {
                            return;
                        }
                        state.idle = true;
                        state = shared.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
                        state.idle = false;
                        continue;
                    };
                    state.busy = true;
                    drop(state);
                    let next_record = Instant::now() + interval;
                    let recorded = watermark.record(appends, max_time_ms);
                    state = lock(&shared.state);
                    state.busy = false;
                    if let (Err(error), None) = (recorded, &state.failed) {
                        state.failed = Some(error.to_string());
                    }
                    shared.changed.notify_all();
                    // Rest until the interval is over, gathering the flushes meanwhile into the
                    // next record; a stop cuts the rest short.
                    while !state.stopping {
                        let Some(left) = next_record.checked_duration_since(Instant::now()) else { break };
                        state = shared.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
                    }
                }
            })
            .map_err(|e| StorageError::Io(format!("cannot start the watermark's writer: {e}")))?;
        Ok(WatermarkWriter { shared, thread: Some(thread) })
    }

    /// Hands over totals that a flush made durable (it returned). Fails if an earlier record
    /// failed.
    pub(crate) fn submit(&self, appends: u64, max_time_ms: u64) -> Result<(), StorageError> {
        let mut state = lock(&self.shared.state);
        if let Some(error) = &state.failed {
            return Err(StorageError::Io(error.clone()));
        }
        let (held_appends, held_time) = state.pending.unwrap_or((0, 0));
        state.pending = Some((appends.max(held_appends), max_time_ms.max(held_time)));
        if state.idle {
            self.shared.changed.notify_all();
        }
        Ok(())
    }

    /// Waits until everything handed over is written; fails if a record failed.
    #[cfg(test)]
    pub(crate) fn wait(&self) -> Result<(), StorageError> {
        let mut state = lock(&self.shared.state);
        while state.pending.is_some() || state.busy {
            state = self.shared.changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        match &state.failed {
            Some(error) => Err(StorageError::Io(error.clone())),
            None => Ok(()),
        }
    }
}

impl Drop for WatermarkWriter {
    fn drop(&mut self) {
        lock(&self.shared.state).stopping = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join(); // it writes what was handed over before it ends
        }
    }
}

/// The writer's state lock: held for a few assignments, never while writing. A panic while it
/// was held cannot have left it half-updated (whole-field assignments), so poisoning is ignored.
fn lock(mutex: &Mutex<WriterState>) -> MutexGuard<'_, WriterState> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads both slots and picks the valid one with the higher generation.
fn read_slots(file: &File) -> std::io::Result<Reading> {
    let mut best: Option<WatermarkSlot> = None;
    for index in 0..2 {
        let mut bytes = [0; WATERMARK_SLOT_BYTES];
        match file.read_exact_at(&mut bytes, index * SLOT_STRIDE_BYTES) {
            Ok(()) => {}
            // A file cut short (damage): that slot is simply not there.
            Err(error) if error.kind() == ErrorKind::UnexpectedEof => continue,
            Err(error) => return Err(error),
        }
        // A slot from a newer release reads as damaged here; the log then refuses to start
        // unless told to accept a loss, which is the safe side.
        if let Ok(Some(slot)) = codec::decode_watermark(&bytes)
            && best.is_none_or(|best| slot.generation > best.generation)
        {
            best = Some(slot);
        }
    }
    Ok(best.map_or(Reading::Unreadable, Reading::Valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_watermark_is_absent_then_reads_back_what_was_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (watermark, reading) = Watermark::open(dir.path()).unwrap();
        assert_eq!(reading, Reading::Absent);
        drop(watermark);
        // Nothing flushed yet is not damage.
        let (mut watermark, reading) = Watermark::open(dir.path()).unwrap();
        assert_eq!(reading, Reading::Valid(WatermarkSlot::default()));
        watermark.record(10, 100).unwrap();
        watermark.record(12, 101).unwrap();
        watermark.record(11, 101).unwrap(); // an older flush finishing late changes nothing
        drop(watermark);
        let (watermark, reading) = Watermark::open(dir.path()).unwrap();
        let expected = WatermarkSlot { generation: 2, appends: 12, max_time_ms: 101 };
        assert_eq!(reading, Reading::Valid(expected));
        assert_eq!(watermark.current(), expected);
    }

    /// A writer in a new directory whose first hand-over (10 appends) was recorded at once.
    fn a_writer_that_recorded_10_appends(interval: Duration) -> (tempfile::TempDir, WatermarkWriter) {
        let dir = tempfile::tempdir().unwrap();
        let (watermark, _) = Watermark::open(dir.path()).unwrap();
        let writer = WatermarkWriter::start(watermark, interval).unwrap();
        writer.submit(10, 100).unwrap();
        writer.wait().unwrap();
        let (_, reading) = Watermark::open(dir.path()).unwrap();
        assert_eq!(reading, Reading::Valid(WatermarkSlot { generation: 1, appends: 10, max_time_ms: 100 }));
        (dir, writer)
    }

    /// The writer's thread records what flushes hand it (never less than it holds), and a writer
    /// that is dropped has written everything it was handed: a clean close leaves it exact.
    #[test]
    fn the_writer_records_what_it_is_handed_and_finishes_on_drop() {
        let (dir, writer) = a_writer_that_recorded_10_appends(RECORD_INTERVAL);
        for appends in 11..=50 {
            writer.submit(appends, 100 + appends).unwrap();
        }
        writer.submit(40, 140).unwrap(); // an older flush's totals lower nothing
        drop(writer);
        let (_, reading) = Watermark::open(dir.path()).unwrap();
        let Reading::Valid(slot) = reading else { panic!("a valid slot: {reading:?}") };
        assert_eq!((slot.appends, slot.max_time_ms), (50, 150));
    }

    /// Flushes handed over while the thread rests after a record are recorded together, once the
    /// rest is over or at once when the writer is dropped; the first one after a quiet spell is
    /// recorded at once. (An hour's rest, so that no scheduling delay can end it in the test.)
    #[test]
    fn a_burst_of_flushes_is_one_record_written_at_the_latest_on_drop() {
        let (dir, writer) = a_writer_that_recorded_10_appends(Duration::from_secs(3600));
        for appends in 11..=50 {
            writer.submit(appends, 100 + appends).unwrap();
        }
        let (_, reading) = Watermark::open(dir.path()).unwrap();
        assert_eq!(reading, Reading::Valid(WatermarkSlot { generation: 1, appends: 10, max_time_ms: 100 }), "resting");
        drop(writer);
        let (_, reading) = Watermark::open(dir.path()).unwrap();
        assert_eq!(reading, Reading::Valid(WatermarkSlot { generation: 2, appends: 50, max_time_ms: 150 }));
    }

    /// A write torn by a power cut damages one slot; the other, one flush older, is read instead.
    #[test]
    fn a_torn_slot_falls_back_to_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let (mut watermark, _) = Watermark::open(dir.path()).unwrap();
        watermark.record(10, 100).unwrap(); // generation 1: slot 1
        watermark.record(20, 200).unwrap(); // generation 2: slot 0
        drop(watermark);
        let path = dir.path().join(WATERMARK_FILE);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xAB; 8], 20).unwrap(); // inside slot 0
        drop(file);
        let (_, reading) = Watermark::open(dir.path()).unwrap();
        assert_eq!(reading, Reading::Valid(WatermarkSlot { generation: 1, appends: 10, max_time_ms: 100 }));

        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xAB; 8], SLOT_STRIDE_BYTES + 20).unwrap(); // and slot 1
        drop(file);
        let (_, reading) = Watermark::open(dir.path()).unwrap();
        assert_eq!(reading, Reading::Unreadable);
    }
}

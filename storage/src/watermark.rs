//! The watermark: a small file beside sled's (`reprise.watermark` in the data directory) that
//! records how many appends had been made durable, so that a log that comes back shorter is
//! noticed instead of served.
//!
//! Why a separate file: sled recovers its log up to the first message that fails its checksum and
//! silently drops the rest, so a flipped or truncated `db` file opens as an older, shorter log
//! (issue 11). Nothing inside sled can notice that; a record that sled does not manage can.
//!
//! Why this shape: it is written after every flush that appended something (every group commit,
//! thousands of times a second), so it is one fixed-size slot written in place and one
//! `fdatasync`: no rename, no directory sync, no size change. Two slots, 4 KiB apart so that one
//! torn write can never touch both, are written in turn, each with a generation and a CRC-32:
//! a write torn by a power cut leaves the other slot, one flush older, which is still a correct
//! (if slightly low) watermark. A failed write is retried in the same slot, so the last good one
//! is never the one overwritten next. It holds two numbers (appends and the latest id time), not
//! per-channel heads: a table of 100,000+ channels cannot be rewritten on every commit.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::Path;

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

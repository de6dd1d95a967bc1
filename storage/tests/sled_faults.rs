//! The vendored sled writes its log without new memory for each segment (patch 13,
//! `vendor/sled-0.34.7/PATCHES.md`): the 512 KiB buffer a segment is written through is kept for
//! the next segment, and the zeros a segment added at the end of the file is written with come
//! from one static block. Before, both were new allocations of a whole segment, and the kernel
//! faulted in (and zeroed) each of their 128 pages again, on the committer's thread, at every
//! segment: about 0.2 page faults per publish through the server, most of all its faults.
//! Alone in its file, so the process's counters (`/proc/self/stat`, `/proc/self/io`) count this
//! test's work.

mod proc_self;

use proc_self::{bytes_written, minor_faults};

const SEGMENT_BYTES: u64 = 512 * 1024;

/// One key rewritten with 4 KiB values (each different), each flushed (as a commit is): the tree
/// stays one small leaf, and the log grows a segment every ~120 writes. After a warm-up, writing
/// 16 more segments' worth faults in fewer pages than one segment's buffer has (128): ~70 here.
/// Before patch 13 it was ~1,740, a new segment's worth per segment written.
#[test]
fn writing_new_segments_faults_in_no_new_memory() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).flush_every_ms(None).open().unwrap();
    let mut value = vec![7_u8; 4096];
    let mut write_segments = |segments: u64| {
        let until = bytes_written() + segments * SEGMENT_BYTES;
        while bytes_written() < until {
            // sled skips a write of the value a key already holds.
            value[0] = value[0].wrapping_add(1);
            db.insert(b"order-status", &value[..]).unwrap();
            db.flush().unwrap();
        }
    };

    write_segments(4);
    let before = minor_faults();
    write_segments(16);
    let faults = minor_faults() - before;

    println!("{faults} page faults while writing 16 segments");
    assert!(faults < 128, "{faults} page faults while writing 16 segments of 512 KiB");
}

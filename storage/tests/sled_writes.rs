//! How many bytes the log writes per appended event (sled patches 10 and 11,
//! `vendor/sled-0.34.7/PATCHES.md`). sled logs an insert as a fragment of its node and writes the
//! node whole at a split and whenever the page holds too many fragments: for a channel's appends
//! the second is wasted, since the split comes soon after and writes the node whole anyway.
//! Alone in its file, so the process's write counter (`/proc/self/io`) counts this test's
//! writes.

mod proc_self;

use proc_self::bytes_written;
use reprise_storage::{EventLog, LogKey, NewEvent, SledLog};

/// 2,000 events of 1,000 bytes appended to one channel five at a time, each batch flushed (as
/// the committer does under load) write about 4,870 bytes each: the event, its share of the node
/// written whole at each split, and the zeros each new segment is first written with (patch 9),
/// which double everything in a log that grows. With a node also written whole every tenth
/// insert (sled's own threshold), they wrote about 7,850.
#[test]
fn appends_are_not_rewritten_between_splits() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledLog::open(dir.path()).unwrap();
    let key = LogKey::new("app", "orders");
    let data = "x".repeat(1000);
    let batch: Vec<NewEvent> = (0..5)
        .map(|_| NewEvent { key: key.clone(), event: "status".into(), data: data.clone().into(), user_id: None })
        .collect();

    let before = bytes_written();
    for _ in 0..400 {
        log.append(&batch).unwrap();
        log.flush().unwrap();
    }
    let per_event = (bytes_written() - before) / 2000;

    println!("{per_event} bytes written per event of 1,000 bytes");
    assert!(per_event < 5_500, "{per_event} bytes written per event of 1,000 bytes");
}

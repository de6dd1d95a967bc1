//! What `SledLog` keeps across a restart (a clean reopen) and across a crash (`abort` after flush).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reprise_storage::conformance::{ManualClock, START_MS};
use reprise_storage::{ChannelHead, CompactRule, Cursor, EventId, EventLog, LogKey, NewEvent, SledLog, StorageError};

fn open(dir: &Path, clock: &ManualClock) -> SledLog {
    SledLog::open(dir).unwrap().with_clock(clock.clock())
}

fn key(channel: &str) -> LogKey {
    LogKey::new("app", channel)
}

fn append(log: &SledLog, key: &LogKey, n: usize) -> Vec<EventId> {
    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent {
            key: key.clone(),
            event: "message".into(),
            data: format!("{}-{i}", key.channel).into(),
            user_id: None,
        })
        .collect();
    log.append(&events).unwrap()
}

fn keep_last(n: u64) -> CompactRule {
    CompactRule { keep_last: Some(n), ..CompactRule::default() }
}

fn data(log: &SledLog, key: &LogKey) -> Vec<String> {
    log.read(key, Cursor::Oldest, 1000).unwrap().events.into_iter().map(|event| event.data).collect()
}

/// Events, heads and compaction marks survive a reopen, and ids continue from the heads.
#[test]
fn reopen_keeps_events_heads_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let (a, b, c) = (key("a"), key("b"), key("c"));
    let (ids_a, ids_b, ids_c);
    {
        let log = open(dir.path(), &clock);
        ids_a = append(&log, &a, 5);
        ids_b = append(&log, &b, 3);
        ids_c = append(&log, &c, 2);
        assert_eq!(log.compact(&a, keep_last(2)).unwrap(), 3);
        assert_eq!(log.compact(&b, keep_last(0)).unwrap(), 3);
        log.flush().unwrap();
    }

    clock.advance(1);
    let log = open(dir.path(), &clock);
    assert_eq!(log.head(&a).unwrap(), ChannelHead { head: Some(ids_a[4]), compacted_through: Some(ids_a[2]) });
    assert_eq!(log.head(&b).unwrap(), ChannelHead { head: Some(ids_b[2]), compacted_through: Some(ids_b[2]) });
    assert_eq!(log.head(&c).unwrap(), ChannelHead { head: Some(ids_c[1]), compacted_through: None });
    assert_eq!(data(&log, &a), vec!["a-3", "a-4"]);
    assert_eq!(data(&log, &b), Vec::<String>::new());
    assert_eq!(data(&log, &c), vec!["c-0", "c-1"]);
    assert!(log.read(&a, Cursor::After(ids_a[2]), 10).unwrap().recovered);
    assert!(!log.read(&a, Cursor::After(ids_a[1]), 10).unwrap().recovered);
    assert!(log.read(&b, Cursor::After(ids_b[2]), 10).unwrap().recovered);
    let mut listed = log.channels("app").unwrap();
    listed.sort();
    assert_eq!(listed, vec![a.clone(), b.clone(), c.clone()]);

    assert_eq!(append(&log, &a, 1)[0], EventId::new(START_MS + 1, 6));
    assert_eq!(append(&log, &b, 1)[0], EventId::new(START_MS + 1, 4), "the head outlived its events");
    assert_eq!(append(&log, &c, 1)[0], EventId::new(START_MS + 1, 3));
}

/// After a restart with a clock that went backwards, ids still grow: time is held at the head's,
/// also for a channel whose head is only remembered by its metadata.
#[test]
fn ids_keep_increasing_when_the_clock_went_back_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS + 3_600_000);
    let (live, compacted) = (key("live"), key("compacted"));
    let (head_live, head_compacted);
    {
        let log = open(dir.path(), &clock);
        head_live = append(&log, &live, 3)[2];
        head_compacted = append(&log, &compacted, 3)[2];
        log.compact(&compacted, keep_last(0)).unwrap();
        log.flush().unwrap();
    }
    clock.set(START_MS);
    let log = open(dir.path(), &clock);
    let next_live = append(&log, &live, 2);
    assert_eq!(next_live, vec![EventId::new(START_MS + 3_600_000, 4), EventId::new(START_MS + 3_600_000, 5)]);
    assert!(next_live[0] > head_live);
    let next_compacted = append(&log, &compacted, 1)[0];
    assert_eq!(next_compacted, EventId::new(START_MS + 3_600_000, 4));
    assert!(next_compacted > head_compacted);
    let resumed = log.read(&compacted, Cursor::After(head_compacted), 10).unwrap();
    assert!(resumed.recovered);
    assert_eq!(resumed.events.len(), 1);
}

/// A channel created after a restart gets a fresh id: its reads never show another channel's
/// events, and theirs never show its.
#[test]
fn channels_created_after_a_restart_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(START_MS);
    let names = ["one", "two", "three", "four", "five", "six"];
    for round in 0..3 {
        let log = open(dir.path(), &clock);
        for name in &names[round * 2..round * 2 + 2] {
            append(&log, &key(name), round + 1);
        }
        // Every channel so far, old and new, holds exactly its own events.
        for (index, name) in names[..round * 2 + 2].iter().enumerate() {
            let expected: Vec<String> = (0..index / 2 + 1).map(|i| format!("{name}-{i}")).collect();
            assert_eq!(data(&log, &key(name)), expected, "round {round}, channel {name}");
        }
        assert_eq!(log.stats().unwrap().channels, u64::try_from(round * 2 + 2).unwrap());
    }
}

/// Set in the child process of the crash test: the directory to write to before aborting, and
/// which phase to play.
const CRASH_DIR_ENV: &str = "REPRISE_STORAGE_CRASH_DIR";
const CRASH_PHASE_ENV: &str = "REPRISE_STORAGE_CRASH_PHASE";

/// Recovery after `kill -9`, with real crashes: a child process writes and aborts (no destructor
/// runs, sled flushes nothing on its way out).
///
/// Phase 1 flushes and aborts: everything up to the flush is back, compaction mark included. Phase
/// 2 aborts with unflushed appends: whatever survives is a contiguous continuation, and a channel
/// created afterwards gets its own id. (A process crash cannot tell an fsync from a write the OS
/// already holds, and sled hands its buffers to the OS eagerly, so this guards recovery, not the
/// fsync itself.)
#[test]
fn flushed_appends_survive_a_crash() {
    if let Ok(dir) = std::env::var(CRASH_DIR_ENV) {
        let phase = std::env::var(CRASH_PHASE_ENV).unwrap();
        crash_child(Path::new(&dir), &phase);
    }
    let dir = tempfile::tempdir().unwrap();
    let a = key("a");
    let compacted_through = EventId::new(START_MS, 6);

    run_crash_child(dir.path(), "1");
    let clock = ManualClock::new(START_MS);
    {
        let log = open(dir.path(), &clock);
        let head = log.head(&a).unwrap();
        assert_eq!(
            head,
            ChannelHead { head: Some(EventId::new(START_MS, 11)), compacted_through: Some(compacted_through) }
        );
        let rest = log.read(&a, Cursor::After(compacted_through), 100).unwrap();
        assert!(rest.recovered);
        assert_eq!(rest.events.iter().map(|event| event.id.seq()).collect::<Vec<_>>(), (7..=11).collect::<Vec<_>>());
    }

    run_crash_child(dir.path(), "2");
    let log = open(dir.path(), &clock);
    let head = log.head(&a).unwrap();
    assert_eq!(head.compacted_through, Some(compacted_through));
    let head_seq = head.head.unwrap().seq();
    assert!((11..=16).contains(&head_seq), "head {head_seq}");
    let rest = log.read(&a, Cursor::After(compacted_through), 100).unwrap();
    let seqs: Vec<u64> = rest.events.iter().map(|event| event.id.seq()).collect();
    assert_eq!(seqs, (7..=head_seq).collect::<Vec<_>>(), "no hole among what survived");
    assert_eq!(append(&log, &a, 1)[0].seq(), head_seq + 1);

    // Whatever survived of the unflushed channel is its own, and a new channel does not share its id.
    let late = log.read(&key("late"), Cursor::Oldest, 100).unwrap();
    let late_seqs: Vec<u64> = late.events.iter().map(|event| event.id.seq()).collect();
    assert_eq!(late_seqs, (1..=u64::try_from(late_seqs.len()).unwrap()).collect::<Vec<_>>());
    append(&log, &key("fresh"), 2);
    assert_eq!(data(&log, &key("fresh")), vec!["fresh-0", "fresh-1"]);
    assert!(data(&log, &key("late")).iter().all(|data| data.starts_with("late-")));
}

fn run_crash_child(dir: &Path, phase: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["flushed_appends_survive_a_crash", "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_ENV, dir)
        .env(CRASH_PHASE_ENV, phase)
        .status()
        .unwrap();
    assert!(!status.success(), "the child must crash, not exit");
}

fn crash_child(dir: &Path, phase: &str) -> ! {
    let a = key("a");
    if phase == "1" {
        let log = open(dir, &ManualClock::new(START_MS));
        append(&log, &a, 10);
        log.compact(&a, keep_last(4)).unwrap();
        append(&log, &a, 1);
        log.flush().unwrap();
    } else {
        let log = open(dir, &ManualClock::new(START_MS + 1000));
        append(&log, &a, 5);
        append(&log, &key("late"), 3);
    }
    std::process::abort();
}

/// Recovery across many of sled's segments (512 KiB each), some of them freed by compaction and
/// written again, after a crash. The vendored sled grows its file a segment at a time, syncs the
/// file before a segment is written again or a buffer starts a segment, and no longer syncs each
/// buffer (`vendor/sled-0.34.7/PATCHES.md`, 5 and 6): a child process appends about 6 MiB in
/// flushed rounds, compacting as it goes, and aborts; everything flushed is back, and the file
/// stayed far smaller than what went through it (segments were reused).
#[test]
fn segments_freed_by_compaction_are_reused_and_survive_a_crash() {
    if let Ok(dir) = std::env::var(SEGMENTS_DIR_ENV) {
        segments_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["segments_freed_by_compaction_are_reused_and_survive_a_crash", "--exact", "--nocapture"])
        .env(SEGMENTS_DIR_ENV, dir.path())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must crash, not exit");

    let log = open(dir.path(), &ManualClock::new(START_MS));
    let channel = key("big");
    let appended = SEGMENT_ROUNDS * SEGMENT_ROUND_EVENTS;
    let head = log.head(&channel).unwrap();
    assert_eq!(head.head.map(|id| id.seq()), Some(u64::try_from(appended).unwrap()));
    let kept = log.read(&channel, Cursor::Oldest, 1000).unwrap().events;
    let seqs: Vec<u64> = kept.iter().map(|event| event.id.seq()).collect();
    let first_kept = u64::try_from(appended - SEGMENT_ROUND_EVENTS + 1).unwrap();
    assert_eq!(seqs, (first_kept..=u64::try_from(appended).unwrap()).collect::<Vec<_>>());
    for event in &kept {
        assert_eq!(event.data, segment_event_data(usize::try_from(event.id.seq()).unwrap() - 1));
    }
    let file_len = std::fs::metadata(dir.path().join("db")).unwrap().len();
    let written = u64::try_from(appended * SEGMENT_EVENT_BYTES).unwrap();
    assert!(file_len < written / 2, "{file_len} bytes of file for {written} bytes of events: no segment was reused");
}

/// sled writes a new segment's zeros when it adds the segment to the end of its file
/// (`vendor/sled-0.34.7/PATCHES.md`, 9), so the file never has holes: a flush writes events into
/// blocks already allocated and need not write the file's metadata with them. Before, the file
/// grew a sparse segment at a time and each flush allocated the blocks it wrote. (A file system
/// that stores zeros as holes, such as ZFS with compression, would fail this; ext4 and XFS do not.)
#[cfg(unix)]
#[test]
fn the_log_file_is_written_a_whole_segment_at_a_time() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), &ManualClock::new(START_MS));
    let channel = key("a");
    let mut file_len = 0;
    // 8 KB a round: a few flushes per segment, and well into a second one.
    for round in 0..SEGMENT_ROUND_EVENTS * 3 / 2 {
        log.append(&segment_events(&channel, round * 8, 8)).unwrap();
        log.flush().unwrap();
        let file = std::fs::metadata(dir.path().join("db")).unwrap();
        file_len = file.len();
        let allocated = file.blocks() * 512;
        assert!(allocated >= file_len, "after round {round}: {file_len} bytes of file, {allocated} allocated");
    }
    assert!(file_len > 512 * 1024, "{file_len} bytes: the events did not reach a second segment");
}

const SEGMENTS_DIR_ENV: &str = "REPRISE_STORAGE_SEGMENTS_DIR";
const SEGMENT_ROUNDS: usize = 96;
const SEGMENT_ROUND_EVENTS: usize = 64;
const SEGMENT_EVENT_BYTES: usize = 1000;

fn segment_event_data(index: usize) -> String {
    format!("{index:0>width$}", width = SEGMENT_EVENT_BYTES)
}

/// `count` events on `channel` whose data are `segment_event_data(first..first + count)`.
fn segment_events(channel: &LogKey, first: usize, count: usize) -> Vec<NewEvent<'_>> {
    (first..first + count)
        .map(|index| NewEvent {
            key: channel.clone(),
            event: "message".into(),
            data: segment_event_data(index).into(),
            user_id: None,
        })
        .collect()
}

fn segments_child(dir: &Path) -> ! {
    let log = open(dir, &ManualClock::new(START_MS));
    let channel = key("big");
    for round in 0..SEGMENT_ROUNDS {
        log.append(&segment_events(&channel, round * SEGMENT_ROUND_EVENTS, SEGMENT_ROUND_EVENTS)).unwrap();
        log.compact(&channel, keep_last(u64::try_from(SEGMENT_ROUND_EVENTS).unwrap())).unwrap();
        log.flush().unwrap();
    }
    std::process::abort();
}

/// A log reopened right after the previous one closed must not fail on sled's lazily released file
/// lock (spacejam/sled#1234): the server reopens its log on restart, tests do it constantly.
#[test]
fn open_waits_for_a_lock_that_is_being_released() {
    let dir = tempfile::tempdir().unwrap();
    let log = SledLog::open(dir.path()).unwrap();
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        drop(log);
    });
    let reopened = SledLog::open(dir.path());
    closer.join().unwrap();
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

/// Two logs on one directory would corrupt it: while one is open, another open fails.
#[test]
fn open_fails_while_another_log_holds_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _held = SledLog::open(dir.path()).unwrap();
    let started = Instant::now();
    let second = SledLog::open(dir.path());
    assert!(matches!(second, Err(StorageError::Locked(_))), "{:?}", second.err());
    assert!(started.elapsed() >= SledLog::OPEN_LOCK_WAIT);
}

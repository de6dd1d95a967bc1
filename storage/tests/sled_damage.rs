//! A damaged data directory is never served silently (issue 11): sled recovers its log only up to
//! the first damaged message, so a `db` file with bytes flipped in the middle, or cut short, used
//! to open as an older log whose heads had gone back, and the next append handed out an id that
//! clients already held. The watermark beside sled's files notices; opening refuses with
//! `DataLoss`, and opening with `open_accepting_data_loss` keeps ids unique and reports every
//! old cursor as not recovered.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use reprise_storage::{Cursor, DataLoss, EventId, EventLog, LogKey, NewEvent, SledLog, StorageError};

const EVENTS: usize = 300;

fn key(channel: &str) -> LogKey {
    LogKey::new("app", channel)
}

fn event(channel: &str, i: usize) -> NewEvent<'static> {
    // Data that compresses badly and fills sled's pages like real payloads do.
    NewEvent {
        key: key(channel),
        event: "message".into(),
        data: format!("{channel}-{i}-{}", "x".repeat(200)).into(),
        user_id: None,
    }
}

/// A real data directory: `EVENTS` events on "a" (and a few on "b"), each appended and flushed on
/// its own as the server's group commits do. Returns every id handed out, in order.
fn build(dir: &Path) -> Vec<EventId> {
    let log = SledLog::open(dir).unwrap();
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        let mut batch = vec![event("a", i)];
        if i % 10 == 0 {
            batch.push(event("b", i));
        }
        ids.extend(log.append(&batch).unwrap());
        log.flush().unwrap();
    }
    ids
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// XORs 16 bytes of `db` at `offset` (0xFF: every bit flips).
fn flip(dir: &Path, offset: u64) {
    let file = OpenOptions::new().read(true).write(true).open(dir.join("db")).unwrap();
    let mut bytes = [0; 16];
    file.read_exact_at(&mut bytes, offset).unwrap();
    for byte in &mut bytes {
        *byte ^= 0xFF;
    }
    file.write_all_at(&bytes, offset).unwrap();
}

fn db_len(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("db")).unwrap().len()
}

/// Where what sled wrote into `db` ends: the file grows a segment at a time, and the rest of its
/// last segment is zeros (sled patch 9), which damage leaves as they were.
fn written_len(dir: &Path) -> u64 {
    let bytes = std::fs::read(dir.join("db")).unwrap();
    let end = bytes.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
    u64::try_from(end).unwrap()
}

fn truncate_to_half(dir: &Path) {
    let file = OpenOptions::new().write(true).open(dir.join("db")).unwrap();
    file.set_len(written_len(dir) / 2).unwrap();
}

/// Opening refuses with a `DataLoss` saying how many durable appends are missing.
fn expect_refused(dir: &Path) -> DataLoss {
    match SledLog::open(dir) {
        Err(StorageError::DataLoss(loss)) => {
            let durable = loss.durable_appends.expect("the watermark is intact");
            assert_eq!(durable, u64::try_from(EVENTS + EVENTS / 10).unwrap(), "{loss:?}");
            assert!(loss.found_appends < durable, "{loss:?}");
            let message = loss.to_string();
            assert!(message.contains(&format!("{durable} had been made durable")), "{message}");
            loss
        }
        Err(other) => panic!("expected DataLoss, got {other}"),
        Ok(log) => panic!("a damaged log opened silently; head of a: {:?}", log.head(&key("a")).unwrap()),
    }
}

/// After accepting the loss: the log opens with what is left, a new id is none handed out before
/// and above all of them, every old cursor (also one that survived) and `Oldest` are not
/// recovered, and cursors on new events are. It still holds after a restart.
fn check_accepting(dir: &Path, handed_out: &[EventId]) {
    let a = key("a");
    {
        let log = SledLog::open_accepting_data_loss(dir).unwrap();
        let loss = log.accepted_loss().expect("a loss was accepted");
        let head = log.head(&a).unwrap().head.expect("the start of the log survived");
        assert!(head.seq() < u64::try_from(EVENTS).unwrap(), "the damage removed the end of a: head {head}");
        assert!(loss.found_appends < loss.durable_appends.unwrap());

        let new = log.append(&[event("a", 1000)]).unwrap()[0];
        log.flush().unwrap();
        assert!(!handed_out.contains(&new), "{new} was handed out before the damage");
        assert!(new > *handed_out.iter().max().unwrap(), "{new} sorts after every earlier id");
        assert_eq!(new.seq(), head.seq() + 1, "sequences stay contiguous in what the log holds");

        let survivor = handed_out.iter().find(|id| id.seq() == 1).copied().unwrap();
        let lost = *handed_out.iter().filter(|id| id.seq() == u64::try_from(EVENTS).unwrap() - 1).max().unwrap();
        for cursor in [Cursor::After(survivor), Cursor::After(head), Cursor::After(lost), Cursor::Oldest] {
            let outcome = log.read(&a, cursor, 10_000).unwrap();
            assert!(!outcome.recovered, "{cursor:?} may have missed lost events");
        }
        assert!(!log.read(&key("never-seen"), Cursor::Oldest, 10).unwrap().recovered, "it may have been lost whole");
        let after_new = log.read(&a, Cursor::After(new), 10).unwrap();
        assert!(after_new.recovered && after_new.events.is_empty());
        let from_now = log.read(&a, Cursor::FromTime { timestamp_ms: new.timestamp_ms() }, 10).unwrap();
        assert!(from_now.recovered);
        assert_eq!(from_now.events.iter().map(|e| e.id).collect::<Vec<_>>(), vec![new]);
    }
    let log = SledLog::open(dir).expect("an accepted loss is not reported again");
    assert!(log.accepted_loss().is_none());
    assert!(!log.read(&a, Cursor::After(handed_out[0]), 10).unwrap().recovered, "still after a restart");
    let next = log.append(&[event("a", 1001)]).unwrap()[0];
    assert!(next > *handed_out.iter().max().unwrap());
}

/// The first recipe: 16 bytes flipped in the middle of `db` (of what sled wrote into it).
#[test]
fn bytes_flipped_in_the_middle_of_db_are_refused_then_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original");
    let handed_out = build(&original);
    let damaged = dir.path().join("damaged");
    copy_dir(&original, &damaged);
    flip(&damaged, written_len(&damaged) / 2);
    expect_refused(&damaged);
    check_accepting(&damaged, &handed_out);
}

/// The second recipe: `db` cut to half its length (of what sled wrote into it).
#[test]
fn db_truncated_to_half_is_refused_then_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original");
    let handed_out = build(&original);
    let damaged = dir.path().join("damaged");
    copy_dir(&original, &damaged);
    truncate_to_half(&damaged);
    expect_refused(&damaged);
    check_accepting(&damaged, &handed_out);
}

/// Damage anywhere in `db` is either refused at open (by sled or by the watermark), or fails the
/// reads that touch it, or changed nothing: never a shorter or altered history served as whole.
/// Sweeps flips across the whole file.
#[test]
fn no_flip_anywhere_in_db_is_served_silently() {
    const POSITIONS: u64 = 96;
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original");
    build(&original);
    // Opening a log rewrites part of it, so the reference is read from a copy: every damaged
    // copy starts from the directory exactly as the last process left it.
    let reference = dir.path().join("reference");
    copy_dir(&original, &reference);
    let expected = {
        let log = SledLog::open(&reference).unwrap();
        (log.read(&key("a"), Cursor::Oldest, 10_000).unwrap(), log.read(&key("b"), Cursor::Oldest, 10_000).unwrap())
    };
    let len = db_len(&original);
    let (mut refused_by_sled, mut refused_as_loss, mut failed_reads, mut intact) = (0, 0, 0, 0);
    for n in 0..POSITIONS {
        let damaged = dir.path().join(format!("damaged-{n}"));
        copy_dir(&original, &damaged);
        let offset = (len * n / POSITIONS).min(len - 16);
        flip(&damaged, offset);
        match SledLog::open(&damaged) {
            Err(StorageError::DataLoss(_)) => refused_as_loss += 1,
            Err(_) => refused_by_sled += 1,
            Ok(log) => match (log.read(&key("a"), Cursor::Oldest, 10_000), log.read(&key("b"), Cursor::Oldest, 10_000))
            {
                (Ok(a), Ok(b)) => {
                    assert_eq!((a, b), expected, "a flip at {offset} of {len} changed what is served");
                    intact += 1;
                }
                _ => failed_reads += 1,
            },
        }
        std::fs::remove_dir_all(&damaged).unwrap();
    }
    eprintln!(
        "{POSITIONS} flips over {len} bytes: {refused_by_sled} refused by sled, {refused_as_loss} refused as a \
         data loss, {failed_reads} failed reads, {intact} changed nothing"
    );
    assert!(refused_as_loss > 0, "the sweep must reach the damage sled alone does not report");
}

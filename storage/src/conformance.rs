//! The [`EventLog`] contract as executable checks, shared by every backend.
//!
//! Each check takes a [`Factory`] that opens a fresh, empty log whose appends are stamped by the
//! given [`Clock`], and panics on the first broken promise. A backend's test calls [`run_all`]:
//!
//! ```no_run
//! use reprise_storage::{EventLog, SledLog, conformance};
//!
//! conformance::run_all(&|clock| -> Box<dyn EventLog> {
//!     Box::new(SledLog::open_temporary().unwrap().with_clock(clock))
//! });
//! ```

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{
    ChannelHead, Clock, CompactRule, Cursor, EventId, EventLog, LogKey, LogStats, NewEvent, ReadOutcome, StorageError,
    StoredEvent,
};

/// Opens a fresh, empty log stamped by the given clock.
pub type Factory<'a> = &'a dyn Fn(Clock) -> Box<dyn EventLog>;

/// One named check.
pub type Case = (&'static str, fn(Factory<'_>));

/// Where every check's clock starts (2023-11-14, ms since the Unix epoch).
pub const START_MS: u64 = 1_700_000_000_000;

/// Reads in the checks use this limit when they mean "everything".
const ALL: usize = 10_000;

/// A clock that moves only when told to, also backwards.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(now_ms)))
    }

    pub fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// The [`Clock`] to hand to a log.
    pub fn clock(&self) -> Clock {
        let now = Arc::clone(&self.0);
        Arc::new(move || now.load(Ordering::SeqCst))
    }
}

/// Every check, by name.
pub const CASES: &[Case] = &[
    ("empty_append_returns_no_ids", empty_append_returns_no_ids),
    ("ids_increase_and_seqs_are_contiguous", ids_increase_and_seqs_are_contiguous),
    ("clock_stepping_back_keeps_ids_increasing", clock_stepping_back_keeps_ids_increasing),
    ("batch_across_channels_is_ordered", batch_across_channels_is_ordered),
    ("batch_across_many_channels_numbers_each", batch_across_many_channels_numbers_each),
    ("failed_batch_appends_nothing", failed_batch_appends_nothing),
    ("concurrent_appends_stay_contiguous", concurrent_appends_stay_contiguous),
    ("channels_and_apps_are_independent", channels_and_apps_are_independent),
    ("unknown_channel_reads_empty", unknown_channel_reads_empty),
    ("read_after_head_is_empty_and_recovered", read_after_head_is_empty_and_recovered),
    ("read_after_middle_returns_the_rest", read_after_middle_returns_the_rest),
    ("events_read_back_as_appended", events_read_back_as_appended),
    ("read_after_future_id_is_not_recovered", read_after_future_id_is_not_recovered),
    ("read_after_foreign_id_is_not_recovered", read_after_foreign_id_is_not_recovered),
    ("read_after_seq_zero_means_before_everything", read_after_seq_zero_means_before_everything),
    ("read_oldest_honours_limit", read_oldest_honours_limit),
    ("read_from_time", read_from_time),
    ("paging_sees_every_event_once", paging_sees_every_event_once),
    ("compact_keep_last", compact_keep_last),
    ("compact_before", compact_before),
    ("compact_older_than", compact_older_than),
    ("compact_rules_combine_as_union", compact_rules_combine_as_union),
    ("full_compaction_keeps_head", full_compaction_keeps_head),
    ("from_time_after_compaction", from_time_after_compaction),
    ("channels_lists_every_appended_channel_of_the_app", channels_lists_every_appended_channel_of_the_app),
    ("stats_count_channels_and_events", stats_count_channels_and_events),
    ("import_restores_a_channel_exactly", import_restores_a_channel_exactly),
    ("import_of_a_fully_compacted_channel_keeps_its_head", import_of_a_fully_compacted_channel_keeps_its_head),
    ("import_refuses_gaps_and_reused_ids", import_refuses_gaps_and_reused_ids),
];

/// Runs every check on fresh logs from `factory`; panics listing each one that failed (their
/// panic messages are printed as they happen).
pub fn run_all(factory: Factory<'_>) {
    let mut failed = Vec::new();
    for (name, case) in CASES {
        if catch_unwind(AssertUnwindSafe(|| case(factory))).is_err() {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "event log conformance failed: {failed:?}");
}

// ---------------------------------------------------------------------------------------------
// Helpers

fn open(factory: Factory<'_>) -> (Box<dyn EventLog>, ManualClock) {
    let clock = ManualClock::new(START_MS);
    let log = factory(clock.clock());
    (log, clock)
}

fn key(app: &str, channel: &str) -> LogKey {
    LogKey::new(app, channel)
}

fn event(key: &LogKey, data: impl Into<String>) -> NewEvent<'static> {
    NewEvent { key: key.clone(), event: "message".into(), data: data.into().into(), user_id: None }
}

/// Appends `n` events one call at a time, with data "0", "1", ...
fn append_n(log: &dyn EventLog, key: &LogKey, n: usize) -> Vec<EventId> {
    (0..n).map(|i| append_one(log, key, &i.to_string())).collect()
}

fn append_one(log: &dyn EventLog, key: &LogKey, data: &str) -> EventId {
    let ids = log.append(&[event(key, data)]).expect("append");
    assert_eq!(ids.len(), 1, "one id per appended event");
    ids[0]
}

fn read(log: &dyn EventLog, key: &LogKey, cursor: Cursor, limit: usize) -> ReadOutcome {
    log.read(key, cursor, limit).expect("read")
}

fn ids_of(outcome: &ReadOutcome) -> Vec<EventId> {
    outcome.events.iter().map(|event| event.id).collect()
}

fn data_of(outcome: &ReadOutcome) -> Vec<&str> {
    outcome.events.iter().map(|event| event.data.as_str()).collect()
}

fn compact(log: &dyn EventLog, key: &LogKey, rule: CompactRule) -> u64 {
    log.compact(key, rule).expect("compact")
}

fn keep_last(n: u64) -> CompactRule {
    CompactRule { keep_last: Some(n), ..CompactRule::default() }
}

fn assert_strictly_increasing(ids: &[EventId]) {
    for pair in ids.windows(2) {
        assert!(pair[0] < pair[1], "ids must strictly increase: {} then {}", pair[0], pair[1]);
    }
}

// ---------------------------------------------------------------------------------------------
// Appends

/// An empty append is a no-op, not an error.
pub fn empty_append_returns_no_ids(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    assert_eq!(log.append(&[]).expect("append"), Vec::<EventId>::new());
    assert_eq!(log.stats().expect("stats").events, 0);
}

/// Ids carry the append time, grow strictly, and sequences run 1, 2, 3... with no gap, whether
/// events come one per call or batched, in the same millisecond or not.
pub fn ids_increase_and_seqs_are_contiguous(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let mut ids = vec![append_one(&*log, &k, "a")];
    clock.advance(1);
    ids.push(append_one(&*log, &k, "b"));
    ids.push(append_one(&*log, &k, "c")); // same millisecond
    clock.advance(5);
    ids.extend(log.append(&[event(&k, "d"), event(&k, "e"), event(&k, "f")]).expect("append"));
    log.flush().expect("flush");

    assert_strictly_increasing(&ids);
    let seqs: Vec<u64> = ids.iter().map(|id| id.seq()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    let times: Vec<u64> = ids.iter().map(|id| id.timestamp_ms() - START_MS).collect();
    assert_eq!(times, vec![0, 1, 1, 6, 6, 6]);

    let all = read(&*log, &k, Cursor::Oldest, ALL);
    assert_eq!(ids_of(&all), ids);
    assert_eq!(data_of(&all), vec!["a", "b", "c", "d", "e", "f"]);
    assert!(all.events.iter().all(|event| event.event == "message"));
    assert_eq!(all.head, Some(ids[5]));
    assert!(all.recovered);
    assert_eq!(log.head(&k).expect("head"), ChannelHead { head: Some(ids[5]), compacted_through: None });
}

/// A wall clock that steps back (NTP) must not make ids go back: the channel keeps its last time.
pub fn clock_stepping_back_keeps_ids_increasing(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let first = append_one(&*log, &k, "a");
    clock.set(START_MS - 3_600_000);
    let second = append_one(&*log, &k, "b");
    let batch = log.append(&[event(&k, "c"), event(&k, "d")]).expect("append");
    assert_eq!(second, EventId::new(START_MS, 2), "time is held at the head's");
    assert_eq!(batch, vec![EventId::new(START_MS, 3), EventId::new(START_MS, 4)]);
    // A channel first appended to now gets the (earlier) clock: it has no head to hold.
    let other = append_one(&*log, &key("app", "other"), "x");
    assert_eq!(other, EventId::new(START_MS - 3_600_000, 1));
    clock.set(START_MS + 10);
    let later = append_one(&*log, &k, "e");
    assert_eq!(later, EventId::new(START_MS + 10, 5));
    assert_strictly_increasing(&[first, second, batch[0], batch[1], later]);
}

/// One append naming several channels returns ids in input order, numbers each channel on its own,
/// and lands every event.
pub fn batch_across_channels_is_ordered(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let a = key("app", "a");
    let b = key("app", "b");
    let c = key("other-app", "a");
    append_n(&*log, &b, 2);
    let ids = log
        .append(&[event(&a, "a1"), event(&b, "b1"), event(&a, "a2"), event(&c, "c1"), event(&b, "b2")])
        .expect("append");
    let seqs: Vec<u64> = ids.iter().map(|id| id.seq()).collect();
    assert_eq!(seqs, vec![1, 3, 2, 1, 4]);
    assert_eq!(data_of(&read(&*log, &a, Cursor::Oldest, ALL)), vec!["a1", "a2"]);
    assert_eq!(ids_of(&read(&*log, &a, Cursor::Oldest, ALL)), vec![ids[0], ids[2]]);
    assert_eq!(data_of(&read(&*log, &b, Cursor::Oldest, ALL)), vec!["0", "1", "b1", "b2"]);
    assert_eq!(data_of(&read(&*log, &c, Cursor::Oldest, ALL)), vec!["c1"]);
}

/// One append naming many channels (a group commit of publishes to per-user channels), each
/// several times and in turn: every channel is numbered on its own, from where it was.
pub fn batch_across_many_channels_numbers_each(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let keys: Vec<LogKey> = (0..40).map(|n| key("app", &format!("private-user.{n}"))).collect();
    append_n(&*log, &keys[7], 3);
    let events: Vec<NewEvent> =
        (0..3).flat_map(|round| keys.iter().map(move |key| event(key, format!("{}-{round}", key.channel)))).collect();
    let ids = log.append(&events).expect("append");
    assert_eq!(ids.len(), 120);
    for (n, key) in keys.iter().enumerate() {
        let first = if n == 7 { 4 } else { 1 };
        let seqs: Vec<u64> =
            ids.iter().zip(&events).filter(|(_, event)| &event.key == key).map(|(id, _)| id.seq()).collect();
        assert_eq!(seqs, vec![first, first + 1, first + 2], "{}", key.channel);
        let read_back = read(&*log, key, Cursor::Oldest, ALL);
        let expected: Vec<String> = (0..3).map(|round| format!("{}-{round}", key.channel)).collect();
        assert_eq!(data_of(&read_back)[usize::try_from(first - 1).unwrap()..], expected[..], "{}", key.channel);
    }
}

/// An append that fails stores none of its events and burns no sequence number. (Keys containing
/// NUL are refused by every backend, see [`LogKey`].)
pub fn failed_batch_appends_nothing(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let good = key("app", "good");
    append_one(&*log, &good, "before");
    let bad = key("app", "bad\0name");
    assert!(log.append(&[event(&good, "lost"), event(&bad, "x")]).is_err());
    let all = read(&*log, &good, Cursor::Oldest, ALL);
    assert_eq!(data_of(&all), vec!["before"]);
    assert_eq!(append_one(&*log, &good, "after").seq(), 2, "the failed append burnt no sequence");
}

/// Concurrent appenders never share or skip a sequence number, and each sees its own ids rise.
pub fn concurrent_appends_stay_contiguous(factory: Factory<'_>) {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 50;
    let (log, clock) = open(factory);
    let shared = key("app", "shared");
    let per_thread: Vec<Vec<EventId>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|thread| {
                let (log, clock, shared) = (&*log, &clock, &shared);
                scope.spawn(move || {
                    let own = key("app", &format!("own-{thread}"));
                    let mut ids = Vec::with_capacity(PER_THREAD);
                    for i in 0..PER_THREAD {
                        if i % 10 == 0 {
                            clock.advance(1);
                        }
                        let got =
                            log.append(&[event(shared, format!("{thread}-{i}")), event(&own, "x")]).expect("append");
                        assert_eq!(got[1].seq(), u64::try_from(i + 1).expect("small"));
                        ids.push(got[0]);
                    }
                    ids
                })
            })
            .collect();
        workers.into_iter().map(|worker| worker.join().expect("appender panicked")).collect()
    });
    for ids in &per_thread {
        assert_strictly_increasing(ids);
    }
    let mut seqs: Vec<u64> = per_thread.iter().flatten().map(|id| id.seq()).collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=u64::try_from(THREADS * PER_THREAD).expect("small")).collect();
    assert_eq!(seqs, expected);
    let all = read(&*log, &shared, Cursor::Oldest, ALL);
    assert_strictly_increasing(&ids_of(&all));
    assert_eq!(all.events.len(), THREADS * PER_THREAD);
}

/// Channels with the same name in different apps, and different channels of one app, have their
/// own sequences, reads, heads and compaction.
pub fn channels_and_apps_are_independent(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let one = key("app-1", "ch");
    let two = key("app-2", "ch");
    let sibling = key("app-1", "ch2");
    let prefix = key("app-1", "c"); // a prefix of the others' names
    for round in 0..3 {
        for k in [&one, &two, &sibling] {
            append_one(&*log, k, &format!("{}/{}-{round}", k.app, k.channel));
        }
    }
    append_one(&*log, &prefix, "p");
    for k in [&one, &two, &sibling] {
        let all = read(&*log, k, Cursor::Oldest, ALL);
        let expected: Vec<String> = (0..3).map(|round| format!("{}/{}-{round}", k.app, k.channel)).collect();
        assert_eq!(data_of(&all), expected);
        assert_eq!(all.head.map(EventId::seq), Some(3));
    }
    assert_eq!(read(&*log, &prefix, Cursor::Oldest, ALL).events.len(), 1);
    assert_eq!(compact(&*log, &one, keep_last(0)), 3);
    assert_eq!(read(&*log, &two, Cursor::Oldest, ALL).events.len(), 3);
    assert_eq!(read(&*log, &sibling, Cursor::Oldest, ALL).events.len(), 3);
    assert_eq!(log.head(&two).expect("head").compacted_through, None);
}

/// A channel never appended to reads empty with no head; only an `After` cursor is unrecoverable
/// (it names an event the channel never had), unless it is the zero cursor, which names "before
/// the first event". Compacting it removes nothing.
pub fn unknown_channel_reads_empty(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    append_one(&*log, &key("app", "known"), "x");
    let k = key("app", "unknown");
    let oldest = read(&*log, &k, Cursor::Oldest, ALL);
    assert_eq!(oldest, ReadOutcome { events: Vec::new(), recovered: true, head: None });
    let from_time = read(&*log, &k, Cursor::FromTime { timestamp_ms: 0 }, ALL);
    assert_eq!(from_time, ReadOutcome { events: Vec::new(), recovered: true, head: None });
    let after = read(&*log, &k, Cursor::After(EventId::new(START_MS, 1)), ALL);
    assert_eq!(after, ReadOutcome { events: Vec::new(), recovered: false, head: None });
    let before_first = read(&*log, &k, Cursor::After(EventId::new(0, 0)), ALL);
    assert_eq!(before_first, ReadOutcome { events: Vec::new(), recovered: true, head: None });
    assert_eq!(log.head(&k).expect("head"), ChannelHead::default());
    assert_eq!(compact(&*log, &k, keep_last(0)), 0);
    assert_eq!(log.channels("app").expect("channels"), vec![key("app", "known")]);
}

// ---------------------------------------------------------------------------------------------
// Reads

/// A client that has seen everything resumes with nothing to replay and nothing missed.
pub fn read_after_head_is_empty_and_recovered(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let k = key("app", "ch");
    let ids = append_n(&*log, &k, 3);
    let outcome = read(&*log, &k, Cursor::After(ids[2]), ALL);
    assert_eq!(outcome, ReadOutcome { events: Vec::new(), recovered: true, head: Some(ids[2]) });
}

/// Resuming from the middle returns exactly the later events.
pub fn read_after_middle_returns_the_rest(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let mut ids = append_n(&*log, &k, 2);
    clock.advance(7);
    ids.extend(append_n(&*log, &k, 3));
    let outcome = read(&*log, &k, Cursor::After(ids[1]), ALL);
    assert_eq!(ids_of(&outcome), ids[2..].to_vec());
    assert_eq!(data_of(&outcome), vec!["0", "1", "2"]);
    assert!(outcome.recovered);
    assert_eq!(outcome.head, Some(ids[4]));
    let outcome = read(&*log, &k, Cursor::After(ids[0]), 2);
    assert_eq!(ids_of(&outcome), ids[1..3].to_vec());
    assert!(outcome.recovered);
}

/// Name, data and sender come back exactly as appended (the sender only where there was one).
pub fn events_read_back_as_appended(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let k = key("app", "presence-room");
    let sent = vec![
        NewEvent {
            key: k.clone(),
            event: "client-typing".into(),
            data: "{\"on\":true}".into(),
            user_id: Some("42".into()),
        },
        NewEvent { key: k.clone(), event: "order.shipped".into(), data: "é \u{1F600}".into(), user_id: None },
    ];
    let ids = log.append(&sent).expect("append");
    let outcome = read(&*log, &k, Cursor::Oldest, ALL);
    let got: Vec<_> =
        outcome.events.iter().map(|e| (e.id, e.event.as_str(), e.data.as_str(), e.user_id.as_deref())).collect();
    let want: Vec<_> = sent.iter().zip(&ids).map(|(e, id)| (*id, &*e.event, &*e.data, e.user_id.as_deref())).collect();
    assert_eq!(got, want);
}

/// A cursor beyond the head (another log's id, or events lost before a crash) is unrecoverable.
pub fn read_after_future_id_is_not_recovered(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let k = key("app", "ch");
    let ids = append_n(&*log, &k, 3);
    for future in [EventId::new(START_MS, 4), EventId::new(START_MS + 60_000, 9), EventId::new(START_MS - 1, 4)] {
        let outcome = read(&*log, &k, Cursor::After(future), ALL);
        assert!(!outcome.recovered, "{future} is beyond the head");
        assert_eq!(outcome.head, Some(ids[2]));
        assert!(ids_of(&outcome).iter().all(|id| *id > future), "events returned follow the cursor");
    }
}

/// A cursor with an existing sequence number but another id (from another channel or server) is
/// unrecoverable: its sequence says nothing about this channel.
pub fn read_after_foreign_id_is_not_recovered(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let mut ids = append_n(&*log, &k, 2);
    clock.advance(100);
    ids.extend(append_n(&*log, &k, 2));
    let other = append_n(&*log, &key("app", "other"), 4);
    for foreign in [EventId::new(START_MS + 50, 2), EventId::new(START_MS - 50, 3), EventId::new(START_MS + 500, 1)] {
        let outcome = read(&*log, &k, Cursor::After(foreign), ALL);
        assert!(!outcome.recovered, "{foreign} is not this channel's");
        assert!(ids_of(&outcome).iter().all(|id| *id > foreign), "events returned follow the cursor");
    }
    // Same time and sequence as this channel's ids, but read on a channel that has other ids.
    let outcome = read(&*log, &key("app", "other"), Cursor::After(EventId::new(START_MS + 100, 3)), ALL);
    assert_eq!(other[2], EventId::new(START_MS + 100, 3), "same id shape by construction");
    assert!(outcome.recovered, "identical ids are indistinguishable, and so recovered");
}

/// An id with sequence 0 sorts before the channel's first event: everything follows it.
pub fn read_after_seq_zero_means_before_everything(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let k = key("app", "ch");
    let ids = append_n(&*log, &k, 3);
    let outcome = read(&*log, &k, Cursor::After(EventId::new(0, 0)), ALL);
    assert_eq!(ids_of(&outcome), ids);
    assert!(outcome.recovered);
    // One that sorts after the first event would skip it: not recovered.
    let outcome = read(&*log, &k, Cursor::After(EventId::new(START_MS + 1, 0)), ALL);
    assert!(!outcome.recovered);
    assert_eq!(compact(&*log, &k, keep_last(2)), 1);
    assert!(!read(&*log, &k, Cursor::After(EventId::new(0, 0)), ALL).recovered);
}

/// `Oldest` starts at the first event; `limit` caps the page (0 returns only the head).
pub fn read_oldest_honours_limit(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let k = key("app", "ch");
    let ids = append_n(&*log, &k, 5);
    let page = read(&*log, &k, Cursor::Oldest, 2);
    assert_eq!(ids_of(&page), ids[..2].to_vec());
    assert!(page.recovered);
    assert_eq!(page.head, Some(ids[4]));
    let none = read(&*log, &k, Cursor::Oldest, 0);
    assert_eq!(none, ReadOutcome { events: Vec::new(), recovered: true, head: Some(ids[4]) });
    let none = read(&*log, &k, Cursor::After(ids[1]), 0);
    assert_eq!(none, ReadOutcome { events: Vec::new(), recovered: true, head: Some(ids[4]) });
}

/// `FromTime` returns the events appended at or after the instant.
pub fn read_from_time(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let mut ids = append_n(&*log, &k, 2); // at +0
    clock.advance(10);
    ids.extend(append_n(&*log, &k, 1)); // at +10
    clock.advance(10);
    ids.extend(append_n(&*log, &k, 1)); // at +20
    let from = |offset: u64| read(&*log, &k, Cursor::FromTime { timestamp_ms: START_MS + offset }, ALL);
    assert_eq!(ids_of(&from(10)), ids[2..].to_vec());
    assert_eq!(ids_of(&from(5)), ids[2..].to_vec());
    assert_eq!(ids_of(&from(0)), ids);
    assert_eq!(ids_of(&from(20)), ids[3..].to_vec());
    let past_head = from(21);
    assert_eq!(past_head, ReadOutcome { events: Vec::new(), recovered: true, head: Some(ids[3]) });
    let all = read(&*log, &k, Cursor::FromTime { timestamp_ms: 0 }, ALL);
    assert_eq!(ids_of(&all), ids);
    assert!(all.recovered);
    assert_eq!(ids_of(&read(&*log, &k, Cursor::FromTime { timestamp_ms: START_MS }, 1)), ids[..1].to_vec());
}

/// Paging with the last id of each page as the next cursor yields every event exactly once, in
/// order, while other channels interleave.
pub fn paging_sees_every_event_once(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let noise = key("app", "noise");
    let mut appended = Vec::new();
    for i in 0..25 {
        if i % 4 == 0 {
            clock.advance(3);
        }
        let ids = log.append(&[event(&noise, "n"), event(&k, i.to_string())]).expect("append");
        appended.push(ids[1]);
    }
    let mut seen = Vec::new();
    let mut cursor = Cursor::Oldest;
    for _ in 0..10 {
        let page = read(&*log, &k, cursor, 7);
        assert!(page.recovered);
        assert!(page.events.len() <= 7);
        let Some(last) = page.events.last() else { break };
        cursor = Cursor::After(last.id);
        seen.extend(ids_of(&page));
    }
    assert_eq!(seen, appended, "no duplicate, no gap");
}

// ---------------------------------------------------------------------------------------------
// Compaction

/// `keep_last` removes all but the newest N; cursors at or after the cut recover, cursors before it
/// do not.
pub fn compact_keep_last(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let k = key("app", "ch");
    let ids = append_n(&*log, &k, 10);
    assert_eq!(compact(&*log, &k, keep_last(3)), 7);
    assert_eq!(log.head(&k).expect("head"), ChannelHead { head: Some(ids[9]), compacted_through: Some(ids[6]) });

    let oldest = read(&*log, &k, Cursor::Oldest, ALL);
    assert_eq!(ids_of(&oldest), ids[7..].to_vec());
    assert!(!oldest.recovered, "events before the first kept one are gone");
    let before_cut = read(&*log, &k, Cursor::After(ids[2]), ALL);
    assert_eq!(ids_of(&before_cut), ids[7..].to_vec());
    assert!(!before_cut.recovered);
    assert!(!read(&*log, &k, Cursor::After(ids[5]), ALL).recovered);
    let at_cut = read(&*log, &k, Cursor::After(ids[6]), ALL);
    assert_eq!(ids_of(&at_cut), ids[7..].to_vec());
    assert!(at_cut.recovered, "nothing after the last removed event is missing");
    let after_cut = read(&*log, &k, Cursor::After(ids[7]), ALL);
    assert_eq!(ids_of(&after_cut), ids[8..].to_vec());
    assert!(after_cut.recovered);
    // Foreign ids at the cut's sequence or above it are still foreign.
    assert!(!read(&*log, &k, Cursor::After(EventId::new(START_MS + 1, 7)), ALL).recovered);
    assert!(!read(&*log, &k, Cursor::After(EventId::new(START_MS + 1, 8)), ALL).recovered);

    assert_eq!(compact(&*log, &k, keep_last(3)), 0, "already compacted");
    assert_eq!(compact(&*log, &k, keep_last(100)), 0);
    assert_eq!(compact(&*log, &k, keep_last(1)), 2);
    assert_eq!(log.head(&k).expect("head").compacted_through, Some(ids[8]));
}

/// `before` removes the events below an id, whether or not the id is one of the channel's.
pub fn compact_before(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let mut ids = append_n(&*log, &k, 3);
    clock.advance(10);
    ids.extend(append_n(&*log, &k, 3));
    let rule = |before| CompactRule { before: Some(before), ..CompactRule::default() };
    assert_eq!(compact(&*log, &k, rule(ids[0])), 0);
    assert_eq!(compact(&*log, &k, rule(ids[2])), 2);
    assert_eq!(log.head(&k).expect("head").compacted_through, Some(ids[1]));
    // Between ids[2] (at +0) and ids[3] (at +10): removes ids[2] only.
    assert_eq!(compact(&*log, &k, rule(EventId::new(START_MS + 5, 0))), 1);
    assert_eq!(ids_of(&read(&*log, &k, Cursor::Oldest, ALL)), ids[3..].to_vec());
    assert!(read(&*log, &k, Cursor::After(ids[2]), ALL).recovered);
    assert!(!read(&*log, &k, Cursor::After(ids[1]), ALL).recovered);
}

/// `older_than_ms` removes events appended strictly before the instant.
pub fn compact_older_than(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let mut ids = append_n(&*log, &k, 2); // +0
    clock.advance(100);
    ids.extend(append_n(&*log, &k, 3)); // +100
    clock.advance(100);
    ids.extend(append_n(&*log, &k, 1)); // +200
    let rule = |offset: u64| CompactRule { older_than_ms: Some(START_MS + offset), ..CompactRule::default() };
    assert_eq!(compact(&*log, &k, rule(0)), 0);
    assert_eq!(compact(&*log, &k, rule(100)), 2, "events at exactly the instant stay");
    assert_eq!(compact(&*log, &k, rule(150)), 3);
    assert_eq!(ids_of(&read(&*log, &k, Cursor::Oldest, ALL)), ids[5..].to_vec());
    assert_eq!(log.head(&k).expect("head").compacted_through, Some(ids[4]));
}

/// An event goes if any rule matches it; no rule at all removes nothing.
pub fn compact_rules_combine_as_union(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let mut ids = append_n(&*log, &k, 4); // +0
    clock.advance(50);
    ids.extend(append_n(&*log, &k, 4)); // +50
    assert_eq!(compact(&*log, &k, CompactRule::default()), 0);
    assert_eq!(read(&*log, &k, Cursor::Oldest, ALL).events.len(), 8);
    assert!(read(&*log, &k, Cursor::Oldest, ALL).recovered, "an empty rule compacts nothing");
    // keep_last alone would remove 2, before alone 3, older_than alone 4: the union removes 4.
    let rule = CompactRule { keep_last: Some(6), before: Some(ids[3]), older_than_ms: Some(START_MS + 1) };
    assert_eq!(compact(&*log, &k, rule), 4);
    // Now keep_last removes the most.
    let rule = CompactRule { keep_last: Some(1), before: Some(ids[5]), older_than_ms: Some(START_MS) };
    assert_eq!(compact(&*log, &k, rule), 3);
    assert_eq!(ids_of(&read(&*log, &k, Cursor::Oldest, ALL)), ids[7..].to_vec());
}

/// Removing every event keeps the head: ids continue from it, and a client at the head has missed
/// nothing.
pub fn full_compaction_keeps_head(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let ids = append_n(&*log, &k, 5);
    assert_eq!(compact(&*log, &k, keep_last(0)), 5);
    assert_eq!(log.head(&k).expect("head"), ChannelHead { head: Some(ids[4]), compacted_through: Some(ids[4]) });
    let oldest = read(&*log, &k, Cursor::Oldest, ALL);
    assert_eq!(oldest, ReadOutcome { events: Vec::new(), recovered: false, head: Some(ids[4]) });
    let at_head = read(&*log, &k, Cursor::After(ids[4]), ALL);
    assert_eq!(at_head, ReadOutcome { events: Vec::new(), recovered: true, head: Some(ids[4]) });
    assert!(!read(&*log, &k, Cursor::After(ids[3]), ALL).recovered);
    assert_eq!(compact(&*log, &k, keep_last(0)), 0);

    clock.set(START_MS - 1000); // and the clock stepped back meanwhile
    let next = append_one(&*log, &k, "next");
    assert_eq!(next, EventId::new(START_MS, 6));
    let resumed = read(&*log, &k, Cursor::After(ids[4]), ALL);
    assert_eq!(ids_of(&resumed), vec![next]);
    assert!(resumed.recovered);
    assert_eq!(log.channels("app").expect("channels"), vec![k]);
}

/// `FromTime` is recovered only if compaction removed nothing appended at or after the instant.
pub fn from_time_after_compaction(factory: Factory<'_>) {
    let (log, clock) = open(factory);
    let k = key("app", "ch");
    let mut ids = append_n(&*log, &k, 2); // +0
    clock.advance(10);
    ids.extend(append_n(&*log, &k, 2)); // +10
    clock.advance(10);
    ids.extend(append_n(&*log, &k, 1)); // +20
    assert_eq!(compact(&*log, &k, keep_last(2)), 3); // removes through ids[2], at +10
    let from = |offset: u64| read(&*log, &k, Cursor::FromTime { timestamp_ms: START_MS + offset }, ALL);
    assert!(!from(0).recovered);
    assert!(!from(10).recovered, "ids[2] at +10 was removed");
    let after = from(11);
    assert!(after.recovered);
    assert_eq!(ids_of(&after), ids[4..].to_vec());
    assert_eq!(ids_of(&from(10)), ids[3..].to_vec());
}

// ---------------------------------------------------------------------------------------------
// Listing and stats

/// `channels` lists exactly the app's channels ever appended to, also fully compacted ones.
pub fn channels_lists_every_appended_channel_of_the_app(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    assert_eq!(log.channels("a").expect("channels"), Vec::<LogKey>::new());
    for (app, channel) in [("a", "zeta"), ("a", "alpha"), ("ab", "alpha"), ("b", "x"), ("a", "private-é")] {
        append_one(&*log, &key(app, channel), "x");
    }
    compact(&*log, &key("a", "zeta"), keep_last(0));
    log.read(&key("a", "never-written"), Cursor::Oldest, 10).expect("read");
    let mut listed = log.channels("a").expect("channels");
    listed.sort();
    assert_eq!(listed, vec![key("a", "alpha"), key("a", "private-é"), key("a", "zeta")]);
    assert_eq!(log.channels("ab").expect("channels"), vec![key("ab", "alpha")]);
    assert_eq!(log.channels("").expect("channels"), Vec::<LogKey>::new());
    assert_eq!(log.channels("c").expect("channels"), Vec::<LogKey>::new());
}

/// `stats` counts channels ever appended to and the events currently held.
pub fn stats_count_channels_and_events(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let empty = log.stats().expect("stats");
    assert_eq!((empty.channels, empty.events), (0, 0));
    append_n(&*log, &key("a", "one"), 4);
    append_n(&*log, &key("a", "two"), 3);
    append_n(&*log, &key("b", "one"), 2);
    let full = log.stats().expect("stats");
    assert_eq!((full.channels, full.events), (3, 9));
    compact(&*log, &key("a", "one"), keep_last(1));
    compact(&*log, &key("b", "one"), keep_last(0));
    let LogStats { channels, events, .. } = log.stats().expect("stats");
    assert_eq!((channels, events), (3, 4));
}

// ---------------------------------------------------------------------------------------------
// Import

/// What a backup of `key` holds: its compaction mark and every event still in the log.
fn backup_of(log: &dyn EventLog, key: &LogKey) -> (Option<EventId>, Vec<StoredEvent>) {
    let mark = log.head(key).expect("head").compacted_through;
    (mark, read(log, key, Cursor::Oldest, ALL).events)
}

fn stored(seq: u64, timestamp_ms: u64, data: &str) -> StoredEvent {
    StoredEvent {
        id: EventId::new(timestamp_ms, seq),
        event: "message".to_owned(),
        data: data.to_owned(),
        user_id: None,
    }
}

fn assert_refused(result: Result<(), StorageError>, what: &str) {
    assert!(matches!(result, Err(StorageError::ImportRefused(_))), "{what}: expected a refusal, got {result:?}");
}

/// A compacted channel exported from one log and imported into an empty one reads back the same:
/// same ids, fields, head and mark, the same `recovered` for old and current cursors; and appends
/// continue after the imported head, never reusing an id.
pub fn import_restores_a_channel_exactly(factory: Factory<'_>) {
    let (source, clock) = open(factory);
    let k = key("app", "presence-room");
    let mut events = vec![event(&k, "first")];
    events[0].user_id = Some("user-7".into());
    source.append(&events).expect("append");
    clock.advance(5);
    let ids = [vec![source.head(&k).expect("head").head.expect("a head")], append_n(&*source, &k, 4)].concat();
    compact(&*source, &k, keep_last(3));
    let (mark, held) = backup_of(&*source, &k);
    assert_eq!(mark, Some(ids[1]));

    let (target, _clock) = open(factory);
    target.import(&k, mark, &held).expect("import");
    assert_eq!(target.head(&k).expect("head"), source.head(&k).expect("head"));
    for cursor in [Cursor::Oldest, Cursor::After(ids[0]), Cursor::After(ids[1]), Cursor::After(ids[3])] {
        assert_eq!(read(&*target, &k, cursor, ALL), read(&*source, &k, cursor, ALL), "{cursor:?}");
    }
    assert_eq!(read(&*target, &k, Cursor::After(ids[3]), ALL).events[0].data, "3");
    assert_eq!(target.channels("app").expect("channels"), vec![k.clone()]);
    assert_eq!(target.stats().expect("stats").events, 3);
    let next = append_one(&*target, &k, "after the restore");
    assert_eq!(next.seq(), ids[4].seq() + 1);
    assert!(next > ids[4], "{next} is not after the imported head {}", ids[4]);
}

/// A channel whose every event was compacted away is restored from its mark alone: the head
/// survives, so new ids continue after it and an old cursor still reads as not recovered.
pub fn import_of_a_fully_compacted_channel_keeps_its_head(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let k = key("app", "ch");
    let mark = EventId::new(START_MS, 40);
    log.import(&k, Some(mark), &[]).expect("import");
    assert_eq!(log.head(&k).expect("head"), ChannelHead { head: Some(mark), compacted_through: Some(mark) });
    assert!(!read(&*log, &k, Cursor::Oldest, ALL).recovered);
    assert!(!read(&*log, &k, Cursor::After(EventId::new(START_MS, 39)), ALL).recovered);
    assert!(read(&*log, &k, Cursor::After(mark), ALL).recovered);
    assert_eq!(append_one(&*log, &k, "x").seq(), 41);
}

/// An import never leaves a gap and never reuses a sequence or an id, and a refused one writes
/// nothing, also when only a later event of the batch is wrong.
pub fn import_refuses_gaps_and_reused_ids(factory: Factory<'_>) {
    let (log, _clock) = open(factory);
    let k = key("app", "ch");
    let t = START_MS;
    assert_refused(log.import(&k, None, &[stored(2, t, "x")]), "a first event that is not sequence 1");
    assert_eq!(log.head(&k).expect("head"), ChannelHead::default(), "a refused import created the channel's head");
    log.import(&k, None, &[stored(1, t, "a"), stored(2, t, "b")]).expect("import");
    assert_refused(log.import(&k, None, &[stored(2, t + 1, "again")]), "a reused sequence");
    assert_refused(log.import(&k, None, &[stored(4, t, "x")]), "a gap after the head");
    assert_refused(log.import(&k, None, &[stored(3, t, "c"), stored(5, t, "e")]), "a gap inside the batch");
    assert_refused(log.import(&k, None, &[stored(3, t - 1, "c")]), "an id before the head's");
    assert_refused(log.import(&k, Some(EventId::new(t, 9)), &[]), "a mark on a channel that has events");
    assert_eq!(data_of(&read(&*log, &k, Cursor::Oldest, ALL)), vec!["a", "b"], "a refused import wrote something");
    let appended = append_one(&*log, &k, "c");
    assert_eq!(appended.seq(), 3);
    assert_refused(log.import(&k, None, &[stored(3, t, "c")]), "the sequence an append already took");
    let next = EventId::new(appended.timestamp_ms(), 4);
    log.import(&k, None, &[StoredEvent { id: next, ..stored(4, t, "d") }]).expect("import after an append");
    assert_eq!(data_of(&read(&*log, &k, Cursor::Oldest, ALL)), vec!["a", "b", "c", "d"]);
}

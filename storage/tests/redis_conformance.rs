//! `RedisLog` honours the `EventLog` contract, and answers as `SledLog` does, against a private
//! `redis-server`.

use std::sync::atomic::{AtomicU64, Ordering};

use reprise_storage::conformance::ManualClock;
use reprise_storage::private_redis::PrivateRedis;
use reprise_storage::{CompactRule, Cursor, EventId, EventLog, LogKey, NewEvent, RedisLog, SledLog, conformance};

#[test]
fn redis_log_conforms() {
    let redis = PrivateRedis::start().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Each log gets its own prefix: a fresh, empty log in the same Redis.
    let logs = AtomicU64::new(0);
    conformance::run_all(&|clock| -> Box<dyn EventLog> {
        let prefix = format!("conformance-{}", logs.fetch_add(1, Ordering::Relaxed));
        Box::new(RedisLog::connect(&redis.url(), &prefix, runtime.handle().clone()).unwrap().with_clock(clock))
    });
}

/// On a channel long enough that reads and compactions bisect the stream (instead of starting at
/// its ends), Redis answers exactly as sled does: for cursors of the channel's own, foreign ones
/// (another time, another sequence, middle bits set), times between and at events, and every kind
/// of compaction rule.
#[test]
fn redis_log_agrees_with_sled_on_a_long_channel() {
    let redis = PrivateRedis::start().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let clock = ManualClock::new(conformance::START_MS);
    let sled = SledLog::open_temporary().unwrap().with_clock(clock.clock());
    let redis_log =
        RedisLog::connect(&redis.url(), "agree", runtime.handle().clone()).unwrap().with_clock(clock.clock());
    let key = LogKey::new("app", "long");
    let mut ids = Vec::new();
    for round in 0..300u64 {
        // 1 to 4 events per millisecond, some milliseconds skipped.
        clock.advance(1 + round % 3);
        let batch: Vec<NewEvent> = (0..1 + round % 4)
            .map(|i| NewEvent {
                key: key.clone(),
                event: "e".into(),
                data: format!("{round}.{i}").into(),
                user_id: None,
            })
            .collect();
        let from_sled = sled.append(&batch).unwrap();
        assert_eq!(redis_log.append(&batch).unwrap(), from_sled);
        ids.extend(from_sled);
    }

    let middle_bits = |id: EventId| {
        let mut bytes = id.to_bytes();
        bytes[6] = 1;
        EventId::from_bytes(bytes)
    };
    let mut cursors = vec![Cursor::Oldest, Cursor::After(EventId::new(0, 0))];
    for id in ids.iter().step_by(41).copied() {
        let (t, seq) = (id.timestamp_ms(), id.seq());
        cursors.extend([
            Cursor::After(id),
            Cursor::After(EventId::new(t + 1, seq)),
            Cursor::After(EventId::new(t - 1, seq)),
            Cursor::After(EventId::new(t, seq + 5)),
            Cursor::After(EventId::new(t, 0)),
            Cursor::After(middle_bits(id)),
            Cursor::FromTime { timestamp_ms: t },
            Cursor::FromTime { timestamp_ms: t + 1 },
        ]);
    }
    let agree = |stage: &str| {
        assert_eq!(redis_log.head(&key).unwrap(), sled.head(&key).unwrap(), "{stage}: head");
        for (index, cursor) in cursors.iter().enumerate() {
            // Full reads of ~750 events are slow in a debug build: a sample of them.
            let limits: &[usize] = if index % 10 == 0 { &[0, 7, 100_000] } else { &[0, 7] };
            for &limit in limits {
                let expected = sled.read(&key, *cursor, limit).unwrap();
                assert_eq!(
                    redis_log.read(&key, *cursor, limit).unwrap(),
                    expected,
                    "{stage}: {cursor:?}, limit {limit}"
                );
            }
        }
    };
    agree("appended");
    let rules = [
        CompactRule { before: Some(middle_bits(ids[100])), ..CompactRule::default() },
        CompactRule { older_than_ms: Some(ids[250].timestamp_ms()), ..CompactRule::default() },
        CompactRule {
            before: Some(EventId::new(ids[300].timestamp_ms(), ids[300].seq() + 1)),
            ..CompactRule::default()
        },
        CompactRule { keep_last: Some(200), older_than_ms: Some(ids[100].timestamp_ms()), ..CompactRule::default() },
    ];
    for (n, rule) in rules.into_iter().enumerate() {
        assert_eq!(redis_log.compact(&key, rule).unwrap(), sled.compact(&key, rule).unwrap(), "rule {n}: {rule:?}");
        agree(&format!("after rule {n}"));
    }
}

//! Micro benches of the Redis event log against a private `redis-server` on loopback: appends
//! (batch of 1 and of 64: one script call each, the bus publish included) and a 1000-event read.
//! What they measure is mostly the round trip and Redis's script time; a remote Redis adds its
//! network latency to each call.
//!
//! `cargo bench -p reprise-storage --bench redis_log` (needs `redis-server` on PATH); figures in
//! docs/benchmarks.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use reprise_storage::private_redis::PrivateRedis;
use reprise_storage::{Cursor, EventLog, LogKey, NewEvent, RedisLog};

/// About the size of a Laravel broadcast payload.
const DATA: &str = r#"{"order":{"id":12345,"status":"shipped","total":"59.90"},"user":{"id":42,"name":"Ada"}}"#;

fn events(key: &LogKey, n: usize) -> Vec<NewEvent<'static>> {
    (0..n)
        .map(|_| NewEvent { key: key.clone(), event: "order.shipped".into(), data: DATA.into(), user_id: None })
        .collect()
}

fn redis_log(c: &mut Criterion) {
    let redis = PrivateRedis::start().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let log = RedisLog::connect(&redis.url(), "bench", runtime.handle().clone()).unwrap();
    let key = LogKey::new("app", "private-orders.42");

    let mut group = c.benchmark_group("redis append");
    for batch in [1usize, 64] {
        let events = events(&key, batch);
        group.throughput(Throughput::Elements(u64::try_from(batch).unwrap()));
        group.bench_function(format!("batch of {batch}"), |b| b.iter(|| log.append(black_box(&events)).unwrap()));
    }
    group.finish();

    let read_key = LogKey::new("app", "history");
    for _ in 0..(5000 / 50) {
        log.append(&events(&read_key, 50)).unwrap();
    }
    let middle = log.read(&read_key, Cursor::Oldest, 2000).unwrap().events[1999].id;
    let mut group = c.benchmark_group("redis read");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 events after a cursor", |b| {
        b.iter(|| {
            let outcome = log.read(black_box(&read_key), Cursor::After(middle), 1000).unwrap();
            assert_eq!(outcome.events.len(), 1000);
            outcome
        })
    });
    group.finish();
}

criterion_group!(benches, redis_log);
criterion_main!(benches);

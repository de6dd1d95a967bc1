//! Micro benches of the sled event log: appends (batch of 1 and of 64, without and with the
//! fsync a `durability = "sync"` commit adds) and a 1000-event range read (a full replay).
//!
//! `cargo bench -p reprise-storage --bench log`; figures in docs/benchmarks.md.

use std::hint::black_box;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use reprise_storage::{Cursor, EventLog, LogKey, NewEvent, SledLog};

/// About the size of a Laravel broadcast payload.
const DATA: &str = r#"{"order":{"id":12345,"status":"shipped","total":"59.90"},"user":{"id":42,"name":"Ada"}}"#;

fn events(key: &LogKey, n: usize) -> Vec<NewEvent<'static>> {
    (0..n)
        .map(|_| NewEvent { key: key.clone(), event: "order.shipped".into(), data: DATA.into(), user_id: None })
        .collect()
}

fn append(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = SledLog::open(dir.path()).unwrap();
    let key = LogKey::new("app", "private-orders.42");
    let mut group = c.benchmark_group("sled append");
    for batch in [1usize, 64] {
        let events = events(&key, batch);
        group.throughput(Throughput::Elements(u64::try_from(batch).unwrap()));
        group.bench_function(format!("batch of {batch}"), |b| b.iter(|| log.append(black_box(&events)).unwrap()));
    }
    group.finish();
    // Write out what the benches appended before the next group measures fsyncs: sled's own
    // background flusher would otherwise compete with them for the disk.
    log.flush().unwrap();
}

/// What a sync-durability commit costs: the append plus one fsync, on a fresh log.
fn append_flush(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = SledLog::open(dir.path()).unwrap();
    let key = LogKey::new("app", "private-orders.42");
    let mut group = c.benchmark_group("sled append + flush");
    // An fsync takes hundreds of microseconds and varies: flat sampling keeps the run short.
    group.sample_size(20).sampling_mode(SamplingMode::Flat);
    for batch in [1usize, 64] {
        let events = events(&key, batch);
        group.throughput(Throughput::Elements(u64::try_from(batch).unwrap()));
        group.bench_function(format!("batch of {batch}"), |b| {
            b.iter(|| {
                log.append(black_box(&events)).unwrap();
                log.flush().unwrap();
            })
        });
    }
    group.finish();
}

fn range_read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = SledLog::open(dir.path()).unwrap();
    let key = LogKey::new("app", "private-orders.42");
    for _ in 0..(5000 / 50) {
        log.append(&events(&key, 50)).unwrap();
    }
    // Another channel interleaved, so the read has to seek past foreign keys' neighbours.
    log.append(&events(&LogKey::new("app", "other"), 100)).unwrap();
    let middle = log.read(&key, Cursor::Oldest, 2000).unwrap().events[1999].id;
    let mut group = c.benchmark_group("sled read");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 events after a cursor", |b| {
        b.iter(|| {
            let outcome = log.read(black_box(&key), Cursor::After(middle), 1000).unwrap();
            assert_eq!(outcome.events.len(), 1000);
            outcome
        })
    });
    group.finish();
}

criterion_group!(benches, append, append_flush, range_read);
criterion_main!(benches);

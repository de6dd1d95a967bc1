//! Micro benches of the wire contract's per-message work: encoding an event frame (once per
//! publish, shared by every subscriber), verifying a signed REST call (once per publish) and
//! verifying a private-channel subscription's auth (once per subscribe).
//!
//! `cargo bench --bench micro`; figures in docs/benchmarks.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use reprise_api::signature::{self, SignedRequest, SigningKey};
use reprise_api::{EventId, frames};

const KEY: &str = "278d425bdf160c739803";
const SECRET: &str = "7ad3773142a6692b25b8";

/// A typical Laravel broadcast payload: a JSON object sent as a string (so its quotes are escaped
/// again in the frame), about 100 bytes.
const DATA: &str = r#"{"order":{"id":12345,"status":"shipped","total":"59.90"},"user":{"id":42,"name":"Ada"}}"#;

fn frame_encode(c: &mut Criterion) {
    let id = EventId::new(1_764_000_000_000, 123_456);
    let mut group = c.benchmark_group("frames");
    group.throughput(Throughput::Elements(1));
    group.bench_function("event_frame with id (100 B JSON data)", |b| {
        b.iter(|| {
            frames::event_frame(
                black_box("order.shipped"),
                black_box("private-orders.42"),
                black_box(DATA),
                Some(id),
                None,
            )
        })
    });
    group.bench_function("event_frame without id (100 B JSON data)", |b| {
        b.iter(|| {
            frames::event_frame(black_box("order.shipped"), black_box("private-orders.42"), black_box(DATA), None, None)
        })
    });
    group.finish();
}

fn rest_verify(c: &mut Criterion) {
    let path = "/apps/1/events";
    let body = format!(
        r#"{{"name":"order.shipped","channel":"private-orders.42","data":{}}}"#,
        serde_json::to_string(DATA).unwrap()
    );
    let now = 1_764_000_000;
    let query = signature::sign_request(KEY, SECRET, "POST", path, &[], body.as_bytes(), now);
    // The query's values are all unreserved characters, so the decoded params are the raw pairs.
    let params: Vec<(String, String)> = query
        .split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let request = SignedRequest { method: "POST", path, params: &params, body: body.as_bytes() };
    // As the server does: the app's secret prepared once.
    let secret = SigningKey::new(SECRET);
    assert_eq!(request.verify(KEY, &secret, now), Ok(()));
    c.bench_function("signature/SignedRequest::verify (trigger, ~150 B body)", |b| {
        b.iter(|| black_box(&request).verify(black_box(KEY), black_box(&secret), now))
    });
}

fn socket_auth_verify(c: &mut Criterion) {
    let socket_id = "123456789.987654321";
    let secret = SigningKey::new(SECRET);
    let auth = signature::socket_auth(KEY, SECRET, socket_id, "private-orders.42", None);
    assert!(signature::verify_socket_auth(KEY, &secret, socket_id, "private-orders.42", None, &auth));
    c.bench_function("signature/verify_socket_auth (private)", |b| {
        b.iter(|| {
            signature::verify_socket_auth(
                KEY,
                &secret,
                black_box(socket_id),
                black_box("private-orders.42"),
                None,
                black_box(&auth),
            )
        })
    });
    let member = r#"{"user_id":"42","user_info":{"name":"Ada"}}"#;
    let auth = signature::socket_auth(KEY, SECRET, socket_id, "presence-room.1", Some(member));
    c.bench_function("signature/verify_socket_auth (presence)", |b| {
        b.iter(|| {
            signature::verify_socket_auth(
                KEY,
                &secret,
                black_box(socket_id),
                black_box("presence-room.1"),
                Some(member),
                black_box(&auth),
            )
        })
    });
}

criterion_group!(benches, frame_encode, rest_verify, socket_auth_verify);
criterion_main!(benches);

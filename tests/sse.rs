//! Event streams over raw HTTP (`GET /app/{key}/stream`): logged events as Server-Sent Events,
//! resumed exactly by `Last-Event-ID` or `since` (one channel and several), gap-free under random
//! disconnects while a publisher streams, `reprise:not_recovered` when the log lost the gap,
//! grants for private channels, cache channels, heartbeats past the request-head timeout, slow
//! readers cut off, and shutdown.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reprise_api::EventId;
use reprise_api::sse::{cursor, grant};
use serde_json::{Value, json};
use support::sse::{SseClient, SseEvent};
use support::{APP_KEY, APP_SECRET, Rng, TestServer, event_id, unix_now};

fn stream_path(channels: &[&str], extra: &str) -> String {
    let query: Vec<String> = channels.iter().map(|c| format!("channel={c}")).collect();
    format!("/app/{APP_KEY}/stream?{}{extra}", query.join("&"))
}

async fn open(server: &TestServer, channels: &[&str], headers: &[(&str, &str)]) -> SseClient {
    let client = SseClient::connect(server.addr, &stream_path(channels, ""), headers).await;
    assert_eq!(client.status, 200, "stream refused: {:?}", client.headers);
    client
}

/// Asserts `event` is the logged event `id` on `channel`: its SSE name, and its data is the
/// Pusher frame with the channel, the ULID and the data.
fn assert_event(event: &SseEvent, channel: &str, name: &str, data: &str, id: &str) {
    assert_eq!(event.event, name, "{event:?}");
    assert!(event.has_id, "a logged event carries the cursor as its id: {event:?}");
    let frame = event.json();
    assert_eq!(frame, json!({"event": name, "channel": channel, "data": data, "id": id}), "{event:?}");
}

/// The stream answers `text/event-stream` with the headers proxies need, advises `retry`, and
/// sends each logged event with its name, its Pusher frame (channel and ULID) and a cursor id;
/// a reconnect with `Last-Event-ID` gets exactly the events it missed, then live ones.
#[tokio::test]
async fn last_event_id_resumes_a_channel_exactly() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut client = open(&server, &["orders.1"], &[]).await;
    assert_eq!(client.header("content-type"), Some("text/event-stream; charset=utf-8"));
    assert_eq!(client.header("cache-control"), Some("no-cache"));
    assert_eq!(client.header("x-accel-buffering"), Some("no"));
    let mut ids = Vec::new();
    for i in 0..2 {
        ids.push(rest.trigger_id("orders.1", "status", &format!("s{i}")).await);
        let event = client.next_app_event().await;
        assert_event(&event, "orders.1", "status", &format!("s{i}"), &ids[i]);
    }
    let retry = client.retry_ms.expect("retry advised");
    assert!((1000..3000).contains(&retry), "{retry}");
    let last_id = client.last_event_id.clone();
    assert!(last_id.starts_with('A'), "a cursor, not a ULID: {last_id}");
    drop(client);

    for i in 2..5 {
        ids.push(rest.trigger_id("orders.1", "status", &format!("s{i}")).await);
    }
    let mut resumed = open(&server, &["orders.1"], &[("Last-Event-ID", &last_id)]).await;
    for (i, id) in ids.iter().enumerate().skip(2) {
        assert_event(&resumed.next_app_event().await, "orders.1", "status", &format!("s{i}"), id);
    }
    let live = rest.trigger_id("orders.1", "status", "live").await;
    assert_event(&resumed.next_app_event().await, "orders.1", "status", "live", &live);
}

/// `since` resumes a first connection: a ULID on a one-channel stream, a cursor on a stream of
/// several; `Last-Event-ID` wins over a `since` still in the URL.
#[tokio::test]
async fn since_resumes_one_channel_and_several() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("a", "e", "a", 4).await;
    let path = format!("/app/{APP_KEY}/stream?channel=a&since={}", ids[1]);
    let mut one = SseClient::connect(server.addr, &path, &[]).await;
    assert_event(&one.next_app_event().await, "a", "e", "a-2", &ids[2]);
    assert_event(&one.next_app_event().await, "a", "e", "a-3", &ids[3]);

    // Several channels: the cursor of a stream of a and b, at a's second event and before b's first.
    let b_ids = rest.publish_n("b", "e", "b", 2).await;
    let channels: Vec<_> = ["a", "b"].iter().map(|n| reprise_api::ChannelName::parse(n).unwrap()).collect();
    let since = cursor::encode(&channels, &[ids[1].parse().unwrap(), EventId::new(0, 0)]);
    let mut several = SseClient::connect(server.addr, &stream_path(&["b", "a"], &format!("&since={since}")), &[]).await;
    let mut got: Vec<(String, String)> = Vec::new();
    for _ in 0..4 {
        let frame = several.next_app_event().await.json();
        got.push((frame["channel"].as_str().unwrap().into(), frame["id"].as_str().unwrap().into()));
    }
    got.sort();
    let mut expected: Vec<(String, String)> = vec![
        ("a".into(), ids[2].clone()),
        ("a".into(), ids[3].clone()),
        ("b".into(), b_ids[0].clone()),
        ("b".into(), b_ids[1].clone()),
    ];
    expected.sort();
    assert_eq!(got, expected);

    // The browser reconnects to the same URL (with its since) and sends Last-Event-ID.
    let last = several.last_event_id.clone();
    drop(several);
    let live = rest.trigger_id("a", "e", "after").await;
    let mut again = SseClient::connect(
        server.addr,
        &stream_path(&["a", "b"], &format!("&since={since}")),
        &[("Last-Event-ID", &last)],
    )
    .await;
    assert_event(&again.next_app_event().await, "a", "e", "after", &live);
}

/// A `since` that cannot be read is refused with 400, naming `since`; a `Last-Event-ID` that
/// cannot be read (another server version's cursor) starts every channel with
/// `reprise:not_recovered` rather than failing, since a browser would give up on an error.
#[tokio::test]
async fn unreadable_cursors() {
    let server = TestServer::start().await;
    let rest = server.rest();
    rest.publish_n("a", "e", "a", 2).await;
    let b_only = cursor::encode(&[reprise_api::ChannelName::parse("b").unwrap()], &[EventId::new(0, 0)]);
    for since in ["nope", "AAAA", b_only.as_str()] {
        let mut refused = SseClient::connect(server.addr, &stream_path(&["a"], &format!("&since={since}")), &[]).await;
        assert_eq!(refused.status, 400, "since {since:?}");
        assert!(refused.body().await.contains("since"), "the error names since");
    }
    let mut client = open(&server, &["a", "cache-c"], &[("Last-Event-ID", "garbage")]).await;
    let mut notices = Vec::new();
    for _ in 0..2 {
        let event = client.next_event().await.unwrap();
        assert_eq!(event.event, "reprise:not_recovered", "{event:?}");
        notices.push(event.json()["channel"].as_str().unwrap().to_owned());
    }
    notices.sort();
    assert_eq!(notices, ["a", "cache-c"]);
}

/// When compaction removed part of the gap, the stream says so with `reprise:not_recovered`
/// (channel and head) before any live event, and goes on from the head.
#[tokio::test]
async fn a_compacted_gap_is_not_recovered() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("orders", "e", "d", 6).await;
    let (status, body) = rest.compact(json!({"channel": "orders", "keep_last": 2})).await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/app/{APP_KEY}/stream?channel=orders&since={}", ids[0]);
    let mut client = SseClient::connect(server.addr, &path, &[]).await;
    let notice = client.next_event().await.unwrap();
    assert_eq!(notice.event, "reprise:not_recovered");
    assert_eq!(notice.json(), json!({"channel": "orders", "head": ids[5]}));
    let live = rest.trigger_id("orders", "e", "live").await;
    let event = client.next_event().await.unwrap();
    assert_event(&event, "orders", "e", "live", &live);
    assert_eq!(event_id(&json!(live)).seq(), 7);
}

/// A cache channel's stream starts with its last event (a fresh stream), or says
/// `reprise:cache_miss` when it has none.
#[tokio::test]
async fn a_cache_channel_starts_with_its_last_event() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("cache-price", "tick", "p", 3).await;
    let mut client = open(&server, &["cache-price", "cache-empty"], &[]).await;
    let mut first = HashMap::new();
    for _ in 0..2 {
        let event = client.next_event().await.unwrap();
        first.insert(event.event.clone(), event);
    }
    assert_event(&first["tick"], "cache-price", "tick", "p-2", &ids[2]);
    assert_eq!(first["reprise:cache_miss"].json(), json!({"channel": "cache-empty"}));
}

fn grant_for(channels: &[&str], expires: u64, user_id: Option<&str>, secret: &str) -> String {
    grant::sign(APP_KEY, secret, expires, channels, user_id)
}

/// Private channels: refused (401) without a grant or with an expired or forged one, and nothing
/// is streamed; served with a valid grant in the query or the Authorization header. A user's
/// own channel needs a grant naming that user (403 otherwise).
#[tokio::test]
async fn private_channels_need_a_valid_grant() {
    let server = TestServer::start().await;
    let rest = server.rest();
    rest.publish_n("private-orders.1", "e", "secret", 2).await;
    let channels = ["private-orders.1"];
    let later = unix_now() + 600;
    let refusals = [
        ("no grant", String::new(), 401),
        ("expired", format!("&grant={}", grant_for(&channels, unix_now() - 10, None, APP_SECRET)), 401),
        ("forged", format!("&grant={}", grant_for(&channels, later, None, "not-the-secret")), 401),
        ("for other channels", format!("&grant={}", grant_for(&["private-orders.2"], later, None, APP_SECRET)), 401),
        ("malformed", "&grant=xyz".to_owned(), 401),
    ];
    for (case, query, status) in refusals {
        let since = format!("&since={}", EventId::new(0, 0));
        let mut client =
            SseClient::connect(server.addr, &stream_path(&channels, &format!("{query}{since}")), &[]).await;
        assert_eq!(client.status, status, "{case}");
        let body = client.body().await;
        assert!(!body.contains("secret-"), "{case}: nothing of the channel is streamed: {body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string(), "{case}: {body}");
    }

    let valid = grant_for(&channels, later, None, APP_SECRET);
    let since = EventId::new(0, 0).to_string();
    let mut in_query =
        SseClient::connect(server.addr, &stream_path(&channels, &format!("&grant={valid}&since={since}")), &[]).await;
    assert_eq!(in_query.status, 200);
    assert_eq!(in_query.next_app_event().await.json()["data"], "secret-0");
    let bearer = format!("Bearer {valid}");
    let mut in_header = SseClient::connect(
        server.addr,
        &stream_path(&channels, &format!("&since={since}")),
        &[("Authorization", bearer.as_str())],
    )
    .await;
    assert_eq!(in_header.status, 200);
    assert_eq!(in_header.next_app_event().await.json()["data"], "secret-0");

    // A user's channel: the grant must name that user.
    let user_channel = ["#server-to-user-42"];
    let path = |user: Option<&str>| {
        let grant = grant_for(&user_channel, later, user, APP_SECRET);
        format!("/app/{APP_KEY}/stream?channel=%23server-to-user-42&grant={grant}")
    };
    assert_eq!(SseClient::connect(server.addr, &path(Some("7")), &[]).await.status, 403);
    assert_eq!(SseClient::connect(server.addr, &path(None), &[]).await.status, 403);
    assert_eq!(SseClient::connect(server.addr, &path(Some("42")), &[]).await.status, 200);
}

/// While a publisher streams to two channels, a client that drops its stream at random points
/// and reconnects with `Last-Event-ID` ends up with every event of both channels exactly once, in
/// order: no gap and no duplicate at any seam of the composite cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_under_load_is_gap_free_on_every_channel() {
    const EVENTS: usize = 300;
    const LEAD: usize = 40;
    const SEED: u64 = 0x55E_2026_0014;
    let server = TestServer::start().await;
    let channels = ["orders.1", "orders.2"];
    let mut client = open(&server, &channels, &[]).await;
    let progress = Arc::new(AtomicUsize::new(0));
    let rest = server.rest();
    let publisher_progress = Arc::clone(&progress);
    let publisher = tokio::spawn(async move {
        let mut published: Vec<(String, String)> = Vec::with_capacity(EVENTS);
        for i in 0..EVENTS {
            while i > publisher_progress.load(Ordering::Acquire) + LEAD {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let channel = channels[i % 2];
            published.push((channel.to_owned(), rest.trigger_id(channel, "tick", &i.to_string()).await));
        }
        published
    });

    let mut rng = Rng(SEED);
    let mut seen: Vec<(String, String)> = Vec::with_capacity(EVENTS);
    let mut next_seq: HashMap<String, u64> = HashMap::new();
    let (mut resumes, mut resumes_while_publishing) = (0, 0);
    while seen.len() < EVENTS {
        for _ in 0..rng.between(1, 40) {
            if seen.len() == EVENTS {
                break;
            }
            let frame = client.next_app_event().await.json();
            let channel = frame["channel"].as_str().unwrap().to_owned();
            let seq = event_id(&frame["id"]).seq();
            let expected = next_seq.entry(channel.clone()).or_insert(1);
            assert_eq!(seq, *expected, "after {resumes} resumes (seed {SEED:#x}): {frame} (gap or duplicate)");
            *expected += 1;
            seen.push((channel, frame["id"].as_str().unwrap().to_owned()));
            progress.store(seen.len(), Ordering::Release);
        }
        if seen.len() == EVENTS {
            break;
        }
        let last = client.last_event_id.clone();
        drop(client);
        let away_ms = rng.between(0, 15);
        if away_ms > 0 {
            tokio::time::sleep(Duration::from_millis(away_ms)).await;
        }
        client = open(&server, &channels, &[("Last-Event-ID", &last)]).await;
        resumes += 1;
        if !publisher.is_finished() {
            resumes_while_publishing += 1;
        }
    }
    let published = tokio::time::timeout(Duration::from_secs(60), publisher).await.expect("publisher done").unwrap();
    for channel in channels {
        let mine = |list: &[(String, String)]| -> Vec<String> {
            list.iter().filter(|(c, _)| c == channel).map(|(_, id)| id.clone()).collect()
        };
        assert_eq!(mine(&seen), mine(&published), "{channel}: every id, in order, once");
    }
    eprintln!("{resumes} resumes ({resumes_while_publishing} while publishing)");
    assert!(resumes >= 5, "only {resumes} resumes: the test did not exercise the seam");
    assert!(resumes_while_publishing >= 3, "only {resumes_while_publishing} resumes raced the publisher");
}

/// A stream that is quiet for longer than the request-head timeout is not cut (the timeout is
/// for reading request heads, not for responses), and heartbeats keep it busy meanwhile.
#[tokio::test]
async fn a_quiet_stream_outlives_the_header_timeout_with_heartbeats() {
    let server = TestServer::start_with(|config| {
        config.server.http_header_timeout_secs = 1;
        config.server.sse_heartbeat_secs = 1;
    })
    .await;
    let mut client = open(&server, &["quiet"], &[]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let id = server.rest().trigger_id("quiet", "e", "late").await;
    assert_event(&client.next_app_event().await, "quiet", "e", "late", &id);
    assert!(client.comments >= 2, "heartbeats while quiet: {}", client.comments);
}

/// A reader that stops reading is cut off (its connection dropped) once its outbox overflows,
/// without holding up the publisher, and resumes with `Last-Event-ID` without loss.
#[tokio::test]
async fn a_slow_reader_is_cut_off_and_resumes_without_loss() {
    const EVENTS: usize = 300;
    let server = TestServer::start_with(|config| {
        config.server.outbox_frames = 16;
        config.server.replay_cap_events = EVENTS;
        config.apps[0].max_message_size_bytes = 100_000;
        config.apps[0].max_request_size_bytes = 1_000_000;
    })
    .await;
    let rest = server.rest();
    let mut stalled = open(&server, &["firehose"], &[]).await;
    let payload = "x".repeat(50_000);
    let mut published = Vec::new();
    for _ in 0..EVENTS / 3 {
        let batch: Vec<Value> = (0..3).map(|_| json!({"name":"big","channel":"firehose","data": payload})).collect();
        let (status, response) =
            rest.call("POST", &rest.path("/batch_events"), &[], Some(&json!({"batch": batch}))).await;
        assert_eq!(status, 200, "{response}");
        for item in response["batch"].as_array().unwrap() {
            published.push(item["ids"]["firehose"].as_str().unwrap().to_owned());
        }
    }
    let seen: Vec<SseEvent> = stalled.read_to_end(Duration::from_secs(30)).await;
    let seen: Vec<String> =
        seen.iter().filter(|e| e.event == "big").map(|e| e.json()["id"].as_str().unwrap().to_owned()).collect();
    assert!(
        !stalled.ended_cleanly,
        "the connection was dropped, not the stream ended: a reader that never reads again would keep it"
    );
    assert!(seen.len() < EVENTS, "cut off before the end ({} events)", seen.len());
    assert!(!seen.is_empty(), "the kernel's buffers alone hold some events");
    assert_eq!(seen[..], published[..seen.len()], "a gap-free prefix");
    let mut resumed = open(&server, &["firehose"], &[("Last-Event-ID", &stalled.last_event_id)]).await;
    let mut rest_of_it = Vec::new();
    while rest_of_it.len() < EVENTS - seen.len() {
        rest_of_it.push(resumed.next_app_event().await.json()["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(rest_of_it, published[seen.len()..], "the resume sends exactly what it missed");
}

/// Shutdown ends every stream (so `EventSource` reconnects after `retry`), and the server stops
/// cleanly without waiting out its grace period.
#[tokio::test]
async fn shutdown_ends_streams() {
    let mut server = TestServer::start().await;
    let mut client = open(&server, &["s"], &[]).await;
    let id = server.rest().trigger_id("s", "e", "before").await;
    assert_event(&client.next_app_event().await, "s", "e", "before", &id);
    let started = std::time::Instant::now();
    server.stop().await.expect("clean shutdown");
    assert!(client.read_to_end(Duration::from_secs(5)).await.is_empty());
    assert!(client.ended_cleanly, "the stream ends with its last chunk, so the client reconnects");
    assert!(started.elapsed() < Duration::from_millis(1500), "shutdown waited {:?}", started.elapsed());
}

/// Unlogged client events (whispers) have no id, so streams do not carry them; the app's
/// connection quota counts streams (503 past it); an unknown key is 404.
#[tokio::test]
async fn quota_unknown_apps_and_whispers() {
    let server = TestServer::start_with(|config| config.apps[0].max_connections = Some(2)).await;
    let grant = grant_for(&["private-chat"], unix_now() + 600, None, APP_SECRET);
    let mut stream = open_with(&server, &stream_path(&["private-chat"], &format!("&grant={grant}"))).await;
    let mut ws = server.client().await;
    ws.subscribe_private("private-chat").await;
    let over = SseClient::connect(server.addr, &stream_path(&["public"], ""), &[]).await;
    assert_eq!(over.status, 503, "a third connection is over the app's quota of 2");
    ws.send_json(json!({"event": "client-typing", "channel": "private-chat", "data": {}})).await;
    let id = server.rest().trigger_id("private-chat", "e", "logged").await;
    assert_event(&stream.next_app_event().await, "private-chat", "e", "logged", &id);
    let unknown = SseClient::connect(server.addr, "/app/nope/stream?channel=a", &[]).await;
    assert_eq!(unknown.status, 404);
}

async fn open_with(server: &TestServer, path: &str) -> SseClient {
    let client = SseClient::connect(server.addr, path, &[]).await;
    assert_eq!(client.status, 200, "stream refused: {path}");
    client
}

/// Past `max_open_connections` a stream is not refused with an error status (`EventSource` would
/// give up for good) but told `reprise:error` 4100 with a long `retry`, and ended, so it backs off
/// and comes back.
#[tokio::test]
async fn over_capacity_streams_are_told_to_back_off() {
    let server = TestServer::start_with(|config| config.server.max_open_connections = Some(2)).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        // A cache channel with no last event: an admitted stream says `reprise:cache_miss` first.
        let mut client = SseClient::connect(server.addr, &stream_path(&["cache-busy"], ""), &[]).await;
        assert_eq!(client.status, 200);
        let first = client.next_event().await.expect("a first event");
        if first.event != "reprise:cache_miss" {
            let event = first;
            assert_eq!(event.event, "reprise:error", "{event:?}");
            assert_eq!(event.json()["code"], 4100, "{event:?}");
            let retry = client.retry_ms.expect("retry advised");
            assert!((5000..15000).contains(&retry), "{retry}");
            assert!(client.next_event().await.is_none(), "the answer ends");
            assert!(client.ended_cleanly);
            return;
        }
        held.push(client);
    }
    panic!("no stream was over capacity with {} open", held.len());
}

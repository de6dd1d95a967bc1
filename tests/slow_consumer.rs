//! A client that stops reading is disconnected without slowing anyone else down, and loses
//! nothing: it resumes from the log.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::metrics::{free_port, scrape};
use support::{APP_ID, RestClient, TestServer, WsClient};

/// Big events fill the kernel's socket buffers quickly, so the outbox overflows.
const EVENT_BYTES: usize = 50_000;
const EVENTS: usize = 600;
const PER_BATCH: usize = 3;

/// A stalled subscriber is cut off (4100, or dropped if it cannot even take the close frame),
/// a subscriber that reads gets every event in order meanwhile, and the stalled one, resuming
/// from the last id it saw, recovers exactly the rest.
#[tokio::test]
async fn a_stalled_subscriber_is_cut_off_and_resumes_without_loss() {
    let server = TestServer::start_with(|config| {
        config.server.outbox_frames = 16;
        config.server.replay_cap_events = EVENTS;
        config.apps[0].max_message_size_bytes = 100_000;
        config.apps[0].max_request_size_bytes = 1_000_000;
    })
    .await;
    let rest = server.rest();
    let mut stalled = server.client().await;
    stalled.subscribe("firehose").await;
    let mut reader = server.client().await;
    reader.subscribe("firehose").await;

    let reading = tokio::spawn(async move {
        let mut ids = Vec::new();
        while ids.len() < EVENTS {
            let frame = reader.expect_event("big").await;
            ids.push(frame["id"].as_str().expect("id").to_owned());
        }
        ids
    });
    let payload = "x".repeat(EVENT_BYTES);
    let mut published = Vec::new();
    for _ in 0..EVENTS / PER_BATCH {
        published.extend(publish_big_events(&rest, &payload).await);
    }
    let received = tokio::time::timeout(Duration::from_secs(60), reading).await.expect("reader finished").unwrap();
    assert_eq!(received, published, "the reading subscriber got every event, in order");

    // Now drain the stalled client: it got a prefix of the events, then the connection ended.
    let mut seen = Vec::new();
    let ended_with = loop {
        match stalled.next().await {
            Ok(frame) if frame["event"] == "big" => seen.push(frame["id"].as_str().expect("id").to_owned()),
            Ok(_) => {}
            Err(close) => break close.map(|frame| u16::from(frame.code)),
        }
    };
    assert!(seen.len() < EVENTS, "the stalled client was cut off before the end ({} events)", seen.len());
    // The kernel's socket buffers alone hold several events, so it saw some: the resume below
    // starts from a real cursor.
    assert!(!seen.is_empty(), "the stalled client received nothing at all");
    assert!(matches!(ended_with, None | Some(4100)), "closed with {ended_with:?}");
    assert_eq!(seen[..], published[..seen.len()], "what it got is a gap-free prefix");

    // It resumes from the last id it saw and recovers exactly the rest.
    let mut resumed = server.client().await;
    let last = seen.last().expect("seen is not empty");
    resumed.send_subscribe(json!({"channel": "firehose", "since": last})).await;
    let data = resumed.expect_subscribed("firehose").await;
    let missing = &published[seen.len()..];
    assert_eq!(data["replay"]["recovered"], true, "{data}");
    assert_eq!(data["replay"]["count"], missing.len(), "{data}");
    let mut replayed = Vec::new();
    while replayed.len() < missing.len() {
        replayed.push(resumed.expect_event("big").await["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(replayed, missing, "the resume replays exactly what it missed");
    assert_alive(&mut resumed).await;
}

/// Publishes `PER_BATCH` events carrying `payload` to `firehose` in one call; returns their ids.
async fn publish_big_events(rest: &RestClient, payload: &str) -> Vec<String> {
    let batch: Vec<Value> =
        (0..PER_BATCH).map(|_| json!({"name":"big","channel":"firehose","data": payload})).collect();
    let (status, response) = rest.call("POST", &rest.path("/batch_events"), &[], Some(&json!({"batch": batch}))).await;
    assert_eq!(status, 200, "{response}");
    response["batch"]
        .as_array()
        .expect("batch")
        .iter()
        .map(|item| item["ids"]["firehose"].as_str().expect("id").to_owned())
        .collect()
}

async fn assert_alive(client: &mut WsClient) {
    client.send_json(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(client.expect_event("pusher:pong").await["event"], "pusher:pong");
}

/// A client cut off while a frame was half written, which then reads again within a second,
/// gets the rest of that frame and then the 4100 close: the close frame follows whole frames.
/// (Frames go to the socket without tungstenite since `connection::wire`; a close written right
/// after the part the kernel took would land inside a frame, and the client would read garbage.)
#[tokio::test]
async fn a_client_cut_off_mid_frame_reads_whole_frames_then_4100() {
    let metrics_port = free_port().await;
    let server = TestServer::start_with(|config| {
        config.server.outbox_frames = 16;
        config.server.metrics_port = Some(metrics_port);
        config.apps[0].max_message_size_bytes = 100_000;
        config.apps[0].max_request_size_bytes = 1_000_000;
    })
    .await;
    let rest = server.rest();
    let mut stalled = server.client().await;
    stalled.subscribe("firehose").await;
    // Big events until the outbox overflows, which happens while a write is stuck part-way
    // through a frame (the kernel's buffers are full); then the client reads again at once,
    // well within the second the server gives the close frame.
    let payload = "x".repeat(EVENT_BYTES);
    let slow_consumers = format!("reprise_slow_consumers_total{{app=\"{APP_ID}\"}}");
    let mut published = 0;
    while scrape(metrics_port).await.0.get(&slow_consumers).copied().unwrap_or_default() < 1.0 {
        assert!(published < EVENTS * 10, "the outbox never overflowed");
        published += publish_big_events(&rest, &payload).await.len();
    }
    let mut seen = 0;
    let ended_with = loop {
        match stalled.next().await {
            Ok(frame) if frame["event"] == "big" => {
                assert_eq!(frame["data"].as_str().map(str::len), Some(EVENT_BYTES), "a whole event");
                seen += 1;
            }
            Ok(_) => {}
            Err(close) => break close.map(|frame| u16::from(frame.code)),
        }
    };
    assert!(seen < published, "the client was cut off ({seen} of {published} events)");
    assert_eq!(ended_with, Some(4100), "after {seen} whole events");
}

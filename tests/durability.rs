//! What the log keeps across a restart on the same data directory: events, heads, compaction
//! watermarks, and ever-increasing ids; and that buffered durability still publishes, replays
//! and keeps what a clean shutdown flushed.

mod support;

use std::time::Duration;

use reprise::config::Durability;
use serde_json::json;
use support::{TestServer, event_id};

const SILENCE: Duration = Duration::from_millis(200);

fn ids_of(events: &[serde_json::Value]) -> Vec<String> {
    events.iter().map(|e| e["id"].as_str().expect("id").to_owned()).collect()
}

/// After a restart every event is still there (same ids, names and data), `replay.head` equals
/// the last id from before, a resume replays across the restart, and new ids keep increasing
/// with the next sequence number.
#[tokio::test]
async fn restart_keeps_events_heads_and_id_order() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let a = rest.publish_n("kept-a", "e", "a", 5).await;
    let b = rest.publish_n("kept-b", "e", "b", 3).await;
    let (before_a, _) = rest.history_all("kept-a").await;

    let server = server.restart().await;
    let rest = server.rest();
    let (after_a, recovered) = rest.history_all("kept-a").await;
    assert_eq!(after_a, before_a, "history must survive a restart unchanged");
    assert!(recovered);
    assert_eq!(ids_of(&rest.history_all("kept-b").await.0), b);

    let mut fresh = server.client().await;
    let data = fresh.subscribe("kept-a").await;
    assert_eq!(data["replay"]["head"], a[4].as_str(), "head after restart: {data}");

    let mut resumed = server.client().await;
    let replay = resumed.subscribe_since("kept-a", &a[1]).await;
    assert_eq!(replay, json!({"head": a[4], "recovered": true, "count": 3}));
    for id in &a[2..] {
        assert_eq!(resumed.next_app_event().await["id"], id.as_str());
    }
    resumed.expect_silence(SILENCE).await;

    let next = rest.trigger_id("kept-a", "e", "after-restart").await;
    let (last, next_id) = (event_id(&json!(a[4])), event_id(&json!(next)));
    assert!(next_id > last, "ids must keep increasing across a restart: {last} then {next_id}");
    assert_eq!(next_id.seq(), last.seq() + 1, "the sequence continues: {last} then {next_id}");
    assert_eq!(fresh.next_app_event().await["id"], next.as_str());
    assert_eq!(resumed.next_app_event().await["id"], next.as_str());
    let next_b = rest.trigger_id("kept-b", "e", "after-restart").await;
    assert_eq!(event_id(&json!(next_b)).seq(), 4);
}

/// A compaction's watermark survives a restart: a resume (WebSocket or cursor) from before the
/// cut still says `recovered: false`, one from the cut or after still recovers.
#[tokio::test]
async fn restart_keeps_compaction_watermarks() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("trimmed", "e", "d", 10).await;
    let (status, body) = rest.compact(json!({"channel": "trimmed", "keep_last": 3})).await;
    assert_eq!((status, body), (200, json!({"removed": 7})));

    let server = server.restart().await;
    let rest = server.rest();
    let mut client = server.client().await;
    let replay = client.subscribe_since("trimmed", &ids[2]).await;
    assert_eq!(replay, json!({"head": ids[9], "recovered": false, "count": 0}), "from before the cut, after restart");
    client.expect_silence(SILENCE).await;

    let (_, page) = rest.history("trimmed", &[("since", &ids[2])]).await;
    assert_eq!(page["recovered"], false, "{page}");
    let (events, recovered) = rest.history_all("trimmed").await;
    assert_eq!(ids_of(&events), ids[7..].to_vec());
    assert!(!recovered, "the oldest cursor knows events were removed");

    let mut client = server.client().await;
    let replay = client.subscribe_since("trimmed", &ids[6]).await;
    assert_eq!(replay, json!({"head": ids[9], "recovered": true, "count": 3}), "from the cut, after restart");
    for id in &ids[7..] {
        assert_eq!(client.next_app_event().await["id"], id.as_str());
    }
}

/// A channel whose every event was compacted away keeps its head across a restart: subscribers
/// see it as `replay.head`, a resume from it recovers, and the sequence continues after it
/// instead of starting again at 1 (which would reuse ids clients already hold).
#[tokio::test]
async fn restart_keeps_the_head_of_a_fully_compacted_channel() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("emptied", "e", "d", 4).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, body) = rest.compact(json!({"channel": "emptied", "max_age_secs": 0})).await;
    assert_eq!((status, body), (200, json!({"removed": 4})));

    let server = server.restart().await;
    let rest = server.rest();
    let (_, page) = rest.history("emptied", &[]).await;
    assert_eq!(page, json!({"events": [], "recovered": false, "head": ids[3]}));
    let mut client = server.client().await;
    let replay = client.subscribe_since("emptied", &ids[3]).await;
    assert_eq!(replay, json!({"head": ids[3], "recovered": true, "count": 0}));
    let next = rest.trigger_id("emptied", "e", "next").await;
    assert_eq!(event_id(&json!(next)).seq(), 5, "sequence after a fully compacted channel restarts");
    assert!(next > ids[3]);
    assert_eq!(client.next_app_event().await["id"], next.as_str());
}

/// Events published after a compaction, then a restart: the head is the newest event, not the
/// one remembered at compaction time.
#[tokio::test]
async fn restart_after_compaction_and_more_events_keeps_the_newest_head() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let first = rest.publish_n("mixed", "e", "first", 3).await;
    let (_, body) = rest.compact(json!({"channel": "mixed", "keep_last": 1})).await;
    assert_eq!(body, json!({"removed": 2}));
    let second = rest.publish_n("mixed", "e", "second", 3).await;

    let server = server.restart().await;
    let rest = server.rest();
    let (events, _) = rest.history_all("mixed").await;
    let mut expected = vec![first[2].clone()];
    expected.extend(second.iter().cloned());
    assert_eq!(ids_of(&events), expected);
    let mut client = server.client().await;
    assert_eq!(client.subscribe("mixed").await["replay"]["head"], second[2].as_str());
    let next = rest.trigger_id("mixed", "e", "next").await;
    assert_eq!(event_id(&json!(next)).seq(), 7);
}

/// With `durability = Buffered` publishing still answers with ids, live and replayed delivery
/// work, and a clean shutdown flushes so a restart keeps every event.
#[tokio::test]
async fn buffered_durability_publishes_replays_and_survives_a_clean_restart() {
    let server = TestServer::start_with(|config| {
        config.server.durability = Durability::Buffered;
        config.server.flush_every_ms = 50;
    })
    .await;
    let rest = server.rest();
    let mut live = server.client().await;
    live.subscribe("buffered").await;
    let ids = rest.publish_n("buffered", "e", "d", 6).await;
    for (i, id) in ids.iter().enumerate() {
        let frame = live.next_app_event().await;
        assert_eq!(
            (frame["id"].as_str(), frame["data"].as_str()),
            (Some(id.as_str()), Some(format!("d-{i}").as_str()))
        );
    }
    let mut resumed = server.client().await;
    let replay = resumed.subscribe_since("buffered", &ids[2]).await;
    assert_eq!(replay, json!({"head": ids[5], "recovered": true, "count": 3}));
    for id in &ids[3..] {
        assert_eq!(resumed.next_app_event().await["id"], id.as_str());
    }
    drop((live, resumed));

    let server = server.restart().await;
    let rest = server.rest();
    assert_eq!(ids_of(&rest.history_all("buffered").await.0), ids);
    let next = rest.trigger_id("buffered", "e", "next").await;
    assert_eq!(event_id(&json!(next)).seq(), 7);
}

//! The replay extension's HTTP side: reading a channel's log by cursor
//! (`GET /apps/{id}/channels/{name}/events`), trimming it (`POST /apps/{id}/compact`, and the
//! background retention that performs the same compaction), and the ids publish responses carry.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reprise::config::AppConfig;
use reprise_api::EventId;
use reprise_storage::{CompactRule, Cursor, EventLog, LogKey, NewEvent, SledLog};
use serde_json::{Value, json};
use support::{APP_ID, RestClient, TestServer, event_id};
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

fn ids_of(page: &Value) -> Vec<String> {
    page["events"].as_array().expect("events array").iter().map(|e| e["id"].as_str().expect("id").to_owned()).collect()
}

fn rfc3339(timestamp_ms: u64, offset_hours: i8) -> String {
    let nanos = i128::from(timestamp_ms) * 1_000_000;
    let instant = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
    let offset = time::UtcOffset::from_hms(offset_hours, 0, 0).unwrap();
    instant.to_offset(offset).format(&Rfc3339).unwrap()
}

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// Asserts a 400 with a JSON `{"error": "..."}` body.
fn assert_bad_request(status: u16, body: &Value, context: &str) {
    assert_eq!(status, 400, "{context}: {body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{context}: expected a JSON error body, got {body}");
}

/// Without `since` the cursor starts at the oldest retained event; with an event id it starts
/// right after it; each event has id/event/channel/data, ascending, with `head` and `recovered`.
#[tokio::test]
async fn cursor_reads_from_oldest_and_after_an_id() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("hist", "e", "d", 5).await;

    let (status, page) = rest.history("hist", &[]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["recovered"], true);
    assert_eq!(page["head"], ids[4].as_str());
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 5, "{page}");
    for (i, event) in events.iter().enumerate() {
        assert_eq!(event, &json!({"id": ids[i], "event": "e", "channel": "hist", "data": format!("d-{i}")}));
    }

    let (status, page) = rest.history("hist", &[("since", &ids[1])]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids_of(&page), ids[2..].to_vec());
    assert_eq!(page["recovered"], true);

    let (_, page) = rest.history("hist", &[("since", &ids[4])]).await;
    assert_eq!(ids_of(&page), Vec::<String>::new(), "nothing after the head");
    assert_eq!((page["recovered"].clone(), page["head"].clone()), (json!(true), json!(ids[4])));
}

/// `since` as an RFC 3339 instant returns the events appended at or after it, whatever offset
/// the instant is written in (the `+` and `:` survive signing and URL encoding).
#[tokio::test]
async fn cursor_accepts_rfc3339_instants() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        ids.push(rest.trigger_id("timed", name, name).await);
        // Distinct milliseconds, so "at or after b's time" excludes a.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b_ms = event_id(&json!(ids[1])).timestamp_ms();
    assert!(event_id(&json!(ids[0])).timestamp_ms() < b_ms);
    for since in [rfc3339(b_ms, 0), rfc3339(b_ms, 2), rfc3339(b_ms, -5)] {
        let (status, page) = rest.history("timed", &[("since", &since)]).await;
        assert_eq!(status, 200, "since {since}: {page}");
        assert_eq!(ids_of(&page), ids[1..].to_vec(), "since {since}");
        assert_eq!(page["recovered"], true, "since {since}");
    }
    let (_, page) = rest.history("timed", &[("since", "2001-02-03T04:05:06Z")]).await;
    assert_eq!(ids_of(&page), ids, "a time well before returns everything");
    let (_, page) = rest.history("timed", &[("since", &rfc3339(now_ms() + 60_000, 0))]).await;
    assert_eq!(ids_of(&page), Vec::<String>::new(), "a time in the future returns nothing");
}

/// Without `limit` a page holds 100 events; paging with the last id as the next `since`
/// collects every event exactly once, in order.
#[tokio::test]
async fn pages_default_to_100_and_paging_collects_everything() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("paged", "e", "d", 250).await;

    let (status, page) = rest.history("paged", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(ids_of(&page), ids[..100].to_vec(), "default limit is 100");

    let mut collected = Vec::new();
    let mut since: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut params = vec![("limit", "100")];
        if let Some(since) = &since {
            params.push(("since", since));
        }
        let (status, page) = rest.history("paged", &params).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["recovered"], true);
        let page_ids = ids_of(&page);
        assert!(page_ids.len() <= 100);
        if page_ids.is_empty() {
            break;
        }
        pages += 1;
        since = page_ids.last().cloned();
        collected.extend(page_ids);
        assert!(pages <= 3, "250 events in pages of 100 is 3 pages");
    }
    assert_eq!(collected, ids);

    let (_, page) = rest.history("paged", &[("limit", "1000")]).await;
    assert_eq!(ids_of(&page), ids, "limit 1000 is allowed");
}

/// A limit outside 1..=1000 or not a number, and a `since` that is neither an id nor RFC 3339,
/// are 400 with a JSON error.
#[tokio::test]
async fn bad_limits_and_cursors_are_400() {
    let server = TestServer::start().await;
    let rest = server.rest();
    rest.publish_n("bad", "e", "d", 2).await;
    for limit in ["0", "1001", "x", "-1", "1.5"] {
        let (status, body) = rest.history("bad", &[("limit", limit)]).await;
        assert_bad_request(status, &body, &format!("limit {limit:?}"));
    }
    for since in ["nope", "2026-13-01T00:00:00Z", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ", "1969-12-31T23:59:59Z"] {
        let (status, body) = rest.history("bad", &[("since", since)]).await;
        assert_bad_request(status, &body, &format!("since {since:?}"));
    }
}

/// History and compaction are signed calls: unsigned or wrongly signed requests are 401.
#[tokio::test]
async fn unsigned_calls_are_401() {
    let server = TestServer::start().await;
    let rest = server.rest();
    rest.publish_n("guarded", "e", "d", 1).await;
    let path = rest.path("/channels/guarded/events");
    let (status, body) = rest.raw("GET", &path, Vec::new()).await;
    assert_eq!(status, 401, "unsigned history: {body}");
    let wrong = RestClient { secret: "not-the-secret".into(), ..server.rest() };
    let (status, body) = wrong.history("guarded", &[]).await;
    assert_eq!(status, 401, "wrongly signed history: {body}");
    let (status, body) = rest.raw("POST", &rest.path("/compact"), br#"{"keep_last":0}"#.to_vec()).await;
    assert_eq!(status, 401, "unsigned compact: {body}");
    let (status, body) = wrong.compact(json!({"keep_last": 0})).await;
    assert_eq!(status, 401, "wrongly signed compact: {body}");
    let (_, page) = rest.history("guarded", &[]).await;
    assert_eq!(ids_of(&page).len(), 1, "nothing was compacted");
}

/// A channel never published to reads as empty and complete: no events, head null, recovered.
#[tokio::test]
async fn unknown_channel_is_empty() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let (status, page) = rest.history("never-used", &[]).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page, json!({"events": [], "recovered": true, "head": null}));
    // The zero cursor means "before the first event": nothing was missed, as on the socket.
    let zero = EventId::new(0, 0).to_string();
    let (_, page) = rest.history("never-used", &[("since", zero.as_str())]).await;
    assert_eq!(page, json!({"events": [], "recovered": true, "head": null}));
    // Any other id cannot be from this channel.
    let foreign = EventId::new(1, 1).to_string();
    let (_, page) = rest.history("never-used", &[("since", foreign.as_str())]).await;
    assert_eq!(page["recovered"], false, "{page}");
}

/// `keep_last` removes all but the newest N and says how many it removed; a cursor before the
/// cut reads `recovered: false` (the retained events still come back), one at or after it
/// reads `recovered: true`, and the head is unchanged.
#[tokio::test]
async fn compact_keep_last() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("keep", "e", "d", 10).await;
    let (status, body) = rest.compact(json!({"channel": "keep", "keep_last": 3})).await;
    assert_eq!((status, body), (200, json!({"removed": 7})));

    let (_, page) = rest.history("keep", &[]).await;
    assert_eq!(ids_of(&page), ids[7..].to_vec());
    assert_eq!(page["recovered"], false, "events after the oldest cursor were removed");
    assert_eq!(page["head"], ids[9].as_str());

    let (_, page) = rest.history("keep", &[("since", &ids[2])]).await;
    assert_eq!((ids_of(&page), page["recovered"].clone()), (ids[7..].to_vec(), json!(false)), "before the cut");
    let (_, page) = rest.history("keep", &[("since", &ids[6])]).await;
    assert_eq!((ids_of(&page), page["recovered"].clone()), (ids[7..].to_vec(), json!(true)), "at the cut");
    let (_, page) = rest.history("keep", &[("since", &ids[8])]).await;
    assert_eq!((ids_of(&page), page["recovered"].clone()), (ids[9..].to_vec(), json!(true)), "after the cut");
    let (_, page) = rest.history("keep", &[("since", &ids[9])]).await;
    assert_eq!((ids_of(&page), page["recovered"].clone()), (vec![], json!(true)), "from the head");

    let (_, body) = rest.compact(json!({"channel": "keep", "keep_last": 3})).await;
    assert_eq!(body, json!({"removed": 0}), "compacting again removes nothing");
}

/// `before` removes the events whose id is below the given one; resumes over WebSocket agree
/// with the cursor endpoint about the cut.
#[tokio::test]
async fn compact_before_an_id() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("cut", "e", "d", 8).await;
    let (status, body) = rest.compact(json!({"channel": "cut", "before": ids[4]})).await;
    assert_eq!((status, body), (200, json!({"removed": 4})));
    let (_, page) = rest.history("cut", &[]).await;
    assert_eq!(ids_of(&page), ids[4..].to_vec());

    let mut client = server.client().await;
    let replay = client.subscribe_since("cut", &ids[1]).await;
    assert_eq!(replay, json!({"head": ids[7], "recovered": false, "count": 0}), "resume from before the cut");
    let mut client = server.client().await;
    let replay = client.subscribe_since("cut", &ids[3]).await;
    assert_eq!(replay, json!({"head": ids[7], "recovered": true, "count": 4}), "resume from the cut");
    for id in &ids[4..] {
        assert_eq!(client.next_app_event().await["id"], id.as_str());
    }
}

/// `max_age_secs: 0` removes every event appended before now; the channel keeps its head, a
/// cursor from the head still recovers and the next event continues the sequence.
#[tokio::test]
async fn compact_max_age() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("aged", "e", "d", 5).await;
    let young = rest.publish_n("young", "e", "d", 2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, body) = rest.compact(json!({"channel": "aged", "max_age_secs": 0})).await;
    assert_eq!((status, body), (200, json!({"removed": 5})));
    let (status, body) = rest.compact(json!({"channel": "young", "max_age_secs": 3600})).await;
    assert_eq!((status, body), (200, json!({"removed": 0})), "nothing is an hour old");

    let (_, page) = rest.history("aged", &[]).await;
    assert_eq!(page, json!({"events": [], "recovered": false, "head": ids[4]}));
    let (_, page) = rest.history("aged", &[("since", &ids[4])]).await;
    assert_eq!(page["recovered"], true, "nothing after the head was removed: {page}");
    let (_, page) = rest.history("aged", &[("since", &ids[3])]).await;
    assert_eq!(page["recovered"], false, "{page}");
    let (_, page) = rest.history("young", &[]).await;
    assert_eq!(ids_of(&page), young);

    let next = rest.trigger_id("aged", "e", "next").await;
    assert_eq!(event_id(&json!(next)).seq(), 6, "the sequence continues after a full compaction");
    assert!(next > ids[4]);
}

/// Without `channel`, compaction applies to every channel of the app, and only that app; the
/// removed count is the total.
#[tokio::test]
async fn compact_every_channel_of_the_app() {
    let other = AppConfig {
        id: "other-app".into(),
        key: "other-key".into(),
        secret: "other-secret".into(),
        ..support::test_app()
    };
    let server = TestServer::start_with(|config| config.apps.push(other)).await;
    let rest = server.rest();
    let other_rest = RestClient {
        app_id: "other-app".into(),
        key: "other-key".into(),
        secret: "other-secret".into(),
        ..server.rest()
    };
    let a = rest.publish_n("one", "e", "d", 4).await;
    let b = rest.publish_n("two", "e", "d", 6).await;
    let c = rest.publish_n("three", "e", "d", 1).await;
    let theirs = other_rest.publish_n("one", "e", "d", 5).await;

    let (status, body) = rest.compact(json!({"keep_last": 2})).await;
    assert_eq!((status, body), (200, json!({"removed": 2 + 4})));
    assert_eq!(ids_of(&rest.history("one", &[]).await.1), a[2..].to_vec());
    assert_eq!(ids_of(&rest.history("two", &[]).await.1), b[4..].to_vec());
    assert_eq!(ids_of(&rest.history("three", &[]).await.1), c);
    let (_, page) = other_rest.history("one", &[]).await;
    assert_eq!(ids_of(&page), theirs, "another app's channel of the same name is untouched");
    assert_eq!(page["recovered"], true);
}

/// A compaction must name a rule, a well-formed `before`, and only known fields; otherwise 400
/// and nothing is removed.
#[tokio::test]
async fn bad_compactions_are_400() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let ids = rest.publish_n("safe", "e", "d", 3).await;
    for body in [
        json!({}),
        json!({"channel": "safe"}),
        json!({"channel": "safe", "before": "nope"}),
        json!({"channel": "safe", "before": ""}),
        json!({"channel": "safe", "keep_last": -1}),
        json!({"channel": "safe", "keep_lats": 1}),
    ] {
        let (status, response) = rest.compact(body.clone()).await;
        assert_bad_request(status, &response, &format!("compact {body}"));
    }
    assert_eq!(ids_of(&rest.history("safe", &[]).await.1), ids, "nothing was removed");
}

/// `batch_events` answers one `ids` object per item, naming the item's channel; `events` with
/// several channels answers one id per channel. Each id is what history then holds.
#[tokio::test]
async fn publish_responses_carry_ids() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let batch = json!({"batch": [
        {"name": "e", "channel": "left", "data": "l1"},
        {"name": "e", "channel": "right", "data": "r1"},
        {"name": "e", "channel": "left", "data": "l2"},
    ]});
    let (status, response) = rest.call("POST", &rest.path("/batch_events"), &[], Some(&batch)).await;
    assert_eq!(status, 200, "{response}");
    let items = response["batch"].as_array().expect("batch array");
    assert_eq!(items.len(), 3, "{response}");
    let channels = ["left", "right", "left"];
    for (item, channel) in items.iter().zip(channels) {
        let ids = item["ids"].as_object().expect("ids object");
        assert_eq!(ids.keys().collect::<Vec<_>>(), vec![channel], "{response}");
    }
    let l1 = event_id(&items[0]["ids"]["left"]);
    let l2 = event_id(&items[2]["ids"]["left"]);
    assert_eq!((l1.seq(), l2.seq()), (1, 2), "{response}");
    assert_eq!(event_id(&items[1]["ids"]["right"]).seq(), 1);

    let response = trigger_many(&rest, &["left", "right"], "multi", "m").await;
    let ids = response["ids"].as_object().expect("ids object");
    assert_eq!(ids.len(), 2, "{response}");
    assert_eq!(event_id(&ids["left"]).seq(), 3);
    assert_eq!(event_id(&ids["right"]).seq(), 2);

    let (_, page) = rest.history("left", &[]).await;
    assert_eq!(ids_of(&page), vec![l1.to_string(), l2.to_string(), ids["left"].as_str().unwrap().to_owned()]);
    assert_eq!(page["events"][1]["data"], "l2");
}

/// Publishes one event to several channels through `POST /events`; asserts 200.
async fn trigger_many(rest: &RestClient, channels: &[&str], event: &str, data: &str) -> Value {
    let body = json!({"name": event, "channels": channels, "data": data});
    let (status, response) = rest.call("POST", &rest.path("/events"), &[], Some(&body)).await;
    assert_eq!(status, 200, "{response}");
    response
}

/// Retention settings turn into the compaction rule `POST /compact` would apply: none without
/// settings, `keep_last` from `retention_max_events`, an age cut from `retention_max_age_secs`.
#[test]
fn retention_rule_follows_app_settings() {
    let app = support::test_app();
    assert_eq!(reprise::log_service::compaction::retention_rule(&app), None, "no settings, no retention");
    let app = AppConfig { retention_max_events: Some(3), ..support::test_app() };
    assert_eq!(
        reprise::log_service::compaction::retention_rule(&app),
        Some(CompactRule { keep_last: Some(3), older_than_ms: None, before: None })
    );
    let before = now_ms();
    let app = AppConfig { retention_max_age_secs: Some(60), ..support::test_app() };
    let rule = reprise::log_service::compaction::retention_rule(&app).expect("a rule");
    let cut = rule.older_than_ms.expect("an age cut");
    assert!(cut + 60_000 >= before && cut + 60_000 <= now_ms(), "cut {cut} should be now - 60 s");
    assert_eq!((rule.keep_last, rule.before), (None, None));
}

/// The background retention loop (`run_retention`, given a short interval) trims every channel of an app with retention and leaves other apps
/// alone; it records the cut, so a resume from before it is not recovered.
#[tokio::test]
async fn retention_loop_trims_channels() {
    let dir = tempfile::tempdir().unwrap();
    let log: Arc<dyn EventLog> = Arc::new(SledLog::open(&dir.path().join("log")).unwrap());
    let kept = AppConfig { retention_max_events: Some(2), ..support::test_app() };
    let untouched =
        AppConfig { id: "no-retention".into(), key: "k2".into(), secret: "s2".into(), ..support::test_app() };
    let mut events = Vec::new();
    for (app, channel) in [(APP_ID, "a"), (APP_ID, "b"), ("no-retention", "a")] {
        for i in 0..5 {
            events.push(NewEvent {
                key: LogKey::new(app, channel),
                event: "e".into(),
                data: i.to_string().into(),
                user_id: None,
            });
        }
    }
    let ids = log.append(&events).unwrap();
    let shutdown = CancellationToken::new();
    let service = Arc::new(reprise::log_service::LogService::new(Arc::clone(&log), 1000));
    let task = tokio::spawn(reprise::log_service::compaction::run_retention(
        service,
        vec![kept, untouched],
        Duration::from_millis(20),
        shutdown.clone(),
        Arc::new(reprise::metrics::Metrics::new([APP_ID])),
        None,
    ));
    let key_a = LogKey::new(APP_ID, "a");
    let mut trimmed = false;
    for _ in 0..100 {
        let a = log.read(&key_a, Cursor::Oldest, 100).unwrap();
        let b = log.read(&LogKey::new(APP_ID, "b"), Cursor::Oldest, 100).unwrap();
        if a.events.len() == 2 && b.events.len() == 2 {
            trimmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("retention stops on shutdown").unwrap();
    assert!(trimmed, "retention did not trim both channels to 2 events");
    let a = log.read(&key_a, Cursor::Oldest, 100).unwrap();
    assert_eq!(a.events.iter().map(|e| e.id).collect::<Vec<EventId>>(), ids[3..5].to_vec());
    assert!(!log.read(&key_a, Cursor::After(ids[1]), 100).unwrap().recovered, "a cursor before the cut");
    let other = log.read(&LogKey::new("no-retention", "a"), Cursor::Oldest, 100).unwrap();
    assert_eq!(other.events.len(), 5, "an app without retention keeps everything");
    assert!(other.recovered);
}

/// Retention configured on a running server (`retention_max_events`, applied every
/// `retention_interval_secs`) trims the log that the history endpoint serves.
#[tokio::test]
async fn a_running_server_applies_retention() {
    let server = TestServer::start_with(|config| {
        config.server.retention_interval_secs = 1;
        config.apps[0].retention_max_events = Some(2);
    })
    .await;
    let rest = server.rest();
    let ids = rest.publish_n("kept", "e", "r", 5).await;
    let mut retained = Vec::new();
    for _ in 0..100 {
        let (events, _) = rest.history_all("kept").await;
        retained = events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
        if retained.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(retained, ids[3..5].to_vec(), "retention keeps the newest two");
}

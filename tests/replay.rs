//! Replay on subscribe: `since` resumes a channel from the log (`recovered`, `count`, the missed
//! events with their ids, then live events), `replay.head` on every subscribe, the replay cap,
//! auth before replay, and a gap-free, duplicate-free resume while a publisher keeps going.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reprise_api::{EventId, signature};
use serde_json::{Value, json};
use support::{APP_KEY, APP_SECRET, Rng, TestServer, data_of, event_id};

/// How long "nothing else arrives" waits after the ping round trip.
const SILENCE: Duration = Duration::from_millis(200);

/// Asserts `frame` is the logged event `id` on `channel` with `event`/`data`, in the wire shape
/// `{"event","channel","data","id"}`.
fn assert_event(frame: &Value, channel: &str, event: &str, data: &str, id: &str, context: &str) {
    assert_eq!(frame["event"], event, "{context}: unexpected frame {frame}");
    assert_eq!(frame["channel"], channel, "{context}: {frame}");
    assert_eq!(frame["data"], data, "{context}: {frame}");
    assert_eq!(frame["id"], id, "{context}: wrong id (expected {id}) in {frame}");
}

/// Live event frames carry their id at top level, equal to the id the publish response gave,
/// and a channel's ids grow by exactly one sequence number per event.
#[tokio::test]
async fn live_frames_carry_the_published_id_with_contiguous_sequences() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut client = server.client().await;
    client.subscribe("live").await;
    let mut previous: Option<EventId> = None;
    for i in 0..5 {
        let data = format!("d{i}");
        let id = rest.trigger_id("live", "tick", &data).await;
        let frame = client.next_app_event().await;
        assert_event(&frame, "live", "tick", &data, &id, "live frame");
        let keys: Vec<&str> = frame.as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "a logged event frame is exactly event/channel/data/id: {frame}");
        let id = event_id(&frame["id"]);
        if let Some(previous) = previous {
            assert_eq!(id.seq(), previous.seq() + 1, "sequence must be contiguous: {previous} then {id}");
            assert!(id > previous, "ids must increase: {previous} then {id}");
        } else {
            assert_eq!(id.seq(), 1, "a channel's first event has sequence 1");
        }
        previous = Some(id);
    }
}

/// A subscribe without `since` reports the channel's latest id as `replay.head` (null on a
/// channel never published to), replays nothing and has no `recovered`/`count`.
#[tokio::test]
async fn fresh_subscribe_reports_the_head() {
    let server = TestServer::start().await;
    let rest = server.rest();

    let mut client = server.client().await;
    let data = client.subscribe("empty").await;
    assert_eq!(data["replay"], json!({"head": null}), "empty channel: {data}");

    let ids = rest.publish_n("busy", "e", "x", 3).await;
    let mut client = server.client().await;
    let data = client.subscribe("busy").await;
    assert_eq!(data["replay"]["head"], ids[2].as_str(), "head must be the last published id: {data}");
    assert!(data["replay"].get("recovered").is_none() && data["replay"].get("count").is_none(), "{data}");
    client.expect_silence(SILENCE).await;
}

/// What a resume case expects.
enum Expect {
    /// `recovered: true`; these indices of the published ids are replayed, in order.
    Replays(std::ops::Range<usize>),
    /// `recovered: false, count: 0` and nothing replayed.
    NotRecovered,
}

struct Case {
    name: &'static str,
    published: usize,
    /// Compaction applied before the resume (`keep_last`).
    keep_last: Option<u64>,
    since: fn(&[String]) -> String,
    expect: Expect,
}

/// The resume table: for each case, publish, maybe compact, subscribe with `since`, check the
/// replay block, the replayed frames (ids, order, data), that nothing else follows, and that the
/// next live event arrives with the next sequence.
#[tokio::test]
async fn resume_cases() {
    let cases = [
        Case {
            name: "from the head",
            published: 3,
            keep_last: None,
            since: |ids| ids[2].clone(),
            expect: Expect::Replays(3..3),
        },
        Case {
            name: "from the middle",
            published: 6,
            keep_last: None,
            since: |ids| ids[2].clone(),
            expect: Expect::Replays(3..6),
        },
        Case {
            name: "from before the first event (sequence 0)",
            published: 4,
            keep_last: None,
            since: |_| EventId::new(0, 0).to_string(),
            expect: Expect::Replays(0..4),
        },
        Case {
            name: "from before a compaction cut",
            published: 6,
            keep_last: Some(2),
            since: |ids| ids[1].clone(),
            expect: Expect::NotRecovered,
        },
        Case {
            name: "from the last compacted event (nothing after it was removed)",
            published: 6,
            keep_last: Some(2),
            since: |ids| ids[3].clone(),
            expect: Expect::Replays(4..6),
        },
        Case {
            name: "from after a compaction cut",
            published: 6,
            keep_last: Some(2),
            since: |ids| ids[4].clone(),
            expect: Expect::Replays(5..6),
        },
        Case {
            name: "from an unknown future id",
            published: 3,
            keep_last: None,
            since: |_| {
                let now = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
                EventId::new(now + 86_400_000, 999_999).to_string()
            },
            expect: Expect::NotRecovered,
        },
        Case {
            name: "from an id this channel never had (right sequence, wrong time)",
            published: 3,
            keep_last: None,
            since: |ids| {
                let real: EventId = ids[1].parse().unwrap();
                EventId::new(real.timestamp_ms() - 1, real.seq()).to_string()
            },
            expect: Expect::NotRecovered,
        },
        Case {
            name: "on a channel never published to",
            published: 0,
            keep_last: None,
            since: |_| EventId::new(1, 1).to_string(),
            expect: Expect::NotRecovered,
        },
        Case {
            name: "from before the first event on a channel never published to",
            published: 0,
            keep_last: None,
            since: |_| EventId::new(0, 0).to_string(),
            expect: Expect::Replays(0..0),
        },
    ];
    let server = TestServer::start().await;
    let rest = server.rest();
    for (index, case) in cases.iter().enumerate() {
        let context = format!("case {:?}", case.name);
        let channel = format!("resume-{index}");
        let ids = rest.publish_n(&channel, "e", "d", case.published).await;
        if let Some(keep_last) = case.keep_last {
            let (status, body) = rest.compact(json!({"channel": channel, "keep_last": keep_last})).await;
            assert_eq!(status, 200, "{context}: compact: {body}");
        }
        let since = (case.since)(&ids);
        let mut client = server.client().await;
        let replay = client.subscribe_since(&channel, &since).await;
        let head = ids.last().map_or(Value::Null, |id| Value::String(id.clone()));
        assert_eq!(replay["head"], head, "{context}: head: {replay}");
        match &case.expect {
            Expect::Replays(range) => {
                assert_eq!(replay["recovered"], true, "{context}: {replay}");
                assert_eq!(replay["count"], range.len(), "{context}: {replay}");
                for i in range.clone() {
                    let frame = client.next_app_event().await;
                    assert_event(&frame, &channel, "e", &format!("d-{i}"), &ids[i], &context);
                }
            }
            Expect::NotRecovered => {
                assert_eq!(replay["recovered"], false, "{context}: {replay}");
                assert_eq!(replay["count"], 0, "{context}: {replay}");
            }
        }
        client.expect_silence(SILENCE).await;
        // Live events follow, with the next sequence.
        let live = rest.trigger_id(&channel, "live", "after").await;
        let frame = client.next_app_event().await;
        assert_event(&frame, &channel, "live", "after", &live, &format!("{context}: live"));
        assert_eq!(event_id(&frame["id"]).seq(), u64::try_from(case.published).unwrap() + 1, "{context}");
    }
}

/// A malformed `since` is refused with `pusher:subscription_error` saying what is wrong, and the
/// socket is not subscribed (no live events).
#[tokio::test]
async fn malformed_since_is_a_subscription_error() {
    let server = TestServer::start().await;
    let rest = server.rest();
    rest.publish_n("bad-since", "e", "d", 2).await;
    for since in ["nope", "", "01ARZ3NDEKTSV4RRFFQ69G5FA", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ"] {
        let mut client = server.client().await;
        client.send_subscribe(json!({"channel": "bad-since", "since": since})).await;
        let frame = client.recv().await;
        assert_eq!(frame["event"], "pusher:subscription_error", "since {since:?}: {frame}");
        assert_eq!(frame["channel"], "bad-since");
        let error = data_of(&frame)["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains("since"), "since {since:?}: the message should name `since`: {frame}");
        rest.trigger("bad-since", "e", "live").await;
        client.expect_silence(SILENCE).await;
    }
}

/// Private-channel history is only replayed after auth: a forged signature with `since` gets a
/// subscription error and not one logged event, neither replayed nor live.
#[tokio::test]
async fn forged_auth_with_since_replays_nothing() {
    let server = TestServer::start().await;
    let rest = server.rest();
    rest.publish_n("private-secret", "e", "d", 3).await;
    let mut client = server.client().await;
    // A real signature, but for another socket (a replayed auth string), and a made-up one.
    let stolen = signature::socket_auth(APP_KEY, APP_SECRET, "1.1", "private-secret", None);
    for auth in [stolen, format!("{APP_KEY}:{}", "0".repeat(64))] {
        client
            .send_subscribe(json!({"channel": "private-secret", "auth": auth, "since": EventId::new(0, 0).to_string()}))
            .await;
        let frame = client.recv().await;
        assert_eq!(frame["event"], "pusher:subscription_error", "{frame}");
        assert_eq!(frame["channel"], "private-secret");
        client.expect_silence(SILENCE).await;
    }
    rest.trigger("private-secret", "e", "live").await;
    client.expect_silence(SILENCE).await;
}

/// With valid auth, private and presence channels replay like public ones (and presence still
/// gets its roster next to the replay block).
#[tokio::test]
async fn valid_auth_with_since_replays() {
    let server = TestServer::start().await;
    let rest = server.rest();
    for channel in ["private-ok", "presence-ok"] {
        let ids = rest.publish_n(channel, "e", "d", 4).await;
        let mut client = server.client().await;
        let channel_data =
            channel.starts_with("presence-").then(|| json!({"user_id": "u1", "user_info": {}}).to_string());
        let auth = signature::socket_auth(APP_KEY, APP_SECRET, &client.socket_id, channel, channel_data.as_deref());
        let mut request = json!({"channel": channel, "auth": auth, "since": ids[0]});
        if let Some(channel_data) = &channel_data {
            request["channel_data"] = json!(channel_data);
        }
        client.send_subscribe(request).await;
        let data = client.expect_subscribed(channel).await;
        assert_eq!(data["replay"], json!({"head": ids[3], "recovered": true, "count": 3}), "{channel}: {data}");
        if channel_data.is_some() {
            assert_eq!(data["presence"]["count"], 1, "presence roster next to replay: {data}");
        }
        for (i, id) in ids.iter().enumerate().skip(1) {
            let frame = client.next_app_event().await;
            assert_event(&frame, channel, "e", &format!("d-{i}"), id, channel);
        }
        client.expect_silence(SILENCE).await;
    }
}

/// More missed events than `replay_cap_events` is `recovered: false` with nothing replayed;
/// exactly the cap is still replayed in full.
#[tokio::test]
async fn the_replay_cap_bounds_a_resume() {
    let server = TestServer::start_with(|config| config.server.replay_cap_events = 5).await;
    let rest = server.rest();
    let ids = rest.publish_n("capped", "e", "d", 7).await;

    let mut client = server.client().await;
    let replay = client.subscribe_since("capped", &ids[0]).await;
    assert_eq!(replay, json!({"head": ids[6], "recovered": false, "count": 0}), "6 missed, cap 5");
    client.expect_silence(SILENCE).await;

    let mut client = server.client().await;
    let replay = client.subscribe_since("capped", &ids[1]).await;
    assert_eq!(replay, json!({"head": ids[6], "recovered": true, "count": 5}), "5 missed, cap 5");
    for (i, id) in ids.iter().enumerate().skip(2) {
        let frame = client.next_app_event().await;
        assert_event(&frame, "capped", "e", &format!("d-{i}"), id, "exactly the cap");
    }
    client.expect_silence(SILENCE).await;
}

/// Subscribe-then-read under load: while a publisher streams events, a client that disconnects
/// at random points and resumes with `since` = the last id it saw ends up with every published
/// event exactly once, in order: no gap and no duplicate at any subscribe/replay/live seam.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_under_load_is_gap_free_and_duplicate_free() {
    const EVENTS: usize = 300;
    const SEED: u64 = 0x5EED_2026_0001;
    let server = TestServer::start().await;
    let channel = "stream";
    let mut client = server.client().await;
    let first = client.subscribe(channel).await;
    assert_eq!(first["replay"]["head"], Value::Null);

    // The publisher stays at most LEAD events ahead of the client, so the client's resumes race
    // live publishing however fast this machine's fsync is.
    const LEAD: usize = 40;
    let progress = Arc::new(AtomicUsize::new(0));
    let rest = server.rest();
    let publisher_progress = Arc::clone(&progress);
    let publisher = tokio::spawn(async move {
        let mut ids = Vec::with_capacity(EVENTS);
        for i in 0..EVENTS {
            while i > publisher_progress.load(Ordering::Acquire) + LEAD {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            ids.push(rest.trigger_id(channel, "tick", &i.to_string()).await);
        }
        ids
    });

    let mut rng = Rng(SEED);
    let mut seen: Vec<(String, String)> = Vec::with_capacity(EVENTS);
    let mut resumes = 0;
    let mut replayed_total = 0;
    let mut resumes_while_publishing = 0;
    while seen.len() < EVENTS {
        // Read a random number of events (more than are left just reads to the end).
        let take = rng.between(1, 60);
        for _ in 0..take {
            if seen.len() == EVENTS {
                break;
            }
            let frame = client.next_app_event().await;
            let id = event_id(&frame["id"]);
            let expected_seq = u64::try_from(seen.len()).unwrap() + 1;
            assert_eq!(
                id.seq(),
                expected_seq,
                "after {resumes} resumes (seed {SEED:#x}): got {frame}, expected sequence {expected_seq} (gap or duplicate)"
            );
            assert_eq!(frame["data"], (seen.len()).to_string(), "{frame}");
            seen.push((frame["id"].as_str().unwrap().to_owned(), frame["data"].as_str().unwrap().to_owned()));
            progress.store(seen.len(), Ordering::Release);
        }
        if seen.len() == EVENTS {
            break;
        }
        // Disconnect: politely or by just dropping the socket; sometimes stay away a while.
        if rng.next().is_multiple_of(2) {
            let _ = client.stream.close(None).await;
        }
        drop(client);
        let away_ms = rng.between(0, 15);
        if away_ms > 0 {
            tokio::time::sleep(Duration::from_millis(away_ms)).await;
        }
        client = server.client().await;
        let last = &seen.last().expect("at least one event read per session").0;
        let replay = client.subscribe_since(channel, last).await;
        assert_eq!(replay["recovered"], true, "resume {resumes} from {last}: {replay}");
        replayed_total += replay["count"].as_u64().expect("count");
        resumes += 1;
        if !publisher.is_finished() {
            resumes_while_publishing += 1;
        }
    }
    let published =
        tokio::time::timeout(Duration::from_secs(30), publisher).await.expect("publisher finished").unwrap();
    let seen_ids: Vec<String> = seen.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(seen_ids, published, "the client must have every published id, in order, once");
    eprintln!("{resumes} resumes ({resumes_while_publishing} while publishing), {replayed_total} events replayed");
    assert!(resumes >= 5, "only {resumes} resumes: the test did not exercise the seam");
    assert!(resumes_while_publishing >= 3, "only {resumes_while_publishing} resumes raced the publisher");
    client.expect_silence(SILENCE).await;
}

/// A fresh subscribe (no `since`) while events are being published starts exactly after the
/// `replay.head` it reports: its first live event has the next sequence and none is skipped, so
/// a client can always resume from that head without missing the event that was in flight
/// (between append and fan-out) when it joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_subscribers_during_publishing_start_right_after_their_head() {
    const EVENTS: u64 = 150;
    const JOINERS: u64 = 12;
    let server = TestServer::start().await;
    let channel = "joined-while-busy";
    let rest = server.rest();
    // The joins start once the first event is out: on a busy machine the publisher's first
    // request may otherwise come after most joins, which then see no event in flight.
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let publisher = tokio::spawn(async move {
        let mut started_tx = Some(started_tx);
        for i in 0..EVENTS {
            rest.trigger(channel, "tick", &i.to_string()).await;
            if let Some(started_tx) = started_tx.take() {
                let _ = started_tx.send(());
            }
            // At least EVENTS ms of publishing, however fast this machine's fsync is.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    started.await.expect("the first event was published");
    let mut rng = Rng(0x00C0_FFEE);
    let mut joiners = Vec::new();
    for joiner in 0..JOINERS {
        // Stagger the joins over the publishing run.
        tokio::time::sleep(Duration::from_millis(rng.between(0, 10))).await;
        let mut client = server.client().await;
        joiners.push(tokio::spawn(async move {
            let data = client.subscribe(channel).await;
            let head = &data["replay"]["head"];
            let mut expected = if head.is_null() { 1 } else { event_id(head).seq() + 1 };
            let first = expected;
            while expected <= EVENTS {
                let frame = client.next_app_event().await;
                let seq = event_id(&frame["id"]).seq();
                assert_eq!(seq, expected, "joiner {joiner} (head {head}): expected sequence {expected}, got {frame}");
                expected += 1;
            }
            first
        }));
    }
    tokio::time::timeout(Duration::from_secs(30), publisher).await.expect("publisher finished").unwrap();
    let mut joined_mid_stream = 0;
    for joiner in joiners {
        let first = tokio::time::timeout(Duration::from_secs(30), joiner).await.expect("joiner finished").unwrap();
        if first > 1 && first <= EVENTS {
            joined_mid_stream += 1;
        }
    }
    eprintln!("{joined_mid_stream} of {JOINERS} subscribers joined mid-stream");
    assert!(joined_mid_stream >= 3, "only {joined_mid_stream} subscribers joined while events were flowing");
}

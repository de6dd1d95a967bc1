//! Crash durability of the real binary: with `durability = sync` (the default) a publish is
//! answered 200 only after its event is fsynced, so after `kill -9` and a restart on the same
//! data directory every acknowledged event is in the log, ids keep increasing with contiguous
//! sequences, and a WebSocket resume replays across the crash.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reprise_api::{EventId, signature};
use serde_json::{Value, json};
use support::process::ServerProcess;
use support::{APP_ID, APP_KEY, APP_SECRET, WsClient, event_id, unix_now};

const CHANNELS: usize = 4;
const PUBLISHERS: usize = 8;
const EVENTS_PER_PUBLISHER: usize = 50;
/// Acknowledged publishes before the kill: well into the run, well before its end.
const KILL_AFTER_ACKS: usize = 150;

/// One acknowledged publish.
#[derive(Clone, Debug)]
struct Ack {
    channel: String,
    id: EventId,
    data: String,
}

fn channel_name(index: usize) -> String {
    format!("crash-{index}")
}

/// Publishes `EVENTS_PER_PUBLISHER` events one after another, recording each one answered 200,
/// and stops at the first request that fails (the server died under it). Never panics: a
/// publish cut off by the kill is simply not acknowledged.
async fn publish_until_killed(base: String, publisher: usize, acks: Arc<Mutex<Vec<Ack>>>, acked: Arc<AtomicUsize>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let channel = channel_name(publisher % CHANNELS);
    let path = format!("/apps/{APP_ID}/events");
    for i in 0..EVENTS_PER_PUBLISHER {
        let data = format!("p{publisher}-{i}");
        let body = json!({"name": "crash", "channel": channel, "data": data}).to_string().into_bytes();
        let query = signature::sign_request(APP_KEY, APP_SECRET, "POST", &path, &[], &body, unix_now());
        let sent = client
            .post(format!("{base}{path}?{query}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await;
        let Ok(response) = sent else { return };
        if response.status() != 200 {
            return;
        }
        let Ok(answer) = response.json::<Value>().await else { return };
        let id = event_id(&answer["ids"][&channel]);
        acks.lock().unwrap().push(Ack { channel: channel.clone(), id, data });
        acked.fetch_add(1, Ordering::SeqCst);
    }
}

/// `{publisher}-{i}` back from `p{publisher}-{i}`.
fn parse_data(data: &str) -> (usize, usize) {
    let (publisher, index) = data
        .strip_prefix('p')
        .and_then(|rest| rest.split_once('-'))
        .unwrap_or_else(|| panic!("unexpected data {data:?}"));
    (publisher.parse().unwrap(), index.parse().unwrap())
}

/// kill -9 in the middle of concurrent publishing, then restart on the same data directory:
/// every acknowledged event is in the log with its id, name and data; each channel's ids are
/// strictly increasing with sequences 1, 2, 3...; nothing appears that no publisher sent (at most
/// each publisher's one in-flight publish beyond its acknowledged ones); new ids are above every
/// earlier id; and a WebSocket resume from an acknowledged id replays the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("log");
    let mut server = ServerProcess::start(&data_dir, dir.path().join("first.stderr"), &[]).await;

    let acks = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| tokio::spawn(publish_until_killed(server.base(), p, Arc::clone(&acks), Arc::clone(&acked))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        assert!(
            Instant::now() < deadline,
            "only {} publishes acknowledged in 20 s:\n{}",
            acked.load(Ordering::SeqCst),
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    server.kill_9();
    for publisher in publishers {
        tokio::time::timeout(Duration::from_secs(10), publisher)
            .await
            .expect("publisher gives up after the kill")
            .unwrap();
    }
    let acks = acks.lock().unwrap().clone();
    assert!(
        acks.len() < PUBLISHERS * EVENTS_PER_PUBLISHER,
        "every publish was acknowledged before the kill: the crash hit nothing in flight"
    );
    eprintln!("{} publishes acknowledged before kill -9", acks.len());

    let server = ServerProcess::start(&data_dir, dir.path().join("second.stderr"), &[]).await;
    let rest = server.rest();
    let mut acked_by_publisher = [0usize; PUBLISHERS];
    for ack in &acks {
        acked_by_publisher[parse_data(&ack.data).0] += 1;
    }
    let mut histories: BTreeMap<String, Vec<(EventId, String)>> = BTreeMap::new();
    for c in 0..CHANNELS {
        let channel = channel_name(c);
        let (events, recovered) = rest.history_all(&channel).await;
        assert!(recovered, "{channel}: nothing was compacted, the log is complete from the oldest event");
        let mut history = Vec::with_capacity(events.len());
        let mut per_publisher: HashMap<usize, Vec<usize>> = HashMap::new();
        for (index, event) in events.iter().enumerate() {
            let id = event_id(&event["id"]);
            assert_eq!(
                id.seq(),
                u64::try_from(index).unwrap() + 1,
                "{channel}: sequences must be 1, 2, 3... got {id} at {index}"
            );
            if let Some((previous, _)) = history.last() {
                assert!(id > *previous, "{channel}: ids must strictly increase: {previous} then {id}");
            }
            assert_eq!(event["event"], "crash", "{event}");
            let data = event["data"].as_str().expect("data").to_owned();
            let (publisher, i) = parse_data(&data);
            assert_eq!(publisher % CHANNELS, c, "{channel}: event {data} belongs to another channel");
            per_publisher.entry(publisher).or_default().push(i);
            history.push((id, data));
        }
        // Each publisher sent sequentially, so its events in the log are 0, 1, 2... with at most
        // one (the publish in flight at the kill) beyond the acknowledged ones.
        for (publisher, indices) in &per_publisher {
            let expected: Vec<usize> = (0..indices.len()).collect();
            assert_eq!(
                indices, &expected,
                "{channel}: publisher {publisher}'s events are not a prefix of what it sent"
            );
            let acked = acked_by_publisher[*publisher];
            assert!(
                indices.len() == acked || indices.len() == acked + 1,
                "{channel}: publisher {publisher} had {acked} acknowledged, the log holds {}",
                indices.len()
            );
        }
        histories.insert(channel, history);
    }
    for ack in &acks {
        let history = &histories[&ack.channel];
        let found = history.iter().find(|(id, _)| *id == ack.id);
        assert_eq!(
            found.map(|(_, data)| data.as_str()),
            Some(ack.data.as_str()),
            "acknowledged event {} ({}) on {} is missing or changed after kill -9",
            ack.id,
            ack.data,
            ack.channel
        );
    }

    // New events continue every channel above everything from before the crash.
    let mut new_ids = BTreeMap::new();
    for (channel, history) in &histories {
        let id = event_id(&json!(rest.trigger_id(channel, "crash", "after").await));
        let highest_acked = acks.iter().filter(|a| &a.channel == channel).map(|a| a.id).max();
        let last = history.last().map(|(id, _)| *id);
        assert!(Some(id) > last.max(highest_acked), "{channel}: {id} is not above {last:?}/{highest_acked:?}");
        assert_eq!(id.seq(), u64::try_from(history.len()).unwrap() + 1, "{channel}: the sequence continues");
        new_ids.insert(channel.clone(), id);
    }

    // A client that saw an acknowledged event before the crash resumes from it.
    let channel = channel_name(0);
    let history = &histories[&channel];
    let from = acks.iter().filter(|a| a.channel == channel).nth(10).expect("enough acks on channel 0").id;
    let position = history.iter().position(|(id, _)| *id == from).expect("acked id in history");
    let mut expected: Vec<String> = history[position + 1..].iter().map(|(id, _)| id.to_string()).collect();
    expected.push(new_ids[&channel].to_string());
    let mut client = WsClient::connect(&server.ws_url()).await;
    client.expect_event("pusher:connection_established").await;
    let replay = client.subscribe_since(&channel, &from.to_string()).await;
    assert_eq!(replay["recovered"], true, "{replay}");
    assert_eq!(replay["count"], expected.len(), "{replay}");
    assert_eq!(replay["head"], new_ids[&channel].to_string().as_str());
    for id in &expected {
        assert_eq!(client.next_app_event().await["id"], id.as_str());
    }
}

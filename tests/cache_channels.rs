//! Cache channels (`cache-`, `private-cache-`, ...): a new subscriber gets the channel's last
//! event right after `subscription_succeeded`, or `pusher:cache_miss` when there is none.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use reprise::config::Config;
use reprise_api::EventId;
use reprise_storage::{
    ChannelHead, CompactRule, Cursor, EventLog, LogKey, LogStats, NewEvent, ReadOutcome, SledLog, StorageError,
    StoredEvent,
};
use serde_json::json;
use support::{APP_ID, APP_KEY, APP_SECRET, RestClient, TestServer, WsClient, data_of};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SILENCE: Duration = Duration::from_millis(300);

/// With nothing published yet, `pusher:cache_miss` follows `subscription_succeeded` (pusher-js
/// fires its `cache_miss` callback so the app can fetch the state itself).
#[tokio::test]
async fn empty_cache_channel_sends_cache_miss_after_subscription_succeeded() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("cache-prices").await;
    let miss = client.recv().await;
    assert_eq!(miss["event"], "pusher:cache_miss", "{miss}");
    assert_eq!(miss["channel"], "cache-prices");
    client.expect_silence(SILENCE).await;

    // A plain channel has no cache and so no miss.
    client.subscribe("prices").await;
    client.expect_silence(SILENCE).await;
}

/// A subscriber arriving after a publish gets `subscription_succeeded`, then the last event
/// (only the last), with its event name and data unchanged; existing subscribers get it once.
#[tokio::test]
async fn new_subscriber_gets_the_last_event() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut early = server.client().await;
    early.subscribe("cache-prices").await;
    early.expect_event("pusher:cache_miss").await;
    rest.trigger("cache-prices", "price", r#"{"eur":1}"#).await;
    let id = rest.trigger_id("cache-prices", "price-updated", r#"{"eur":2}"#).await;
    assert_eq!(early.recv().await["data"], r#"{"eur":1}"#);
    assert_eq!(early.recv().await["data"], r#"{"eur":2}"#);

    let mut late = server.client().await;
    late.send_subscribe(json!({"channel":"cache-prices"})).await;
    let first = late.recv().await;
    assert_eq!(first["event"], "pusher_internal:subscription_succeeded", "{first}");
    let cached = late.recv().await;
    assert_eq!(cached["event"], "price-updated", "{cached}");
    assert_eq!(cached["channel"], "cache-prices");
    assert_eq!(cached["data"], r#"{"eur":2}"#);
    assert_eq!(cached["id"], id, "{cached}");
    late.expect_silence(SILENCE).await;
    early.expect_silence(SILENCE).await;
}

/// `private-cache-` channels are private: a subscribe without a valid signature is refused and
/// receives neither the cached event nor a miss.
#[tokio::test]
async fn private_cache_channel_requires_auth() {
    let server = TestServer::start().await;
    server.rest().trigger("private-cache-balance", "balance", "100").await;

    let mut intruder = server.client().await;
    intruder.send_subscribe(json!({"channel":"private-cache-balance"})).await;
    let refused = intruder.recv().await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(data_of(&refused)["status"], 401, "{refused}");
    intruder.expect_silence(SILENCE).await;

    let mut owner = server.client().await;
    owner.subscribe_private("private-cache-balance").await;
    let cached = owner.recv().await;
    assert_eq!(cached["event"], "balance", "{cached}");
    assert_eq!(cached["data"], "100");
}

/// `GET /channels/{name}?info=cache` returns the cached event (name and data), none before the
/// first publish; it works whether or not anyone is subscribed.
#[tokio::test]
async fn channel_info_returns_the_cached_event() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let path = rest.path("/channels/cache-prices");
    let (status, body) = rest.call("GET", &path, &[("info", "cache")], None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("cache").is_none(), "nothing cached yet: {body}");

    rest.trigger("cache-prices", "price", "1").await;
    rest.trigger("cache-prices", "price", "2").await;
    let (status, body) = rest.call("GET", &path, &[("info", "cache")], None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["occupied"], false, "{body}");
    assert_eq!(body["cache"], json!({"event":"price","data":"2"}), "{body}");
}

/// A log whose `flush` waits while the test holds it: a publish is then appended (visible to
/// readers) but not yet fanned out, the window every Sync publish has during its fsync.
struct GatedLog {
    inner: SledLog,
    held: Mutex<bool>,
    released: Condvar,
    appends: AtomicUsize,
}

impl GatedLog {
    fn hold(&self, hold: bool) {
        *self.held.lock().unwrap() = hold;
        self.released.notify_all();
    }
}

impl EventLog for GatedLog {
    fn append(&self, events: &[NewEvent]) -> Result<Vec<EventId>, StorageError> {
        let ids = self.inner.append(events)?;
        self.appends.fetch_add(events.len(), Ordering::SeqCst);
        Ok(ids)
    }
    fn flush(&self) -> Result<(), StorageError> {
        let mut held = self.held.lock().unwrap();
        while *held {
            held = self.released.wait(held).unwrap();
        }
        drop(held);
        self.inner.flush()
    }
    fn read(&self, key: &LogKey, cursor: Cursor, limit: usize) -> Result<ReadOutcome, StorageError> {
        self.inner.read(key, cursor, limit)
    }
    fn head(&self, key: &LogKey) -> Result<ChannelHead, StorageError> {
        self.inner.head(key)
    }
    fn compact(&self, key: &LogKey, rule: CompactRule) -> Result<u64, StorageError> {
        self.inner.compact(key, rule)
    }
    fn channels(&self, app: &str) -> Result<Vec<LogKey>, StorageError> {
        self.inner.channels(app)
    }
    fn stats(&self) -> Result<LogStats, StorageError> {
        self.inner.stats()
    }
    fn import(&self, key: &LogKey, mark: Option<EventId>, events: &[StoredEvent]) -> Result<(), StorageError> {
        self.inner.import(key, mark, events)
    }
}

/// A subscriber that arrives while a publish is being committed (appended, not yet fanned out)
/// must still end up with the newest event: the cached one it is sent is the previous event, so
/// the live copy of the new one must not be dropped as "already replayed".
#[tokio::test]
async fn subscriber_arriving_during_a_commit_still_gets_the_newest_event() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(GatedLog {
        inner: SledLog::open(&dir.path().join("log")).unwrap(),
        held: Mutex::new(false),
        released: Condvar::new(),
        appends: AtomicUsize::new(0),
    });
    let mut config = Config::default();
    config.server.host = "127.0.0.1".into();
    config.apps = vec![support::test_app()];
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let dyn_log: Arc<dyn EventLog> = log.clone();
    tokio::spawn(reprise::serve(listener, Arc::new(config), dyn_log, shutdown));
    let rest = RestClient {
        base: format!("http://{addr}"),
        app_id: APP_ID.into(),
        key: APP_KEY.into(),
        secret: APP_SECRET.into(),
    };
    let ws_url = format!("ws://{addr}/app/{APP_KEY}?protocol=7");
    let connect = || async {
        let mut client = WsClient::connect(&ws_url).await;
        let hello = client.expect_event("pusher:connection_established").await;
        client.socket_id = data_of(&hello)["socket_id"].as_str().unwrap().to_owned();
        client
    };

    rest.trigger("cache-prices", "price", "1").await;
    let mut early = connect().await;
    early.subscribe("cache-prices").await;
    assert_eq!(early.recv().await["data"], "1");

    log.hold(true);
    let publishing = tokio::spawn(async move { rest.trigger("cache-prices", "price", "2").await });
    for _ in 0..500 {
        if log.appends.load(Ordering::SeqCst) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(log.appends.load(Ordering::SeqCst), 2, "the second publish was never appended");

    let mut late = connect().await;
    late.subscribe("cache-prices").await;
    let cached = late.recv().await;
    assert_eq!(cached["event"], "price", "{cached}");
    log.hold(false);
    publishing.await.unwrap();
    assert_eq!(early.recv().await["data"], "2", "the control subscriber got the event");

    let mut newest = cached["data"].clone();
    while let Ok(frame) = tokio::time::timeout(SILENCE, late.next()).await {
        newest = frame.expect("connected")["data"].clone();
    }
    assert_eq!(newest, "2", "the late subscriber's last event is stale: it was sent {cached} and never event 2");
}

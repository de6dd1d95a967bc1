//! Test harness: a real server on an ephemeral port with its own data directory, a Pusher
//! WebSocket client and a signed REST client. Every read has a timeout, so a hang fails the test
//! instead of stalling CI.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod metrics;
pub mod process;
pub mod redis;
pub mod sse;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use reprise::config::{AppConfig, Config};
use reprise_api::signature;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long any single read waits before the test fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

pub const APP_ID: &str = "test-app";
pub const APP_KEY: &str = "test-key";
pub const APP_SECRET: &str = "test-secret";

pub fn test_app() -> AppConfig {
    AppConfig { id: APP_ID.into(), key: APP_KEY.into(), secret: APP_SECRET.into(), ..AppConfig::default() }
}

/// A server running in this process on 127.0.0.1:<ephemeral>.
pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Arc<Config>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), reprise::ServerError>>>,
    /// Keeps the data directory alive for restarts; removed when the server is dropped.
    pub data_dir: Arc<tempfile::TempDir>,
}

impl TestServer {
    /// A server with the one test app and default settings.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A server whose configuration `adjust` may change (apps, limits, durability...).
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = Config::default();
        config.server.host = "127.0.0.1".into();
        config.server.shutdown_grace_ms = 2000;
        config.apps = vec![test_app()];
        adjust(&mut config);
        Self::launch(config, data_dir).await
    }

    /// A server with the test app on a log the caller opened (for instance a failing double).
    pub async fn start_on_log(log: Arc<dyn reprise_storage::EventLog>) -> TestServer {
        Self::start_on_log_with(log, |_| {}).await
    }

    /// Like [`TestServer::start_on_log`], with a configuration `adjust` may change.
    pub async fn start_on_log_with(
        log: Arc<dyn reprise_storage::EventLog>,
        adjust: impl FnOnce(&mut Config),
    ) -> TestServer {
        let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = Config::default();
        config.server.host = "127.0.0.1".into();
        config.server.shutdown_grace_ms = 2000;
        config.apps = vec![test_app()];
        adjust(&mut config);
        Self::launch_with(config, data_dir, Some(log)).await
    }

    async fn launch(config: Config, data_dir: Arc<tempfile::TempDir>) -> TestServer {
        Self::launch_with(config, data_dir, None).await
    }

    async fn launch_with(
        mut config: Config,
        data_dir: Arc<tempfile::TempDir>,
        log: Option<Arc<dyn reprise_storage::EventLog>>,
    ) -> TestServer {
        config.server.data_dir = data_dir.path().join("log");
        let problems = config.problems();
        assert!(problems.is_empty(), "test config invalid: {problems:?}");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let task = match log {
            Some(log) => tokio::spawn(reprise::serve(listener, Arc::clone(&config), log, shutdown.clone())),
            None => tokio::spawn(reprise::run(listener, Arc::clone(&config), shutdown.clone())),
        };
        let server = TestServer { addr, config, shutdown, task: Some(task), data_dir };
        server.wait_until_up().await;
        server
    }

    async fn wait_until_up(&self) {
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = client.get(self.url(&format!("{}/up", self.config.server.path))).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("server did not come up");
    }

    /// Waits for the server to stop by itself (without asking it to) and returns what `run`
    /// returned.
    pub async fn stopped(&mut self) -> Result<(), reprise::ServerError> {
        let task = self.task.take().expect("server running");
        tokio::time::timeout(Duration::from_secs(20), task).await.expect("stopped in time").expect("server task")
    }

    /// Shuts down gracefully and returns what `run` returned.
    pub async fn stop(&mut self) -> Result<(), reprise::ServerError> {
        self.shutdown.cancel();
        let task = self.task.take().expect("server running");
        tokio::time::timeout(Duration::from_secs(20), task).await.expect("shutdown in time").expect("server task")
    }

    /// Stops this server and starts another on the same data directory (a new port).
    pub async fn restart(mut self) -> TestServer {
        self.stop().await.expect("clean shutdown");
        let config = (*self.config).clone();
        Self::launch(config, Arc::clone(&self.data_dir)).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, key: &str) -> String {
        format!("ws://{}/app/{}?protocol=7&client=js&version=8.4.0", self.addr, key)
    }

    /// A connected client that has received `connection_established`.
    pub async fn client(&self) -> WsClient {
        WsClient::established(&self.ws_url(APP_KEY)).await
    }

    pub fn rest(&self) -> RestClient {
        RestClient {
            base: format!("http://{}", self.addr),
            key: APP_KEY.into(),
            secret: APP_SECRET.into(),
            app_id: APP_ID.into(),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw Pusher-protocol client.
pub struct WsClient {
    pub stream: Stream,
    pub socket_id: String,
}

impl WsClient {
    /// A client at `url` that has received `connection_established` (its socket id is known).
    pub async fn established(url: &str) -> WsClient {
        let mut client = WsClient::connect(url).await;
        let hello = client.expect_event("pusher:connection_established").await;
        let data: Value = serde_json::from_str(hello["data"].as_str().expect("data is a string")).expect("json");
        client.socket_id = data["socket_id"].as_str().expect("socket_id").to_owned();
        client
    }

    pub async fn connect(url: &str) -> WsClient {
        let (stream, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connect");
        WsClient { stream, socket_id: String::new() }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.expect("send");
    }

    /// The next message: a JSON text frame, or `Err` with the close frame.
    pub async fn next(&mut self) -> Result<Value, Option<CloseFrame>> {
        loop {
            let message =
                tokio::time::timeout(READ_TIMEOUT, self.stream.next()).await.expect("timed out waiting for a frame");
            match message {
                Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).expect("server sent JSON")),
                Some(Ok(Message::Close(frame))) => return Err(frame),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// The next JSON frame; panics on close.
    pub async fn recv(&mut self) -> Value {
        match self.next().await {
            Ok(value) => value,
            Err(close) => panic!("connection closed: {close:?}"),
        }
    }

    /// Skips frames until one named `event` arrives (pings are skipped too).
    pub async fn expect_event(&mut self, event: &str) -> Value {
        loop {
            let frame = self.recv().await;
            if frame["event"] == event {
                return frame;
            }
        }
    }

    /// Like `expect_event`, waiting up to `within` in all (for events slower than one read).
    pub async fn expect_event_within(&mut self, event: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("no {event} within {within:?}"));
            if let Some(Ok(Message::Text(text))) = message {
                let frame: Value = serde_json::from_str(&text).expect("server sent JSON");
                if frame["event"] == event {
                    return frame;
                }
            } else if !matches!(message, Some(Ok(_))) {
                panic!("connection closed while waiting for {event}");
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.next().await {
                Ok(_) => continue,
                Err(Some(frame)) => return frame.code.into(),
                Err(None) => panic!("connection dropped without a close frame"),
            }
        }
    }

    /// Asserts nothing arrives within `wait` (for "must not receive" checks). A ping round trip
    /// first makes sure everything sent before now has been processed.
    pub async fn expect_silence(&mut self, wait: Duration) {
        self.send_json(json!({"event":"pusher:ping","data":{}})).await;
        let pong = self.recv().await;
        assert_eq!(pong["event"], "pusher:pong", "expected nothing but the pong, got {pong}");
        if let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(wait, self.stream.next()).await {
            panic!("expected silence, got {text}");
        }
    }

    /// Sends `pusher:subscribe` with the given data fields.
    pub async fn send_subscribe(&mut self, data: Value) {
        self.send_json(json!({"event":"pusher:subscribe","data":data})).await;
    }

    /// Subscribes to a public channel and waits for success.
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send_subscribe(json!({"channel": channel})).await;
        self.expect_subscribed(channel).await
    }

    /// Subscribes to a private channel with a valid signature.
    pub async fn subscribe_private(&mut self, channel: &str) -> Value {
        let auth = signature::socket_auth(APP_KEY, APP_SECRET, &self.socket_id, channel, None);
        self.send_subscribe(json!({"channel": channel, "auth": auth})).await;
        self.expect_subscribed(channel).await
    }

    /// Signs in (`pusher:signin`) with a valid signature of `user_data`; returns the answer.
    pub async fn sign_in(&mut self, user_data: &str) -> Value {
        let auth = signature::user_auth(APP_KEY, APP_SECRET, &self.socket_id, user_data);
        self.send_json(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})).await;
        self.recv().await
    }

    /// The next `pusher_internal:watchlist_events`, as (name, user ids) pairs.
    pub async fn next_watchlist_events(&mut self) -> Vec<(String, Vec<String>)> {
        watchlist_events(&self.expect_event("pusher_internal:watchlist_events").await)
    }

    /// Joins a presence channel as `user_id`.
    pub async fn subscribe_presence(&mut self, channel: &str, user_id: &str, user_info: Value) -> Value {
        self.send_presence_subscribe(channel, user_id, user_info, None).await;
        self.expect_subscribed(channel).await
    }

    /// Sends a signed presence subscribe as `user_id`, resuming after `since` if given.
    pub async fn send_presence_subscribe(
        &mut self,
        channel: &str,
        user_id: &str,
        user_info: Value,
        since: Option<&str>,
    ) {
        let channel_data = json!({"user_id": user_id, "user_info": user_info}).to_string();
        let auth = signature::socket_auth(APP_KEY, APP_SECRET, &self.socket_id, channel, Some(&channel_data));
        let mut data = json!({"channel": channel, "auth": auth, "channel_data": channel_data});
        if let Some(since) = since {
            data["since"] = json!(since);
        }
        self.send_subscribe(data).await;
    }

    /// Waits for `subscription_succeeded` on `channel` and returns its parsed `data`.
    pub async fn expect_subscribed(&mut self, channel: &str) -> Value {
        let frame = self.recv().await;
        assert_eq!(frame["event"], "pusher_internal:subscription_succeeded", "unexpected frame {frame}");
        assert_eq!(frame["channel"], channel);
        data_of(&frame)
    }
}

/// The parsed `data` of a server frame (a JSON string holding JSON, or plain text).
/// A `pusher_internal:watchlist_events` frame's events, as (name, user ids) pairs.
pub fn watchlist_events(frame: &Value) -> Vec<(String, Vec<String>)> {
    let data = data_of(frame);
    let events = data["events"].as_array().unwrap_or_else(|| panic!("events in {frame}"));
    let ids = |event: &Value| {
        event["user_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect()
    };
    events.iter().map(|event| (event["name"].as_str().unwrap().to_owned(), ids(event))).collect()
}

/// One watchlist event (name, user ids), to compare with [`watchlist_events`].
pub fn watch_event(name: &str, user_ids: &[&str]) -> (String, Vec<String>) {
    (name.to_owned(), user_ids.iter().map(|id| (*id).to_owned()).collect())
}

pub fn data_of(frame: &Value) -> Value {
    match frame["data"].as_str() {
        Some(text) => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())),
        None => frame["data"].clone(),
    }
}

/// A REST client that signs like the Pusher SDKs.
pub struct RestClient {
    pub base: String,
    pub app_id: String,
    pub key: String,
    pub secret: String,
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

impl RestClient {
    /// A signed request; returns status and JSON body.
    pub async fn call(&self, method: &str, path: &str, params: &[(&str, &str)], body: Option<&Value>) -> (u16, Value) {
        let body_bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let query = signature::sign_request(&self.key, &self.secret, method, path, params, &body_bytes, unix_now());
        self.raw(method, &format!("{path}?{query}"), body_bytes).await
    }

    /// An unsigned (or hand-signed) request.
    pub async fn raw(&self, method: &str, path_and_query: &str, body: Vec<u8>) -> (u16, Value) {
        let client = reqwest::Client::new();
        let url = format!("{}{}", self.base, path_and_query);
        let request = match method {
            "GET" => client.get(url),
            "POST" => client.post(url).header("content-type", "application/json").body(body),
            other => panic!("unsupported method {other}"),
        };
        let response = tokio::time::timeout(READ_TIMEOUT, request.send()).await.expect("REST timed out").expect("REST");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub fn path(&self, rest: &str) -> String {
        format!("/apps/{}{}", self.app_id, rest)
    }

    /// Publishes one event to one channel; asserts 200 and returns the response.
    pub async fn trigger(&self, channel: &str, event: &str, data: &str) -> Value {
        let body = json!({"name": event, "channel": channel, "data": data});
        let (status, response) = self.call("POST", &self.path("/events"), &[], Some(&body)).await;
        assert_eq!(status, 200, "trigger failed: {response}");
        response
    }

    /// The id the publish response assigned on `channel`.
    pub async fn trigger_id(&self, channel: &str, event: &str, data: &str) -> String {
        let response = self.trigger(channel, event, data).await;
        response["ids"][channel].as_str().expect("id in response").to_owned()
    }
}

/// A fresh, empty temporary directory path (for tests that manage their own data dir).
pub fn temp_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

// Replay, history and compaction helpers (used by replay.rs, history.rs, durability.rs, crash.rs).

/// Parses an event id the server sent (a ULID string in a JSON value); panics if it is not one.
pub fn event_id(value: &Value) -> reprise_api::EventId {
    let text = value.as_str().unwrap_or_else(|| panic!("expected an event id string, got {value}"));
    text.parse().unwrap_or_else(|_| panic!("{text:?} is not an event id"))
}

impl RestClient {
    /// Signed `GET /apps/{id}/channels/{channel}/events` with `params` (since, limit).
    pub async fn history(&self, channel: &str, params: &[(&str, &str)]) -> (u16, Value) {
        self.call("GET", &self.path(&format!("/channels/{channel}/events")), params, None).await
    }

    /// Every retained event of `channel`, paging with `limit=1000` from the oldest; asserts each
    /// page is 200 and returns the events and the first page's `recovered` (false once anything
    /// was compacted away).
    pub async fn history_all(&self, channel: &str) -> (Vec<Value>, bool) {
        let mut events: Vec<Value> = Vec::new();
        let mut since: Option<String> = None;
        let mut recovered: Option<bool> = None;
        loop {
            let mut params = vec![("limit", "1000")];
            if let Some(since) = &since {
                params.push(("since", since.as_str()));
            }
            let (status, page) = self.history(channel, &params).await;
            assert_eq!(status, 200, "history page failed: {page}");
            let batch = page["events"].as_array().expect("events array").clone();
            let first_recovered = *recovered.get_or_insert(page["recovered"].as_bool().expect("recovered"));
            if batch.is_empty() {
                return (events, first_recovered);
            }
            since = Some(batch.last().expect("non-empty")["id"].as_str().expect("id").to_owned());
            events.extend(batch);
        }
    }

    /// Signed `POST /apps/{id}/compact`.
    pub async fn compact(&self, body: Value) -> (u16, Value) {
        self.call("POST", &self.path("/compact"), &[], Some(&body)).await
    }

    /// Publishes `count` events named `event` on `channel` through `batch_events` (10 per call),
    /// with data `"{tag}-{i}"`; returns the ids in publish order.
    pub async fn publish_n(&self, channel: &str, event: &str, tag: &str, count: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(count);
        let mut next = 0;
        while next < count {
            let end = (next + 10).min(count);
            let batch: Vec<Value> =
                (next..end).map(|i| json!({"name": event, "channel": channel, "data": format!("{tag}-{i}")})).collect();
            let (status, response) =
                self.call("POST", &self.path("/batch_events"), &[], Some(&json!({"batch": batch}))).await;
            assert_eq!(status, 200, "batch publish failed: {response}");
            for item in response["batch"].as_array().expect("batch array") {
                ids.push(item["ids"][channel].as_str().expect("id per batch item").to_owned());
            }
            next = end;
        }
        ids
    }
}

impl WsClient {
    /// Subscribes to a public channel with `since` and returns the `replay` block of
    /// `subscription_succeeded`.
    pub async fn subscribe_since(&mut self, channel: &str, since: &str) -> Value {
        self.send_subscribe(json!({"channel": channel, "since": since})).await;
        self.expect_subscribed(channel).await["replay"].clone()
    }

    /// The next application event frame (skips `pusher:*` frames such as pings).
    pub async fn next_app_event(&mut self) -> Value {
        loop {
            let frame = self.recv().await;
            let name = frame["event"].as_str().unwrap_or_default();
            if !name.starts_with("pusher:") && !name.starts_with("pusher_internal:") {
                return frame;
            }
        }
    }
}

/// xorshift64*: a deterministic PRNG, so a failing run can be reproduced from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

//! Webhooks against a real receiver (axum on an ephemeral port): every event type, signed as
//! Pusher signs them; Pusher's delays (a reload sends nothing); retries until the receiver
//! recovers; 410 stops a target and only that one; a slow receiver does not delay fan-out; and
//! webhooks pending at a `kill -9` are delivered after the restart.

mod support;

use std::time::Duration;

use reprise::webhooks::config::WebhookConfig;
use reprise_api::webhook::WebhookEvent;
use serde_json::json;
use support::process::ServerProcess;
use support::webhooks::Receiver;
use support::{APP_ID, APP_KEY, APP_SECRET, READ_TIMEOUT, TestServer, WsClient};

/// Enough for a few retries (1 s, 2 s, 4 s with jitter) or a restart.
const RETRIES_WITHIN: Duration = Duration::from_secs(30);
/// Longer than Pusher's 3 s hold of departures, plus a batch window and slack.
const PAST_THE_LEAVE_DELAY: Duration = Duration::from_secs(15);

async fn server_for(receivers: &[&Receiver]) -> TestServer {
    let targets: Vec<WebhookConfig> = receivers.iter().map(|r| WebhookConfig::for_url(r.url())).collect();
    TestServer::start_with(move |config| config.apps[0].webhooks = targets).await
}

fn occupied(channel: &str) -> WebhookEvent {
    WebhookEvent::ChannelOccupied { channel: channel.into() }
}
fn vacated(channel: &str) -> WebhookEvent {
    WebhookEvent::ChannelVacated { channel: channel.into() }
}
fn cache_miss(channel: &str) -> WebhookEvent {
    WebhookEvent::CacheMiss { channel: channel.into() }
}

/// Subscribes to a cache channel that has no event yet: one `cache_miss` webhook.
async fn miss(client: &mut WsClient, channel: &str) {
    client.subscribe(channel).await;
    client.expect_event("pusher:cache_miss").await;
}

/// Every event type reaches the receiver with Pusher's fields, `X-Pusher-Key`, a valid
/// `X-Pusher-Signature` of the raw body and `Content-Type: application/json` (checked by
/// `verified()` on every request).
#[tokio::test]
async fn every_event_type_is_sent_signed_like_pusher() {
    let receiver = Receiver::start().await;
    let server = server_for(&[&receiver]).await;
    let mut alice = server.client().await;
    let mut bob = server.client().await;
    alice.subscribe_presence("presence-room", "alice", json!({"name": "Alice"})).await;
    bob.subscribe_presence("presence-room", "bob", json!({})).await;
    bob.send_json(json!({"event": "client-typing", "channel": "presence-room", "data": {"on": true}})).await;
    alice.expect_event("client-typing").await;
    alice.subscribe_private("private-chat").await;
    alice.send_json(json!({"event": "client-ping", "channel": "private-chat", "data": "hi"})).await;
    miss(&mut alice, "cache-scores").await;
    receiver
        .wait_for_events(&[
            occupied("presence-room"),
            WebhookEvent::MemberAdded { channel: "presence-room".into(), user_id: "alice".into() },
            WebhookEvent::MemberAdded { channel: "presence-room".into(), user_id: "bob".into() },
            WebhookEvent::ClientEvent {
                channel: "presence-room".into(),
                event: "client-typing".into(),
                data: r#"{"on":true}"#.into(),
                socket_id: bob.socket_id.clone(),
                user_id: Some("bob".into()),
            },
            WebhookEvent::ClientEvent {
                channel: "private-chat".into(),
                event: "client-ping".into(),
                data: "hi".into(),
                socket_id: alice.socket_id.clone(),
                user_id: None,
            },
            cache_miss("cache-scores"),
            WebhookEvent::SubscriptionCount { channel: "presence-room".into(), subscription_count: 2 },
        ])
        .await;
    drop(bob);
    let departures = [
        WebhookEvent::MemberRemoved { channel: "presence-room".into(), user_id: "bob".into() },
        WebhookEvent::SubscriptionCount { channel: "presence-room".into(), subscription_count: 1 },
    ];
    receiver.wait_for_events(&departures).await;
    alice.send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": "private-chat"}})).await;
    receiver
        .wait_for(PAST_THE_LEAVE_DELAY, "channel_vacated", |_| receiver_has(&receiver, &vacated("private-chat")))
        .await;

    let events = receiver.unique_events();
    let position = |event: &WebhookEvent| events.iter().position(|e| e == event).unwrap();
    assert!(position(&occupied("presence-room")) < position(&departures[0]), "in the order they happened");
    let ids: Vec<String> = receiver.requests().iter().map(|r| r.id()).collect();
    assert!(ids.iter().all(|id| id.len() == 26), "every request has a stable id: {ids:?}");
    for request in receiver.requests() {
        assert!(request.verified().events.len() <= 20, "Pusher's batch size");
    }
}

fn receiver_has(receiver: &Receiver, event: &WebhookEvent) -> bool {
    receiver.unique_events().contains(event)
}

/// A page reload (leave and join again within Pusher's 3 s) sends neither member_removed nor a
/// second member_added, nor vacated and occupied again.
#[tokio::test]
async fn a_reload_within_the_delay_sends_nothing() {
    let receiver = Receiver::start().await;
    let server = server_for(&[&receiver]).await;
    let mut first_tab = server.client().await;
    first_tab.subscribe_presence("presence-doc", "u1", json!({})).await;
    let added = WebhookEvent::MemberAdded { channel: "presence-doc".into(), user_id: "u1".into() };
    receiver.wait_for_events(&[occupied("presence-doc"), added.clone()]).await;
    drop(first_tab);
    let mut reloaded = server.client().await;
    reloaded.subscribe_presence("presence-doc", "u1", json!({})).await;
    // Past the delay, a marker event: anything the reload caused is queued before it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    miss(&mut reloaded, "cache-marker").await;
    receiver.wait_for_events(&[cache_miss("cache-marker")]).await;
    let events = receiver.unique_events();
    let count = |wanted: &WebhookEvent| events.iter().filter(|e| *e == wanted).count();
    assert_eq!(count(&added), 1, "{events:?}");
    assert_eq!(count(&occupied("presence-doc")), 1, "{events:?}");
    let departed = events
        .iter()
        .any(|e| matches!(e, WebhookEvent::MemberRemoved { .. }) || matches!(e, WebhookEvent::ChannelVacated { .. }));
    assert!(!departed, "{events:?}");
}

/// A receiver that answers 500 for a while gets every webhook once it answers 200: retried, in
/// order, each retry with the same id.
#[tokio::test]
async fn a_failing_receiver_gets_every_webhook_once_it_recovers() {
    let receiver = Receiver::start().await;
    receiver.fail_first(3, 500);
    let server = server_for(&[&receiver]).await;
    let mut client = server.client().await;
    let channels: Vec<String> = (0..5).map(|n| format!("cache-c{n}")).collect();
    for channel in &channels {
        miss(&mut client, channel).await;
        // One batch each: several webhooks queue up behind the failing first one.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let misses: Vec<WebhookEvent> = channels.iter().map(|c| cache_miss(c)).collect();
    receiver.wait_for_events_within(&misses, RETRIES_WITHIN).await;
    let requests = receiver.requests();
    assert!(requests.len() > 3, "three failed attempts, then the deliveries: {requests:#?}");
    assert!(requests[..3].iter().all(|r| r.id() == requests[0].id()), "a retry carries the same id");
    let delivered: Vec<WebhookEvent> =
        receiver.unique_events().into_iter().filter(|e| matches!(e, WebhookEvent::CacheMiss { .. })).collect();
    assert_eq!(delivered, misses, "in order, each once");
}

/// A target that answers 410 Gone is sent nothing more; another target of the app is not
/// affected.
#[tokio::test]
async fn gone_stops_that_target_only() {
    let (gone, healthy) = (Receiver::start().await, Receiver::start().await);
    gone.always(410);
    let server = server_for(&[&gone, &healthy]).await;
    let mut client = server.client().await;
    miss(&mut client, "cache-first").await;
    gone.wait_for(READ_TIMEOUT, "the first webhook", |requests| !requests.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    miss(&mut client, "cache-second").await;
    healthy.wait_for_events(&[cache_miss("cache-first"), cache_miss("cache-second")]).await;
    // The second was queued after the 410 was answered (300 ms later), and never sent to it.
    assert_eq!(gone.requests().len(), 1, "{:#?}", gone.requests());
}

/// A receiver that takes 10 s per request does not delay a publish's fan-out: the subscriber has
/// the event while the webhook of its own subscription is still being held by the receiver.
#[tokio::test]
async fn a_slow_receiver_does_not_delay_fan_out() {
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_secs(10));
    let server = server_for(&[&receiver]).await;
    let mut client = server.client().await;
    client.subscribe("news").await;
    receiver.wait_for(READ_TIMEOUT, "the occupied webhook", |requests| !requests.is_empty()).await;
    assert_eq!(receiver.in_flight(), 1);
    server.rest().trigger("news", "headline", "{}").await;
    let frame = client.expect_event("headline").await;
    assert_eq!(frame["channel"], "news");
    assert_eq!(receiver.answered(), 0, "the publish arrived while the webhook was still held");
}

/// A config file for the test app with one target at `url` (cache misses only).
fn write_config(dir: &tempfile::TempDir, url: &str) -> std::path::PathBuf {
    let path = dir.path().join("reprise.toml");
    let config = format!(
        "[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n\
         [[apps.webhooks]]\nurl = \"{url}\"\nevent_types = [\"cache_miss\"]\n"
    );
    std::fs::write(&path, config).unwrap();
    path
}

/// The real binary with one target (cache misses) whose receiver answers 503 for now, and a
/// connected client.
struct Binary {
    receiver: Receiver,
    dir: tempfile::TempDir,
    server: ServerProcess,
    client: WsClient,
}

impl Binary {
    async fn start() -> Binary {
        let receiver = Receiver::start().await;
        receiver.always(503);
        let dir = tempfile::tempdir().unwrap();
        write_config(&dir, &receiver.url());
        let server = Self::launch(&dir, "first.log").await;
        let client = WsClient::established(&server.ws_url()).await;
        Binary { receiver, dir, server, client }
    }

    /// Starts the binary (again) on the same data directory and config file.
    async fn launch(dir: &tempfile::TempDir, log: &str) -> ServerProcess {
        let config = dir.path().join("reprise.toml");
        let args = ["--config", config.to_str().unwrap()];
        ServerProcess::start(&dir.path().join("data"), dir.path().join(log), &args).await
    }
}

/// Webhooks queued when the server is killed (`kill -9`) are delivered after a restart on the
/// same data directory: they were on disk before they counted as sent.
#[tokio::test]
async fn webhooks_pending_at_kill_9_are_delivered_after_the_restart() {
    let Binary { receiver, dir, mut server, mut client } = Binary::start().await;
    let channels: Vec<String> = (0..3).map(|n| format!("cache-k{n}")).collect();
    for channel in &channels {
        miss(&mut client, channel).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every batch is queued once the last one was tried at least once... the first is enough to
    // know the queue is in use; wait for the batch window of the last one to pass.
    receiver.wait_for(READ_TIMEOUT, "a first attempt", |requests| !requests.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.kill_9();
    drop(client);

    receiver.always(0);
    let _restarted = Binary::launch(&dir, "second.log").await;
    let misses: Vec<WebhookEvent> = channels.iter().map(|c| cache_miss(c)).collect();
    receiver.wait_for_events_within(&misses, RETRIES_WITHIN).await;
    let delivered: Vec<WebhookEvent> = receiver.unique_events();
    assert_eq!(delivered, misses, "each once (by id), in order");
}

/// A clean shutdown queues what the batcher still held (departures in their 3 s hold included),
/// and the next start delivers it: stopping the server loses no webhook either.
#[tokio::test]
async fn a_clean_shutdown_queues_held_departures() {
    let receiver = Receiver::start().await;
    receiver.always(503);
    let server = server_for(&[&receiver]).await;
    let mut member = server.client().await;
    member.subscribe_presence("presence-bye", "u1", json!({})).await;
    receiver.wait_for(READ_TIMEOUT, "a first attempt", |requests| !requests.is_empty()).await;
    // The shutdown closes the socket: its departures are held when the batcher is told to stop.
    let restarted = server.restart().await;
    receiver.always(0);
    let departures =
        [WebhookEvent::MemberRemoved { channel: "presence-bye".into(), user_id: "u1".into() }, vacated("presence-bye")];
    receiver.wait_for_events_within(&departures, RETRIES_WITHIN).await;
    drop(restarted);
}

/// Webhooks pending for a target whose URL then changed are kept, and the start says so with
/// how many: an operator sees what is owed instead of losing it silently.
#[tokio::test]
async fn pending_webhooks_of_a_changed_url_are_kept_and_named_at_start_up() {
    let Binary { receiver, dir, mut server, mut client } = Binary::start().await;
    miss(&mut client, "cache-owed").await;
    receiver.wait_for(READ_TIMEOUT, "a first attempt", |requests| !requests.is_empty()).await;
    drop(client);
    server.stop();
    write_config(&dir, &format!("{}/moved", receiver.url()));
    let restarted = Binary::launch(&dir, "second.log").await;
    let log = restarted.stderr();
    assert!(log.contains("no longer configured") && log.contains("pending=1"), "{log}");
}

//! Client events (`client-*`, Echo's whisper): relayed to the channel's other members only, on
//! private and presence channels only, from subscribed sockets only, within the app's rate.

mod support;

use std::time::Duration;

use reprise::config::ClientEventsFrom;
use serde_json::{Value, json};
use support::{TestServer, WsClient, data_of};

const SILENCE: Duration = Duration::from_millis(300);

async fn whisper(client: &mut WsClient, channel: &str, event: &str, data: Value) {
    client.send_json(json!({"event": event, "channel": channel, "data": data})).await;
}

/// The code of the next frame, which must be a `pusher:error`.
async fn expect_error_code(client: &mut WsClient) -> Value {
    let frame = client.recv().await;
    assert_eq!(frame["event"], "pusher:error", "expected pusher:error, got {frame}");
    data_of(&frame)["code"].clone()
}

/// On a private channel a client event reaches the other subscribers and is never echoed back
/// to its sender (pusher-js would fire the sender's own handler twice).
#[tokio::test]
async fn client_event_on_private_channel_reaches_others_not_the_sender() {
    let server = TestServer::start().await;
    let channel = "private-chat";
    let mut sender = server.client().await;
    sender.subscribe_private(channel).await;
    let (mut a, mut b) = two_members(&server, channel).await;

    whisper(&mut sender, channel, "client-typing", json!({"who":"ann"})).await;
    for receiver in [&mut a, &mut b] {
        let frame = receiver.recv().await;
        assert_eq!(frame["event"], "client-typing", "{frame}");
        assert_eq!(frame["channel"], channel);
        assert_eq!(data_of(&frame), json!({"who":"ann"}));
    }
    sender.expect_silence(SILENCE).await;
}

/// On a presence channel the relayed event carries the sender's `user_id` (pusher-js passes it to
/// the handler as `metadata.user_id`).
#[tokio::test]
async fn client_event_on_presence_channel_carries_user_id() {
    let server = TestServer::start().await;
    let channel = "presence-room";
    let mut ann = server.client().await;
    ann.subscribe_presence(channel, "ann", json!({})).await;
    let mut bob = server.client().await;
    bob.subscribe_presence(channel, "bob", json!({})).await;
    ann.expect_event("pusher_internal:member_added").await;

    whisper(&mut bob, channel, "client-wave", json!({})).await;
    let frame = ann.recv().await;
    assert_eq!(frame["event"], "client-wave", "{frame}");
    assert_eq!(frame["user_id"], "bob", "{frame}");
    bob.expect_silence(SILENCE).await;
}

/// Client events on a public channel are refused with 4009 (anyone could otherwise inject
/// events into a channel nobody authorised) and nothing is relayed.
#[tokio::test]
async fn client_event_on_public_channel_is_refused() {
    let server = TestServer::start().await;
    let mut sender = server.client().await;
    sender.subscribe("lobby").await;
    let mut other = server.client().await;
    other.subscribe("lobby").await;
    whisper(&mut sender, "lobby", "client-spam", json!({})).await;
    assert_eq!(expect_error_code(&mut sender).await, 4009);
    other.expect_silence(SILENCE).await;
}

/// Pusher forbids client events on encrypted channels: the server cannot vouch for their payload.
#[tokio::test]
async fn client_event_on_encrypted_channel_is_refused() {
    let server = TestServer::start().await;
    let channel = "private-encrypted-vault";
    let (mut sender, mut other) = two_members(&server, channel).await;
    whisper(&mut sender, channel, "client-x", json!({})).await;
    assert_eq!(expect_error_code(&mut sender).await, 4009);
    other.expect_silence(SILENCE).await;
}

/// With the default `accept_client_events_from = members`, a socket that is not subscribed to the
/// channel cannot send client events to it.
#[tokio::test]
async fn client_event_from_a_socket_not_subscribed_is_refused() {
    let server = TestServer::start().await;
    let channel = "private-chat";
    let mut member = server.client().await;
    member.subscribe_private(channel).await;
    let mut outsider = server.client().await;
    whisper(&mut outsider, channel, "client-intrude", json!({})).await;
    assert_eq!(expect_error_code(&mut outsider).await, 4009);
    member.expect_silence(SILENCE).await;
}

/// `accept_client_events_from = all` (Reverb's option) lets any socket of the app send, subscribed
/// or not; the public-channel rule still holds.
#[tokio::test]
async fn client_events_from_all_accepts_unsubscribed_senders() {
    let server =
        TestServer::start_with(|config| config.apps[0].accept_client_events_from = ClientEventsFrom::All).await;
    let channel = "private-chat";
    let mut member = server.client().await;
    member.subscribe_private(channel).await;
    let mut outsider = server.client().await;
    whisper(&mut outsider, channel, "client-hello", json!({"n":1})).await;
    let frame = member.recv().await;
    assert_eq!(frame["event"], "client-hello", "{frame}");
    whisper(&mut outsider, "lobby", "client-hello", json!({})).await;
    assert_eq!(expect_error_code(&mut outsider).await, 4009);
}

/// `accept_client_events_from = none` disables client events entirely.
#[tokio::test]
async fn client_events_disabled_for_the_app_are_refused() {
    let server =
        TestServer::start_with(|config| config.apps[0].accept_client_events_from = ClientEventsFrom::None).await;
    let channel = "private-chat";
    let (mut sender, mut other) = two_members(&server, channel).await;
    whisper(&mut sender, channel, "client-typing", json!({})).await;
    assert_eq!(expect_error_code(&mut sender).await, 4009);
    other.expect_silence(SILENCE).await;
}

/// `client_events_per_sec`: a burst over the rate is refused with 4301 and not relayed.
#[tokio::test]
async fn client_events_over_the_rate_are_refused_with_4301() {
    let server = TestServer::start_with(|config| config.apps[0].client_events_per_sec = 2).await;
    let channel = "private-chat";
    let (mut sender, mut receiver) = two_members(&server, channel).await;

    for n in 0..5 {
        whisper(&mut sender, channel, "client-burst", json!({"n": n})).await;
    }
    sender.send_json(json!({"event":"pusher:ping","data":{}})).await;
    let mut refused = 0;
    loop {
        let frame = sender.recv().await;
        match frame["event"].as_str() {
            Some("pusher:pong") => break,
            Some("pusher:error") => {
                assert_eq!(data_of(&frame)["code"], 4301, "{frame}");
                refused += 1;
            }
            _ => panic!("unexpected frame {frame}"),
        }
    }
    // Everything the burst relayed is already queued for the receiver: drain it.
    let mut delivered = 0;
    while let Ok(frame) = tokio::time::timeout(SILENCE, receiver.next()).await {
        let frame = frame.expect("receiver stays connected");
        assert_eq!(frame["event"], "client-burst", "{frame}");
        delivered += 1;
    }
    assert!(refused >= 1, "no event was refused");
    assert!((1..=3).contains(&delivered), "{delivered} of 5 delivered at 2/s");
    assert_eq!(refused + delivered, 5, "every event is either relayed or refused");
}

/// Relayed `data` is a JSON string, like every server frame's: an object is encoded, a string is
/// passed through unchanged (pusher-js parses it back).
#[tokio::test]
async fn relayed_data_is_a_json_string() {
    let server = TestServer::start().await;
    let channel = "private-chat";
    let (mut sender, mut receiver) = two_members(&server, channel).await;

    whisper(&mut sender, channel, "client-obj", json!({"a":[1,2],"b":"é"})).await;
    let frame = receiver.recv().await;
    let text = frame["data"].as_str().unwrap_or_else(|| panic!("data is not a string: {frame}"));
    assert_eq!(serde_json::from_str::<Value>(text).unwrap(), json!({"a":[1,2],"b":"é"}));

    whisper(&mut sender, channel, "client-text", json!("just text")).await;
    let frame = receiver.recv().await;
    assert_eq!(frame["data"], "just text", "{frame}");
}

/// `log_client_events = true`: client events are still relayed to the others only, and are also
/// logged (with an id, readable through the history API) like published events.
#[tokio::test]
async fn logged_client_events_are_relayed_and_kept() {
    let server = TestServer::start_with(|config| config.apps[0].log_client_events = true).await;
    let channel = "presence-room";
    let mut ann = server.client().await;
    ann.subscribe_presence(channel, "ann", json!({})).await;
    let mut bob = server.client().await;
    bob.subscribe_presence(channel, "bob", json!({})).await;
    ann.expect_event("pusher_internal:member_added").await;

    whisper(&mut bob, channel, "client-note", json!({"text":"hi"})).await;
    let frame = ann.recv().await;
    assert_eq!(frame["event"], "client-note", "{frame}");
    assert_eq!(frame["user_id"], "bob", "{frame}");
    let id = frame["id"].as_str().unwrap_or_else(|| panic!("a logged event carries its id: {frame}")).to_owned();
    // The sender is not sent its own event, only the marker that moves its cursor past it.
    let marker = bob.recv().await;
    assert_eq!(marker["event"], "pusher_internal:skipped", "{marker}");
    assert_eq!(marker["id"], id.as_str(), "{marker}");
    bob.expect_silence(SILENCE).await;

    let rest = server.rest();
    let (status, history) = rest.call("GET", &rest.path(&format!("/channels/{channel}/events")), &[], None).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["events"][0]["id"], id, "{history}");
    assert_eq!(history["events"][0]["data"], r#"{"text":"hi"}"#, "{history}");
    assert_eq!(history["events"][0]["user_id"], "bob", "{history}");

    // A member resuming from before the event gets it replayed as it was relayed, sender included.
    let mut carl = server.client().await;
    let before_everything = reprise_api::EventId::new(0, 0).to_string();
    carl.send_presence_subscribe(channel, "carl", json!({}), Some(&before_everything)).await;
    let replay = carl.expect_subscribed(channel).await["replay"].clone();
    assert_eq!((replay["recovered"].clone(), replay["count"].clone()), (json!(true), json!(1)), "{replay}");
    let replayed = carl.recv().await;
    assert_eq!(replayed, frame, "the replayed frame is the live one");
}

/// Two sockets subscribed (with valid signatures) to the private `channel`.
async fn two_members(server: &TestServer, channel: &str) -> (WsClient, WsClient) {
    let mut first = server.client().await;
    first.subscribe_private(channel).await;
    let mut second = server.client().await;
    second.subscribe_private(channel).await;
    (first, second)
}

//! Presence channels as pusher-js and Laravel Echo's `join()` use them: the roster on subscribe,
//! `member_added`/`member_removed` once per user however many tabs that user has open, and
//! `channel_data` that must be signed for this socket.

mod support;

use std::time::Duration;

use reprise_api::signature;
use serde_json::{Value, json};
use support::{APP_KEY, APP_SECRET, TestServer, WsClient, data_of};

const SILENCE: Duration = Duration::from_millis(300);
const ROOM: &str = "presence-room";

/// A user id as text, whether the server sent it as a JSON string or number.
fn id_text(id: &Value) -> String {
    match id {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("user id is neither a string nor a number: {other}"),
    }
}

/// Joins `channel` with a raw `channel_data` document, correctly signed.
async fn join_raw(client: &mut WsClient, channel: &str, channel_data: &str) {
    let auth = signature::socket_auth(APP_KEY, APP_SECRET, &client.socket_id, channel, Some(channel_data));
    client.send_subscribe(json!({"channel": channel, "auth": auth, "channel_data": channel_data})).await;
}

/// The parsed data of the next frame, which must be `event` on `channel`.
async fn expect_member_event(client: &mut WsClient, event: &str) -> Value {
    let frame = client.recv().await;
    assert_eq!(frame["event"], event, "expected {event}, got {frame}");
    assert_eq!(frame["channel"], ROOM);
    data_of(&frame)
}

/// Closes a client's socket the way a browser closing a tab does.
async fn disconnect(mut client: WsClient) {
    client.stream.close(None).await.unwrap();
    while client.next().await.is_ok() {}
}

/// `subscription_succeeded` on a presence channel carries pusher-js's roster:
/// `{"presence":{"ids":[...],"hash":{id: info},"count":n}}`, including the joiner itself.
#[tokio::test]
async fn subscription_succeeded_carries_the_roster() {
    let server = TestServer::start().await;
    let mut ann = server.client().await;
    let first = ann.subscribe_presence(ROOM, "ann", json!({"name":"Ann"})).await;
    assert_eq!(first["presence"]["count"], 1, "{first}");
    assert_eq!(first["presence"]["ids"], json!(["ann"]), "{first}");

    let mut bob = server.client().await;
    let data = bob.subscribe_presence(ROOM, "bob", json!({"name":"Bob"})).await;
    let presence = &data["presence"];
    assert_eq!(presence["count"], 2, "{data}");
    let mut ids: Vec<String> = presence["ids"].as_array().expect("ids is an array").iter().map(id_text).collect();
    ids.sort();
    assert_eq!(ids, ["ann", "bob"]);
    assert_eq!(presence["hash"]["ann"], json!({"name":"Ann"}), "{data}");
    assert_eq!(presence["hash"]["bob"], json!({"name":"Bob"}), "{data}");
}

/// A user who opens a second tab is announced once: the others get one `member_added` (with the
/// user's info), not one per socket; the joiner is not told about itself.
#[tokio::test]
async fn member_added_once_per_user() {
    let server = TestServer::start().await;
    let mut watcher = server.client().await;
    watcher.subscribe_presence(ROOM, "watcher", json!({})).await;

    let mut tab1 = server.client().await;
    tab1.subscribe_presence(ROOM, "ann", json!({"name":"Ann"})).await;
    let added = expect_member_event(&mut watcher, "pusher_internal:member_added").await;
    assert_eq!(added["user_id"], "ann", "{added}");
    assert_eq!(added["user_info"], json!({"name":"Ann"}), "{added}");

    let mut tab2 = server.client().await;
    let roster = tab2.subscribe_presence(ROOM, "ann", json!({"name":"Ann"})).await;
    assert_eq!(roster["presence"]["count"], 2, "two users, whatever the number of sockets: {roster}");
    watcher.expect_silence(SILENCE).await;
    tab1.expect_silence(SILENCE).await;
}

/// `member_removed` comes only when the user's last socket leaves, whether the sockets leave by
/// `pusher:unsubscribe` or by disconnecting.
#[tokio::test]
async fn member_removed_only_when_the_last_socket_leaves() {
    let server = TestServer::start().await;
    let mut watcher = server.client().await;
    watcher.subscribe_presence(ROOM, "watcher", json!({})).await;
    let mut tab1 = server.client().await;
    tab1.subscribe_presence(ROOM, "ann", json!({})).await;
    let mut tab2 = server.client().await;
    tab2.subscribe_presence(ROOM, "ann", json!({})).await;
    expect_member_event(&mut watcher, "pusher_internal:member_added").await;

    tab1.send_json(json!({"event":"pusher:unsubscribe","data":{"channel":ROOM}})).await;
    tab1.expect_silence(SILENCE).await; // the unsubscribe has been handled
    watcher.expect_silence(SILENCE).await;

    disconnect(tab2).await;
    let removed = expect_member_event(&mut watcher, "pusher_internal:member_removed").await;
    assert_eq!(removed["user_id"], "ann", "{removed}");

    // And the other way round: the first tab disconnects, the last one unsubscribes.
    let mut tab3 = server.client().await;
    tab3.subscribe_presence(ROOM, "bob", json!({})).await;
    let mut tab4 = server.client().await;
    tab4.subscribe_presence(ROOM, "bob", json!({})).await;
    expect_member_event(&mut watcher, "pusher_internal:member_added").await;
    disconnect(tab3).await;
    watcher.expect_silence(SILENCE).await;
    tab4.send_json(json!({"event":"pusher:unsubscribe","data":{"channel":ROOM}})).await;
    let removed = expect_member_event(&mut watcher, "pusher_internal:member_removed").await;
    assert_eq!(removed["user_id"], "bob", "{removed}");
}

/// Laravel signs `channel_data` with the user's integer key (`{"user_id":42}`): it is accepted,
/// and `42` and `"42"` are the same member.
#[tokio::test]
async fn numeric_user_id_works_and_equals_its_string_form() {
    let server = TestServer::start().await;
    let mut watcher = server.client().await;
    watcher.subscribe_presence(ROOM, "watcher", json!({})).await;

    let mut numeric = server.client().await;
    join_raw(&mut numeric, ROOM, r#"{"user_id":42,"user_info":{"name":"Ann"}}"#).await;
    let data = numeric.expect_subscribed(ROOM).await;
    let ids: Vec<String> = data["presence"]["ids"].as_array().unwrap().iter().map(id_text).collect();
    assert!(ids.contains(&"42".to_owned()), "{data}");
    let added = expect_member_event(&mut watcher, "pusher_internal:member_added").await;
    assert_eq!(id_text(&added["user_id"]), "42", "{added}");

    let mut string = server.client().await;
    join_raw(&mut string, ROOM, r#"{"user_id":"42"}"#).await;
    let data = string.expect_subscribed(ROOM).await;
    assert_eq!(data["presence"]["count"], 2, "42 and \"42\" must be one member: {data}");
    watcher.expect_silence(SILENCE).await;
}

/// A presence subscribe without `channel_data` is refused: there is no member to add.
#[tokio::test]
async fn presence_without_channel_data_is_refused() {
    let server = TestServer::start().await;
    let mut watcher = server.client().await;
    watcher.subscribe_presence(ROOM, "watcher", json!({})).await;
    let mut client = server.client().await;
    let auth = signature::socket_auth(APP_KEY, APP_SECRET, &client.socket_id, ROOM, None);
    client.send_subscribe(json!({"channel": ROOM, "auth": auth})).await;
    let frame = client.recv().await;
    assert_eq!(frame["event"], "pusher:subscription_error", "{frame}");
    assert_eq!(frame["channel"], ROOM);
    watcher.expect_silence(SILENCE).await;
}

/// The signature covers `channel_data`: a client cannot join as someone else by swapping the
/// `user_id` in a signature issued for its own.
#[tokio::test]
async fn forged_channel_data_is_refused() {
    let server = TestServer::start().await;
    let mut watcher = server.client().await;
    watcher.subscribe_presence(ROOM, "watcher", json!({})).await;
    let mut mallory = server.client().await;
    let signed_for = r#"{"user_id":"mallory"}"#;
    let auth = signature::socket_auth(APP_KEY, APP_SECRET, &mallory.socket_id, ROOM, Some(signed_for));
    let claimed = r#"{"user_id":"admin"}"#;
    mallory.send_subscribe(json!({"channel": ROOM, "auth": auth, "channel_data": claimed})).await;
    let frame = mallory.recv().await;
    assert_eq!(frame["event"], "pusher:subscription_error", "{frame}");
    let data = data_of(&frame);
    assert_eq!(data["type"], "AuthError", "{data}");
    assert_eq!(data["status"], 401, "{data}");
    watcher.expect_silence(SILENCE).await;

    let (status, users) =
        server.rest().call("GET", &server.rest().path(&format!("/channels/{ROOM}/users")), &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(users, json!({"users":[{"id":"watcher"}]}));
}

/// A socket that sends `pusher:subscribe` again for a presence channel it is on gets the roster
/// again (pusher-js reads `presence.hash` from every `subscription_succeeded`), and nobody sees
/// a second `member_added`.
#[tokio::test]
async fn subscribing_twice_keeps_one_membership_and_repeats_the_roster() {
    let server = TestServer::start().await;
    let mut watcher = server.client().await;
    watcher.subscribe_presence("presence-twice", "w", json!({})).await;
    let mut ann = server.client().await;
    ann.subscribe_presence("presence-twice", "ann", json!({"name":"Ann"})).await;
    watcher.expect_event("pusher_internal:member_added").await;
    let again = ann.subscribe_presence("presence-twice", "ann", json!({"name":"Ann"})).await;
    assert_eq!(again["presence"]["count"], 2, "{again}");
    assert_eq!(again["presence"]["hash"]["ann"], json!({"name":"Ann"}), "{again}");
    watcher.expect_silence(Duration::from_millis(200)).await;
}

/// The next frame, asserted to be a `LimitReached` subscription error on `ROOM` with `status`.
async fn expect_limit_reached(client: &mut WsClient, status: u16) {
    let frame = client.recv().await;
    assert_eq!(frame["event"], "pusher:subscription_error", "{frame}");
    assert_eq!(frame["channel"], ROOM, "{frame}");
    let data = data_of(&frame);
    assert_eq!(data["type"], "LimitReached", "{frame}");
    assert_eq!(data["status"], status, "{frame}");
}

/// Pusher's limit of 100 members per presence channel (issue 11: the roster had no cap, so 50
/// members of 9 KB each handed every joiner a 451 KB frame). The 101st user is refused with a
/// `LimitReached` subscription error; another tab of a member still joins; once a member leaves,
/// the refused user gets in.
#[tokio::test]
async fn the_101st_member_of_a_presence_channel_is_refused() {
    let server = TestServer::start().await;
    let mut members = Vec::new();
    for i in 0..100 {
        let mut client = server.client().await;
        client.subscribe_presence(ROOM, &format!("user-{i}"), json!({"n": i})).await;
        members.push(client);
    }
    let mut late = server.client().await;
    late.send_presence_subscribe(ROOM, "user-100", json!({}), None).await;
    expect_limit_reached(&mut late, 403).await;
    assert_eq!(
        server.rest().call("GET", &server.rest().path(&format!("/channels/{ROOM}/users")), &[], None).await.1["users"]
            .as_array()
            .unwrap()
            .len(),
        100
    );

    let mut second_tab = server.client().await;
    let roster = second_tab.subscribe_presence(ROOM, "user-0", json!({"n": 0})).await;
    assert_eq!(roster["presence"]["count"], 100);

    members.pop(); // user-99 leaves
    members[0].expect_event("pusher_internal:member_removed").await;
    let roster = late.subscribe_presence(ROOM, "user-100", json!({})).await;
    assert_eq!(roster["presence"]["count"], 100);
}

/// Pusher's limit of 1 KB of `user_info` per presence member: the issue's 9 KB member is refused
/// (`LimitReached`, 413) and never reaches the roster; 1 KB of it is accepted.
#[tokio::test]
async fn a_presence_member_with_more_than_1_kb_of_user_info_is_refused() {
    let server = TestServer::start().await;
    let mut big = server.client().await;
    big.send_presence_subscribe(ROOM, "big", json!({"bio": "x".repeat(9 * 1024)}), None).await;
    expect_limit_reached(&mut big, 413).await;

    let mut fits = server.client().await;
    let info = json!({"bio": "x".repeat(1024 - r#"{"bio":""}"#.len())});
    assert_eq!(info.to_string().len(), 1024);
    let roster = fits.subscribe_presence(ROOM, "fits", info).await;
    assert_eq!(roster["presence"]["ids"], json!(["fits"]), "the refused member is not in the roster");
}

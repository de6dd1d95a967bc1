//! User authentication (`pusher.signin()`): a signed `user_data` names the socket's user, and
//! `terminate_connections` reaches that user's sockets.

mod support;

use reprise_api::signature;
use serde_json::json;
use support::{APP_KEY, APP_SECRET, TestServer, WsClient, data_of, watch_event};

async fn sign_in(client: &mut WsClient, user_data: &str, auth: &str) -> serde_json::Value {
    client.send_json(json!({"event":"pusher:signin","data":{"auth": auth, "user_data": user_data}})).await;
    client.recv().await
}

fn valid_auth(client: &WsClient, user_data: &str) -> String {
    signature::user_auth(APP_KEY, APP_SECRET, &client.socket_id, user_data)
}

/// A valid signin is answered `pusher:signin_success` with the user data (what pusher-js reads),
/// and `terminate_connections` then closes that user's socket with 4200, and no other.
#[tokio::test]
async fn signed_in_users_can_be_terminated() {
    let server = TestServer::start().await;
    let mut ann = server.client().await;
    let ann_data = r#"{"id":"ann","user_info":{"name":"Ann"}}"#;
    let auth = valid_auth(&ann, ann_data);
    let success = sign_in(&mut ann, ann_data, &auth).await;
    assert_eq!(success["event"], "pusher:signin_success", "{success}");
    assert_eq!(data_of(&success), json!({"user_data": ann_data}));

    let mut bob = server.client().await;
    let bob_data = r#"{"id":"bob"}"#;
    let auth = valid_auth(&bob, bob_data);
    assert_eq!(sign_in(&mut bob, bob_data, &auth).await["event"], "pusher:signin_success");

    let rest = server.rest();
    let (status, body) = rest.call("POST", &rest.path("/users/ann/terminate_connections"), &[], Some(&json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ann.expect_close().await, 4200);
    bob.send_json(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(bob.expect_event("pusher:pong").await["event"], "pusher:pong", "bob is still connected");
}

/// A signin signed for another socket, or with the wrong secret, or without a user id, is
/// refused with `pusher:error` 4009; the socket stays usable and is not signed in.
#[tokio::test]
async fn forged_or_invalid_signins_are_refused() {
    let server = TestServer::start().await;
    let mut mallory = server.client().await;
    let other = server.client().await;
    let user_data = r#"{"id":"ann"}"#;
    let cases = [
        (
            "signed for another socket",
            user_data,
            signature::user_auth(APP_KEY, APP_SECRET, &other.socket_id, user_data),
        ),
        ("wrong secret", user_data, signature::user_auth(APP_KEY, "guess", &mallory.socket_id, user_data)),
        ("no user id", r#"{"name":"x"}"#, valid_auth(&mallory, r#"{"name":"x"}"#)),
    ];
    for (case, data, auth) in cases {
        let refused = sign_in(&mut mallory, data, &auth).await;
        assert_eq!(refused["event"], "pusher:error", "{case}: {refused}");
        assert_eq!(data_of(&refused)["code"], 4009, "{case}: {refused}");
    }
    // Not signed in as ann: terminating ann leaves this socket open.
    let rest = server.rest();
    rest.call("POST", &rest.path("/users/ann/terminate_connections"), &[], Some(&json!({}))).await;
    mallory.send_json(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(mallory.expect_event("pusher:pong").await["event"], "pusher:pong");
}

/// After a signin, the socket may subscribe to its own `#server-to-user-{id}` channel (pusher-js
/// does so itself) and receives what the backend sends that user (`sendToUser` publishes there);
/// another socket may not subscribe to it.
#[tokio::test]
async fn a_signed_in_user_receives_events_sent_to_it() {
    let server = TestServer::start().await;
    let mut ann = server.client().await;
    let user_data = r#"{"id":"ann"}"#;
    let auth = valid_auth(&ann, user_data);
    assert_eq!(sign_in(&mut ann, user_data, &auth).await["event"], "pusher:signin_success");
    ann.subscribe("#server-to-user-ann").await;

    let mut bob = server.client().await;
    bob.send_subscribe(json!({"channel": "#server-to-user-ann"})).await;
    let refused = bob.recv().await;
    assert_eq!(refused["event"], "pusher:subscription_error", "{refused}");
    assert_eq!(data_of(&refused)["status"], 403, "{refused}");

    server.rest().trigger("#server-to-user-ann", "notice", r#"{"text":"hi"}"#).await;
    let event = ann.expect_event("notice").await;
    assert_eq!(event["channel"], "#server-to-user-ann");
    assert_eq!(event["data"], r#"{"text":"hi"}"#);
    bob.expect_silence(std::time::Duration::from_millis(200)).await;
}

/// A socket signed in as ann and subscribed to `#server-to-user-ann` that signs in again as bob
/// no longer receives ann's events (it used to keep her channel): the second sign-in leaves it.
/// It can subscribe to bob's channel, and signing in again as bob keeps it.
#[tokio::test]
async fn signing_in_as_another_user_leaves_the_previous_users_channel() {
    let server = TestServer::start().await;
    let mut socket = server.client().await;
    let (ann, bob) = (r#"{"id":"ann"}"#, r#"{"id":"bob"}"#);
    let auth = valid_auth(&socket, ann);
    assert_eq!(sign_in(&mut socket, ann, &auth).await["event"], "pusher:signin_success");
    socket.subscribe("#server-to-user-ann").await;

    let auth = valid_auth(&socket, bob);
    assert_eq!(sign_in(&mut socket, bob, &auth).await["event"], "pusher:signin_success");
    server.rest().trigger("#server-to-user-ann", "notice", "for ann").await;
    socket.expect_silence(std::time::Duration::from_millis(200)).await;

    socket.subscribe("#server-to-user-bob").await;
    assert_eq!(sign_in(&mut socket, bob, &auth).await["event"], "pusher:signin_success");
    server.rest().trigger("#server-to-user-bob", "notice", "for bob").await;
    assert_eq!(socket.expect_event("notice").await["data"], "for bob");
}

/// Watchlists (Pusher's online status): a socket that signs in with `watchlist` gets the status
/// of those users right after `signin_success`, then `online` when a watched user's first socket
/// signs in and `offline` when their last one goes; a second socket of the same user changes
/// nothing.
#[tokio::test]
async fn a_watchlist_hears_users_come_online_and_go_offline() {
    let server = TestServer::start().await;
    let mut carol = server.client().await;
    assert_eq!(carol.sign_in(r#"{"id":"carol"}"#).await["event"], "pusher:signin_success");
    let mut ann = server.client().await;
    let success = ann.sign_in(r#"{"id":"ann","watchlist":["bob","carol"]}"#).await;
    assert_eq!(success["event"], "pusher:signin_success", "the success comes first: {success}");
    assert_eq!(
        ann.next_watchlist_events().await,
        vec![watch_event("online", &["carol"]), watch_event("offline", &["bob"])]
    );

    let mut bob = server.client().await;
    bob.sign_in(r#"{"id":"bob"}"#).await;
    assert_eq!(ann.next_watchlist_events().await, vec![watch_event("online", &["bob"])]);
    let mut bob_tab = server.client().await;
    bob_tab.sign_in(r#"{"id":"bob"}"#).await;
    drop(bob);
    ann.expect_silence(std::time::Duration::from_millis(300)).await;
    drop(bob_tab);
    assert_eq!(ann.next_watchlist_events().await, vec![watch_event("offline", &["bob"])]);
    drop(carol);
    assert_eq!(ann.next_watchlist_events().await, vec![watch_event("offline", &["carol"])]);
}

/// Pusher's limit: a watchlist of more than 100 user ids is refused with 4009 and a message
/// that says so; the socket is not signed in (no `signin_success`, not terminated as the user).
#[tokio::test]
async fn a_watchlist_over_100_users_is_refused() {
    let server = TestServer::start().await;
    let mut socket = server.client().await;
    let ids: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    let refused = socket.sign_in(&json!({"id": "ann", "watchlist": ids}).to_string()).await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(data_of(&refused)["code"], 4009);
    let message = data_of(&refused)["message"].as_str().unwrap().to_owned();
    assert!(message.contains("101") && message.contains("100"), "{message}");
    let rest = server.rest();
    rest.call("POST", &rest.path("/users/ann/terminate_connections"), &[], Some(&json!({}))).await;
    socket.send_json(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(socket.expect_event("pusher:pong").await["event"], "pusher:pong");

    let hundred = json!({"id": "ann", "watchlist": &ids[..100]}).to_string();
    assert_eq!(socket.sign_in(&hundred).await["event"], "pusher:signin_success");
    let status = socket.next_watchlist_events().await;
    assert_eq!(status, vec![("offline".to_owned(), ids[..100].to_vec())]);
}

//! The Pusher HTTP API as Laravel's broadcaster and the Pusher server SDKs call it: publishing
//! (`events`, `batch_events`), its limits and signatures, channel queries and
//! `terminate_connections`. Every error answer is JSON `{"error": "..."}`.

mod support;

use std::time::Duration;

use reprise_api::{EventId, signature};
use serde_json::{Value, json};
use support::process::ServerProcess;
use support::{APP_ID, APP_KEY, APP_SECRET, RestClient, TestServer, WsClient, unix_now};

const SILENCE: Duration = Duration::from_millis(300);

/// Sends `body` (any bytes) signed for `path`, with `timestamp` as the signing time.
async fn signed_bytes(rest: &RestClient, method: &str, path: &str, body: &[u8], timestamp: u64) -> (u16, Value) {
    let query = signature::sign_request(&rest.key, &rest.secret, method, path, &[], body, timestamp);
    rest.raw(method, &format!("{path}?{query}"), body.to_vec()).await
}

/// Asserts an error answer: the status, and a JSON body with a non-empty `error` string.
fn assert_error(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "body: {body}");
    let error = body["error"].as_str().unwrap_or_else(|| panic!("error body is not JSON with \"error\": {body}"));
    assert!(!error.is_empty(), "{body}");
}

/// Asserts `id` is an event id: a 26-character ULID string.
fn assert_event_id(id: &Value) -> EventId {
    let text = id.as_str().unwrap_or_else(|| panic!("id is not a string: {id}"));
    assert_eq!(text.len(), 26, "{text}");
    text.parse().unwrap_or_else(|_| panic!("{text} is not a ULID"))
}

async fn trigger_body(rest: &RestClient, body: &Value) -> (u16, Value) {
    rest.call("POST", &rest.path("/events"), &[], Some(body)).await
}

async fn get(rest: &RestClient, path: &str, params: &[(&str, &str)]) -> (u16, Value) {
    rest.call("GET", &rest.path(path), params, None).await
}

/// `POST /events` with `channel` or `channels` reaches every named channel; the answer is 200
/// JSON with the id each channel logged the event under, the same id subscribers see.
#[tokio::test]
async fn trigger_to_one_and_several_channels_is_delivered_with_ids() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut clients = Vec::new();
    for channel in ["a", "b", "c"] {
        let mut client = server.client().await;
        client.subscribe(channel).await;
        clients.push(client);
    }

    let (status, response) = trigger_body(&rest, &json!({"name":"one","channel":"a","data":"1"})).await;
    assert_eq!(status, 200, "{response}");
    let id = assert_event_id(&response["ids"]["a"]);
    let frame = clients[0].expect_event("one").await;
    assert_eq!((frame["channel"].as_str(), frame["data"].as_str()), (Some("a"), Some("1")));
    assert_eq!(frame["id"], id.to_string());

    let (status, response) = trigger_body(&rest, &json!({"name":"many","channels":["b","c"],"data":"2"})).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["ids"].as_object().unwrap().len(), 2, "{response}");
    for (client, channel) in clients[1..].iter_mut().zip(["b", "c"]) {
        let id = assert_event_id(&response["ids"][channel]);
        let frame = client.expect_event("many").await;
        assert_eq!(frame["channel"], channel);
        assert_eq!(frame["data"], "2");
        assert_eq!(frame["id"], id.to_string());
    }
    clients[0].expect_silence(SILENCE).await;
}

/// `socket_id` ("toOthers" in Laravel) excludes that one socket from the fan-out. The excluded
/// socket gets only `pusher_internal:skipped` with the event's id, so a later resume does not
/// replay the event to it.
#[tokio::test]
async fn socket_id_excludes_that_socket() {
    let server = TestServer::start().await;
    let mut sender = server.client().await;
    sender.subscribe("news").await;
    let mut other = server.client().await;
    other.subscribe("news").await;
    let body = json!({"name":"posted","channel":"news","data":"x","socket_id": sender.socket_id});
    let (status, response) = trigger_body(&server.rest(), &body).await;
    assert_eq!(status, 200, "{response}");
    other.expect_event("posted").await;
    let marker = sender.recv().await;
    assert_eq!(marker["event"], "pusher_internal:skipped", "{marker}");
    assert_eq!(marker["id"], response["ids"]["news"], "{marker}");
    assert!(marker.get("data").is_none(), "the marker carries no payload: {marker}");
    sender.expect_silence(SILENCE).await;

    // Resuming from the marker's id replays nothing: the sender never gets its own event.
    let mut resumed = server.client().await;
    resumed.send_subscribe(json!({"channel":"news","since": marker["id"]})).await;
    let data = resumed.expect_subscribed("news").await;
    assert_eq!(data["replay"]["recovered"], true, "{data}");
    assert_eq!(data["replay"]["count"], 0, "{data}");
}

/// `POST /batch_events` with Pusher's maximum of 10 events delivers them in order; the answer has
/// one entry per event, in order, each with its id.
#[tokio::test]
async fn batch_of_ten_is_delivered_in_order_with_ids() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut client = server.client().await;
    client.subscribe("news").await;
    let batch: Vec<Value> = (0..10).map(|n| json!({"name":"item","channel":"news","data": n.to_string()})).collect();
    let (status, response) = rest.call("POST", &rest.path("/batch_events"), &[], Some(&json!({"batch": batch}))).await;
    assert_eq!(status, 200, "{response}");
    let items = response["batch"].as_array().expect("batch array");
    assert_eq!(items.len(), 10, "{response}");
    let mut previous: Option<EventId> = None;
    for (n, item) in items.iter().enumerate() {
        let id = assert_event_id(&item["ids"]["news"]);
        assert!(previous.is_none_or(|p| p < id), "ids out of order: {response}");
        previous = Some(id);
        let frame = client.expect_event("item").await;
        assert_eq!(frame["data"], n.to_string(), "delivered out of order");
        assert_eq!(frame["id"], id.to_string());
    }
}

/// Pusher's limits: more than 10 events per batch or 100 channels per event is a 400, as is a
/// batch with one invalid item, and nothing of a refused request is published.
#[tokio::test]
async fn over_the_batch_and_channel_limits_is_400_and_publishes_nothing() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut client = server.client().await;
    client.subscribe("c0").await;

    let batch: Vec<Value> = (0..11).map(|_| json!({"name":"item","channel":"c0","data":"x"})).collect();
    let (status, body) = rest.call("POST", &rest.path("/batch_events"), &[], Some(&json!({"batch": batch}))).await;
    assert_error(status, &body, 400);

    // One bad item refuses the whole batch: none of its valid items is published.
    let batch =
        json!({"batch":[{"name":"item","channel":"c0","data":"x"},{"name":"item","channel":"bad name","data":"x"}]});
    let (status, body) = rest.call("POST", &rest.path("/batch_events"), &[], Some(&batch)).await;
    assert_error(status, &body, 400);

    let channels: Vec<String> = (0..101).map(|n| format!("c{n}")).collect();
    let (status, body) = trigger_body(&rest, &json!({"name":"wide","channels":channels,"data":"x"})).await;
    assert_error(status, &body, 400);
    client.expect_silence(SILENCE).await;

    let channels: Vec<String> = (0..100).map(|n| format!("c{n}")).collect();
    let (status, body) = trigger_body(&rest, &json!({"name":"wide","channels":channels,"data":"x"})).await;
    assert_eq!(status, 200, "100 channels is within the limit: {body}");
    client.expect_event("wide").await;
}

/// Requests without a valid signature are 401 and publish nothing: unsigned, signed with the
/// wrong secret, a body other than the one signed, or a timestamp outside the 600 s window.
#[tokio::test]
async fn unauthenticated_requests_are_401() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut client = server.client().await;
    client.subscribe("news").await;
    let path = rest.path("/events");
    let body = json!({"name":"e","channel":"news","data":"x"}).to_string().into_bytes();

    let (status, answer) = rest.raw("POST", &path, body.clone()).await;
    assert_error(status, &answer, 401);

    let wrong = RestClient { secret: "wrong-secret".into(), ..server.rest() };
    let (status, answer) = signed_bytes(&wrong, "POST", &path, &body, unix_now()).await;
    assert_error(status, &answer, 401);

    let query = signature::sign_request(APP_KEY, APP_SECRET, "POST", &path, &[], &body, unix_now());
    let tampered = json!({"name":"e","channel":"news","data":"tampered"}).to_string().into_bytes();
    let (status, answer) = rest.raw("POST", &format!("{path}?{query}"), tampered).await;
    assert_error(status, &answer, 401);

    // Well outside the window: a stamp 601 s ahead read by a server whose clock ticked to the
    // next second meanwhile is 600 s off, inside it (that made this test flaky). The exact
    // boundary is the signature module's unit test.
    let outside = signature::REQUEST_TIMESTAMP_WINDOW_SECS + 30;
    let (status, answer) = signed_bytes(&rest, "POST", &path, &body, unix_now() - outside).await;
    assert_error(status, &answer, 401);
    let (status, answer) = signed_bytes(&rest, "POST", &path, &body, unix_now() + outside).await;
    assert_error(status, &answer, 401);

    let (status, answer) = rest.raw("GET", &format!("{}?auth_key={APP_KEY}", rest.path("/channels")), Vec::new()).await;
    assert_error(status, &answer, 401);

    client.expect_silence(SILENCE).await;
    // The control: the same body, properly signed now, is accepted.
    let (status, answer) = signed_bytes(&rest, "POST", &path, &body, unix_now()).await;
    assert_eq!(status, 200, "{answer}");
}

/// A flood of refused requests (a backend signing with the wrong secret) is logged once per
/// status, with a count, not once per request: 50 requests refused 401 and 5 refused 404 give one
/// line each at the default level, and 3 WebSockets refused 4001 one more.
#[tokio::test]
async fn refused_requests_are_logged_once_per_status_not_once_each() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start_logging(&dir.path().join("log"), dir.path().join("stderr"), &[], "info").await;
    let wrong = RestClient { secret: "wrong-secret".into(), ..server.rest() };
    let path = wrong.path("/events");
    let body = json!({"name":"e","channel":"news","data":"x"}).to_string().into_bytes();
    for _ in 0..50 {
        let (status, answer) = signed_bytes(&wrong, "POST", &path, &body, unix_now()).await;
        assert_error(status, &answer, 401);
    }
    let stranger = RestClient { app_id: "no-such-app".into(), ..server.rest() };
    for _ in 0..5 {
        let (status, answer) = trigger_body(&stranger, &json!({"name":"e","channel":"news","data":"x"})).await;
        assert_error(status, &answer, 404);
    }
    // The WebSocket's refusals likewise, by close code.
    let unknown_key = server.ws_url().replace(APP_KEY, "no-such-key");
    for _ in 0..3 {
        let mut client = WsClient::connect(&unknown_key).await;
        assert_eq!(client.recv().await["event"], "pusher:error");
        assert_eq!(client.expect_close().await, 4001);
    }
    let log = server.stderr();
    let connections: Vec<&str> = log.lines().filter(|line| line.contains("connection refused")).collect();
    assert_eq!(connections.len(), 1, "one line per close code:\n{log}");
    assert!(connections[0].contains("code=4001") && connections[0].contains("count=1"), "{}", connections[0]);
    let refused: Vec<&str> = log.lines().filter(|line| line.contains("api request refused")).collect();
    assert_eq!(refused.len(), 2, "one line per status:\n{log}");
    assert!(refused[0].contains("status=401") && refused[0].contains("count=1"), "{}", refused[0]);
    assert!(refused[0].contains("invalid signature"), "the line says why: {}", refused[0]);
    assert!(refused[1].contains("status=404") && refused[1].contains("count=1"), "{}", refused[1]);
}

/// An app id that is not configured is 404 (JSON), even when signed with a valid key.
#[tokio::test]
async fn unknown_app_id_is_404() {
    let server = TestServer::start().await;
    let stranger = RestClient { app_id: "no-such-app".into(), ..server.rest() };
    let (status, body) = trigger_body(&stranger, &json!({"name":"e","channel":"news","data":"x"})).await;
    assert_error(status, &body, 404);
    let (status, body) = get(&stranger, "/channels", &[]).await;
    assert_error(status, &body, 404);
}

/// A publish is answered by its handler without axum's router (`routes::front`), so the shapes
/// around the two publish routes are checked here: each must get what the router gives it.
/// A percent-encoded app id is decoded as axum decodes a path parameter; one that is not UTF-8
/// once decoded is 400; another method is 405; a longer path or an empty app id is 404.
#[tokio::test]
async fn the_publish_routes_and_their_neighbours_answer_as_routed() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let body = json!({"name":"e","channel":"news","data":"x"}).to_string().into_bytes();
    // "test-app" with its "t"s percent-encoded: the same app, signed over the path as sent.
    for route in ["/events", "/batch_events"] {
        let body = if route == "/events" {
            body.clone()
        } else {
            json!({"batch":[{"name":"e","channel":"news","data":"x"}]}).to_string().into_bytes()
        };
        let (status, answer) =
            signed_bytes(&rest, "POST", &format!("/apps/%74es%74-app{route}"), &body, unix_now()).await;
        assert_eq!(status, 200, "{route}: {answer}");
    }
    let (status, answer) = signed_bytes(&rest, "POST", "/apps/%FF/events", &body, unix_now()).await;
    assert_error(status, &answer, 400);
    let (status, answer) = signed_bytes(&rest, "GET", &rest.path("/events"), &[], unix_now()).await;
    assert_eq!(status, 405, "{answer}");
    for path in [rest.path("/events/"), rest.path("/events/x"), "/apps//events".to_owned()] {
        let (status, answer) = signed_bytes(&rest, "POST", &path, &body, unix_now()).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }
}

/// `data` over Pusher's 10 KB limit is 413 and is not published.
#[tokio::test]
async fn data_over_10kb_is_413() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("news").await;
    let (status, body) =
        trigger_body(&server.rest(), &json!({"name":"big","channel":"news","data":"x".repeat(10_001)})).await;
    assert_error(status, &body, 413);
    client.expect_silence(SILENCE).await;
}

/// The data limit is the app's `max_message_size_bytes` even when the app allows larger
/// requests: a 413 names the data, not the transport.
#[tokio::test]
async fn data_over_max_message_size_is_413_within_a_larger_request_limit() {
    let server = TestServer::start_with(|config| config.apps[0].max_request_size_bytes = 100_000).await;
    let rest = server.rest();
    let (status, body) = trigger_body(&rest, &json!({"name":"big","channel":"news","data":"x".repeat(10_001)})).await;
    assert_error(status, &body, 413);
    let (status, body) = trigger_body(&rest, &json!({"name":"ok","channel":"news","data":"x".repeat(10_000)})).await;
    assert_eq!(status, 200, "{body}");
}

/// A request body over the app's `max_request_size_bytes` is 413, naming the limit, even when
/// the data in it is within `max_message_size_bytes`; nothing is published.
#[tokio::test]
async fn body_over_max_request_size_is_413() {
    let server = TestServer::start_with(|config| config.apps[0].max_request_size_bytes = 2_000).await;
    let mut client = server.client().await;
    client.subscribe("news").await;
    let rest = server.rest();
    let (status, body) = trigger_body(&rest, &json!({"name":"big","channel":"news","data":"x".repeat(2_000)})).await;
    assert_error(status, &body, 413);
    assert!(body["error"].as_str().unwrap().contains("2000"), "{body}");
    client.expect_silence(SILENCE).await;
    let (status, body) = trigger_body(&rest, &json!({"name":"ok","channel":"news","data":"x".repeat(1_900)})).await;
    assert_eq!(status, 200, "{body}");
    client.expect_event("ok").await;
}

/// A correctly signed body that is not valid JSON (or lacks fields) is 400 with a JSON reason.
#[tokio::test]
async fn malformed_body_is_400_with_a_json_error() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let path = rest.path("/events");
    let (status, body) = signed_bytes(&rest, "POST", &path, b"{\"name\": oops", unix_now()).await;
    assert_error(status, &body, 400);
    let (status, body) = signed_bytes(&rest, "POST", &path, br#"{"channel":"news"}"#, unix_now()).await;
    assert_error(status, &body, 400);
    let (status, body) = trigger_body(&rest, &json!({"name":"e","data":"x"})).await;
    assert_error(status, &body, 400); // no channel named
    let (status, body) = trigger_body(&rest, &json!({"name":"e","channel":"bad name","data":"x"})).await;
    assert_error(status, &body, 400);
    let (status, body) =
        trigger_body(&rest, &json!({"name":"e","channel":"news","data":"x","socket_id":"not-a-socket"})).await;
    assert_error(status, &body, 400);
}

/// Event names starting with `pusher:` are reserved for the protocol: 400.
#[tokio::test]
async fn reserved_event_name_is_400() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.subscribe("news").await;
    for name in ["pusher:subscribe", "pusher_internal:member_added"] {
        let (status, body) = trigger_body(&server.rest(), &json!({"name":name,"channel":"news","data":"{}"})).await;
        assert_error(status, &body, 400);
    }
    client.expect_silence(SILENCE).await;
}

/// `info=subscription_count` on a trigger returns `channels.{name}.subscription_count`.
#[tokio::test]
async fn trigger_with_info_returns_subscription_count() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    a.subscribe("news").await;
    let mut b = server.client().await;
    b.subscribe("news").await;
    let body = json!({"name":"e","channels":["news","empty"],"data":"x","info":"subscription_count"});
    let (status, response) = trigger_body(&server.rest(), &body).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["channels"]["news"]["subscription_count"], 2, "{response}");
    assert_eq!(response["channels"]["empty"]["subscription_count"], 0, "{response}");
    assert_event_id(&response["ids"]["news"]);

    let mut ann = server.client().await;
    ann.subscribe_presence("presence-room", "ann", json!({})).await;
    let body = json!({"name":"e","channel":"presence-room","data":"x","info":"user_count,subscription_count"});
    let (status, response) = trigger_body(&server.rest(), &body).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(response["channels"]["presence-room"], json!({"subscription_count":1,"user_count":1}), "{response}");
}

/// `GET /channels` lists occupied channels only, `filter_by_prefix` narrows the list,
/// `info=subscription_count` counts sockets (it was once ignored in the listing), and
/// `info=user_count` works with the `presence-` prefix and is a 400 without it (Pusher's rule).
#[tokio::test]
async fn channels_lists_occupied_channels() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut a = server.client().await;
    a.subscribe("news").await;
    a.subscribe_presence("presence-room", "ann", json!({})).await;
    let mut b = server.client().await;
    b.subscribe_presence("presence-room", "bob", json!({})).await;
    b.subscribe_private("private-x").await;
    rest.trigger("published-but-empty", "e", "x").await;

    let (status, body) = get(&rest, "/channels", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"channels":{"news":{},"presence-room":{},"private-x":{}}}));

    let (status, body) = get(&rest, "/channels", &[("filter_by_prefix", "private-")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"channels":{"private-x":{}}}));

    let params = [("filter_by_prefix", "presence-"), ("info", "user_count")];
    let (status, body) = get(&rest, "/channels", &params).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"channels":{"presence-room":{"user_count":2}}}));

    // Both counts at once; `subscription_count` also on channels of any type (as Reverb answers).
    let params = [("filter_by_prefix", "presence-"), ("info", "user_count,subscription_count")];
    let (status, body) = get(&rest, "/channels", &params).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"channels":{"presence-room":{"user_count":2,"subscription_count":2}}}));
    let (status, body) = get(&rest, "/channels", &[("info", "subscription_count")]).await;
    assert_eq!(status, 200, "{body}");
    let counts = json!({"news":{"subscription_count":1},"presence-room":{"subscription_count":2},"private-x":{"subscription_count":1}});
    assert_eq!(body, json!({"channels": counts}));

    let (status, body) = get(&rest, "/channels", &[("info", "user_count")]).await;
    assert_error(status, &body, 400);
}

/// `GET /connections` (Reverb's): every open connection of the app, subscribed or not; a closed
/// one stops counting once the server has seen it go.
#[tokio::test]
async fn connections_counts_the_apps_open_sockets() {
    let server = TestServer::start().await;
    let rest = server.rest();
    assert_eq!(get(&rest, "/connections", &[]).await, (200, json!({"connections": 0})));
    let mut subscribed = server.client().await;
    subscribed.subscribe("news").await;
    let unsubscribed = server.client().await;
    assert_eq!(get(&rest, "/connections", &[]).await, (200, json!({"connections": 2})));

    drop(unsubscribed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(&rest, "/connections", &[]).await;
        assert_eq!(status, 200, "{body}");
        if body == json!({"connections": 1}) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the closed socket still counts: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// With `server.path` (Reverb's `REVERB_SERVER_PATH`) every route is served below it and none at
/// the root. A call signed over its path without the prefix (the Pusher PHP SDK's `path` option
/// signs it so) or with it is accepted; a forged one is not.
#[tokio::test]
async fn a_path_prefix_serves_every_route_below_it() {
    let server = TestServer::start_with(|config| config.server.path = "/reverb".into()).await;
    let mut client = WsClient::established(&server.ws_url(APP_KEY).replacen("/app/", "/reverb/app/", 1)).await;
    client.subscribe("news").await;
    assert!(tokio_tungstenite::connect_async(server.ws_url(APP_KEY)).await.is_err(), "a socket at the root");

    let sdk = RestClient { base: server.url("/reverb"), ..server.rest() };
    sdk.trigger("news", "e", "signed without the prefix").await;
    assert_eq!(client.expect_event("e").await["data"], "signed without the prefix");
    let body = json!({"name": "e", "channel": "news", "data": "signed with it"}).to_string();
    let path = format!("/reverb/apps/{APP_ID}/events");
    let (status, answer) = signed_bytes(&server.rest(), "POST", &path, body.as_bytes(), unix_now()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(client.expect_event("e").await["data"], "signed with it");
    assert_eq!(get(&sdk, "/connections", &[]).await, (200, json!({"connections": 1})));

    let forger = RestClient { base: server.url("/reverb"), secret: "not-the-secret".into(), ..server.rest() };
    let (status, body) = get(&forger, "/connections", &[]).await;
    assert_error(status, &body, 401);
    let (status, _) = get(&server.rest(), "/connections", &[]).await;
    assert_eq!(status, 404, "the API at the root");
    let up = |path: &str| reqwest::get(server.url(path));
    assert_eq!(up("/reverb/up").await.unwrap().status(), 200);
    assert_eq!(up("/up").await.unwrap().status(), 404);
}

/// Three sockets in `presence-room`: two of user `ann` (tabs), one of `bob`: 3 subscriptions, 2 users.
async fn ann_in_two_tabs_and_bob(server: &TestServer) -> [WsClient; 3] {
    let mut tab1 = server.client().await;
    tab1.subscribe_presence("presence-room", "ann", json!({})).await;
    let mut tab2 = server.client().await;
    tab2.subscribe_presence("presence-room", "ann", json!({})).await;
    let mut bob = server.client().await;
    bob.subscribe_presence("presence-room", "bob", json!({})).await;
    [tab1, tab2, bob]
}

/// `GET /channels/{name}`: `occupied`, and on request `subscription_count` and (presence only)
/// `user_count`, which counts users, not sockets.
#[tokio::test]
async fn channel_info_reports_occupancy_and_counts() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let [_tab1, _tab2, mut bob] = ann_in_two_tabs_and_bob(&server).await;
    bob.subscribe("news").await;

    let params = [("info", "user_count,subscription_count")];
    let (status, body) = get(&rest, "/channels/presence-room", &params).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"occupied":true,"subscription_count":3,"user_count":2}));

    let (status, body) = get(&rest, "/channels/news", &[("info", "subscription_count")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"occupied":true,"subscription_count":1}));

    let (status, body) = get(&rest, "/channels/nobody-here", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["occupied"], false, "{body}");

    let (status, body) = get(&rest, "/channels/news", &[("info", "user_count")]).await;
    assert_error(status, &body, 400);
}

/// `GET /channels/{name}/users` lists the presence members once each; it is a 400 on other kinds
/// of channel.
#[tokio::test]
async fn users_lists_presence_members() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let _room = ann_in_two_tabs_and_bob(&server).await;

    let (status, body) = get(&rest, "/channels/presence-room/users", &[]).await;
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<&str> =
        body["users"].as_array().expect("users array").iter().map(|u| u["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["ann", "bob"]);

    for channel in ["news", "private-x"] {
        let (status, body) = get(&rest, &format!("/channels/{channel}/users"), &[]).await;
        assert_error(status, &body, 400);
    }
}

/// `POST /users/{id}/terminate_connections` closes every socket of that user (4200: the client
/// reconnects and must be authorised again) and no one else's.
#[tokio::test]
async fn terminate_connections_closes_only_that_users_sockets() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut ann_tab1 = server.client().await;
    ann_tab1.subscribe_presence("presence-room", "ann", json!({})).await;
    let mut ann_tab2 = server.client().await;
    ann_tab2.subscribe_presence("presence-other", "ann", json!({})).await;
    let mut bob = server.client().await;
    bob.subscribe_presence("presence-room", "bob", json!({})).await;
    ann_tab1.expect_event("pusher_internal:member_added").await;

    let (status, body) = rest.call("POST", &rest.path("/users/ann/terminate_connections"), &[], Some(&json!({}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ann_tab1.expect_close().await, 4200);
    assert_eq!(ann_tab2.expect_close().await, 4200);
    let removed = bob.expect_event("pusher_internal:member_removed").await;
    assert_eq!(support::data_of(&removed)["user_id"], "ann");
    bob.expect_silence(SILENCE).await;
}

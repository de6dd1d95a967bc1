//! Pusher protocol v7 over the WebSocket, as pusher-js and Laravel Echo expect it from Reverb:
//! the handshake, refusals before the handshake, pings, errors that keep the socket usable,
//! channel-name rules, private-channel auth, and the server's own keep-alive.

mod support;

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use reprise_api::signature;
use serde_json::{Value, json};
use support::process::ServerProcess;
use support::{APP_KEY, APP_SECRET, TestServer, WsClient, data_of};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Long enough for a frame that was going to arrive to arrive; short enough to keep the suite fast.
const SILENCE: Duration = Duration::from_millis(300);

/// Connects with an `Origin` header (browsers always send one).
async fn connect_with_origin(server: &TestServer, origin: &str) -> WsClient {
    let mut request = server.ws_url(APP_KEY).into_client_request().unwrap();
    request.headers_mut().insert("Origin", HeaderValue::from_str(origin).unwrap());
    let (stream, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connect");
    WsClient { stream, socket_id: String::new() }
}

/// Reads a refusal: a `pusher:error` carrying `code`, then a close frame with the same code.
async fn expect_refusal(client: &mut WsClient, code: u64) {
    let error = client.recv().await;
    assert_eq!(error["event"], "pusher:error", "expected an error first, got {error}");
    assert_eq!(data_of(&error)["code"], code, "{error}");
    assert_eq!(u64::from(client.expect_close().await), code);
}

/// The `pusher:error` frame's parsed data; panics on any other frame.
async fn expect_error(client: &mut WsClient) -> Value {
    let frame = client.recv().await;
    assert_eq!(frame["event"], "pusher:error", "expected pusher:error, got {frame}");
    data_of(&frame)
}

/// The parsed data of the next `pusher:subscription_error`; panics on any other frame.
async fn expect_subscription_error(client: &mut WsClient, channel: &str) -> Value {
    let frame = client.recv().await;
    assert_eq!(frame["event"], "pusher:subscription_error", "expected a subscription error, got {frame}");
    assert_eq!(frame["channel"], channel);
    data_of(&frame)
}

/// Sends a `pusher:ping` and waits for its pong: everything sent before has been handled.
async fn round_trip(client: &mut WsClient) {
    client.send_json(json!({"event":"pusher:ping","data":{}})).await;
    client.expect_event("pusher:pong").await;
}

/// pusher-js reads `socket_id` (`\d+\.\d+`, Pusher's format) and `activity_timeout` from the
/// handshake, inside `data` sent as a JSON string.
#[tokio::test]
async fn connection_established_carries_socket_id_and_activity_timeout() {
    let server = TestServer::start_with(|config| config.apps[0].activity_timeout_secs = 17).await;
    let mut client = WsClient::connect(&server.ws_url(APP_KEY)).await;
    let hello = client.recv().await;
    assert_eq!(hello["event"], "pusher:connection_established");
    assert!(hello["data"].is_string(), "data must be a JSON string: {hello}");
    let data = data_of(&hello);
    let socket_id = data["socket_id"].as_str().expect("socket_id is a string");
    let (left, right) = socket_id.split_once('.').expect("socket id has a dot");
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    assert!(digits(left) && digits(right), "socket id {socket_id:?} is not \\d+\\.\\d+");
    assert_eq!(data["activity_timeout"], 17);

    let other = server.client().await;
    assert_ne!(other.socket_id, socket_id, "two sockets got the same id");
}

/// An unknown key in `/app/{key}` gets Pusher's 4001 (error frame, then close), so pusher-js
/// stops reconnecting instead of hammering the server.
#[tokio::test]
async fn unknown_app_key_is_refused_with_4001() {
    let server = TestServer::start().await;
    let mut client = WsClient::connect(&server.ws_url("no-such-key")).await;
    expect_refusal(&mut client, 4001).await;
}

/// `allowed_origins` (Reverb's setting): another site's page is refused with 4009; the app's own
/// origin is served.
#[tokio::test]
async fn origin_outside_allowed_origins_is_refused_with_4009() {
    let server = TestServer::start_with(|config| config.apps[0].allowed_origins = vec!["example.com".into()]).await;
    let mut evil = connect_with_origin(&server, "https://evil.com").await;
    expect_refusal(&mut evil, 4009).await;

    let mut good = connect_with_origin(&server, "https://example.com").await;
    let hello = good.recv().await;
    assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
}

/// `max_connections`: the connection over the quota gets 4004; the slot is given back when a
/// connection ends, so the app is not locked out for good.
#[tokio::test]
async fn connection_over_max_connections_is_refused_with_4004_until_one_leaves() {
    let server = TestServer::start_with(|config| config.apps[0].max_connections = Some(1)).await;
    let first = server.client().await;
    let mut second = WsClient::connect(&server.ws_url(APP_KEY)).await;
    expect_refusal(&mut second, 4004).await;

    drop(first);
    // The server notices the closed socket asynchronously: retry until it has (bounded).
    for _ in 0..100 {
        let mut again = WsClient::connect(&server.ws_url(APP_KEY)).await;
        if again.recv().await["event"] == "pusher:connection_established" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the slot of a closed connection was never given back");
}

/// `pusher:ping` is answered with `pusher:pong` (pusher-js pings after `activity_timeout`).
#[tokio::test]
async fn ping_is_answered_with_pong() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.send_json(json!({"event":"pusher:ping","data":{}})).await;
    let pong = client.recv().await;
    assert_eq!(pong["event"], "pusher:pong", "{pong}");
}

/// Malformed JSON is answered with `pusher:error` and does not cost the client its socket.
#[tokio::test]
async fn malformed_json_gets_an_error_and_the_socket_keeps_working() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.send_text("{this is not json").await;
    expect_error(&mut client).await;
    client.send_text(r#"{"data":{}}"#).await; // JSON, but no event
    expect_error(&mut client).await;
    client.subscribe("news").await;
}

/// An unknown `pusher:*` event is answered with `pusher:error` naming it; the socket stays open.
#[tokio::test]
async fn unknown_pusher_event_gets_an_error() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    client.send_json(json!({"event":"pusher:xyz","data":{}})).await;
    let error = expect_error(&mut client).await;
    assert!(error["message"].as_str().unwrap().contains("pusher:xyz"), "{error}");
    round_trip(&mut client).await;
}

/// A message over `max_message_size_bytes` is refused with an error that states the limit, is not
/// acted upon, and the socket stays usable.
#[tokio::test]
async fn message_over_max_message_size_gets_an_error_naming_the_limit() {
    let server = TestServer::start_with(|config| config.apps[0].max_message_size_bytes = 1000).await;
    let mut client = server.client().await;
    let oversized = json!({"event":"pusher:ping","data":{"pad":"x".repeat(2000)}});
    client.send_json(oversized).await;
    // The first answer is the error, not the pong the oversized ping would have earned.
    let error = expect_error(&mut client).await;
    assert!(error["message"].as_str().unwrap().contains("1000"), "the limit is not stated: {error}");
    client.subscribe("news").await;
    round_trip(&mut client).await;
}

/// Channel names outside Pusher's `[A-Za-z0-9_\-=@,.;]{1,164}` are refused with
/// `pusher:subscription_error` (and the longest legal name is accepted).
#[tokio::test]
async fn invalid_channel_names_get_a_subscription_error() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let too_long = "a".repeat(165);
    for name in ["has space", "slash/y", too_long.as_str()] {
        client.send_subscribe(json!({"channel": name})).await;
        let data = expect_subscription_error(&mut client, name).await;
        assert_eq!(data["status"], 400, "{name}: {data}");
    }
    client.subscribe(&"a".repeat(164)).await;
}

/// Private channels: a forged signature, a missing one, or one issued to another socket is
/// refused with an `AuthError`/401 (pusher-js's shape), and the refused socket receives nothing
/// published there while an authorised socket does.
#[tokio::test]
async fn private_channel_refuses_bad_auth_and_delivers_nothing() {
    let server = TestServer::start().await;
    let channel = "private-orders";
    let mut authorised = server.client().await;
    authorised.subscribe_private(channel).await;

    let mut forged = server.client().await;
    let auth = signature::socket_auth(APP_KEY, "not-the-secret", &forged.socket_id, channel, None);
    forged.send_subscribe(json!({"channel": channel, "auth": auth})).await;

    let mut missing = server.client().await;
    missing.send_subscribe(json!({"channel": channel})).await;

    let mut borrowed = server.client().await;
    let auth = signature::socket_auth(APP_KEY, APP_SECRET, &authorised.socket_id, channel, None);
    borrowed.send_subscribe(json!({"channel": channel, "auth": auth})).await;

    let mut other_channel = server.client().await;
    let auth = signature::socket_auth(APP_KEY, APP_SECRET, &other_channel.socket_id, "private-other", None);
    other_channel.send_subscribe(json!({"channel": channel, "auth": auth})).await;

    for refused in [&mut forged, &mut missing, &mut borrowed, &mut other_channel] {
        let data = expect_subscription_error(refused, channel).await;
        assert_eq!(data["type"], "AuthError", "{data}");
        assert_eq!(data["status"], 401, "{data}");
    }

    server.rest().trigger(channel, "shipped", "secret stuff").await;
    let event = authorised.expect_event("shipped").await;
    assert_eq!(event["data"], "secret stuff");
    for refused in [&mut forged, &mut missing, &mut borrowed, &mut other_channel] {
        refused.expect_silence(SILENCE).await;
    }
}

/// A client repeating a mistake on one socket (subscribes without auth, frames that are not
/// JSON) is answered every time, but logged once per kind of mistake, with a count, not once per
/// frame: 20 refused subscribes and 5 bad frames give two lines at the default level.
#[tokio::test]
async fn a_repeated_client_mistake_is_logged_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = ServerProcess::start_logging(&dir.path().join("log"), dir.path().join("stderr"), &[], "info").await;
    let mut client = WsClient::established(&server.ws_url()).await;
    for _ in 0..20 {
        client.send_subscribe(json!({"channel": "private-orders"})).await;
        let data = expect_subscription_error(&mut client, "private-orders").await;
        assert_eq!(data["status"], 401, "{data}");
    }
    for _ in 0..5 {
        client.send_text("not json").await;
        let error = client.expect_event("pusher:error").await;
        assert!(data_of(&error)["message"].is_string(), "{error}");
    }
    let log = server.stderr();
    let lines = |message: &str| log.lines().filter(|line| line.contains(message)).count();
    assert_eq!(lines("subscription refused"), 1, "{log}");
    assert_eq!(lines("bad client frame"), 1, "{log}");
    let refused = log.lines().find(|line| line.contains("subscription refused")).expect("a line");
    assert!(refused.contains("count=1") && refused.contains("private-orders"), "{refused}");
}

/// `private-encrypted-*`: subscribed like a private channel; the server relays the ciphertext
/// byte for byte (it cannot and must not touch it).
#[tokio::test]
async fn private_encrypted_channel_relays_data_byte_for_byte() {
    let server = TestServer::start().await;
    let channel = "private-encrypted-vault";
    let mut client = server.client().await;
    client.subscribe_private(channel).await;
    let payload = r#"{"nonce":"aGVsbG8+/w==","ciphertext":"ZW5j\u00e9+/==\\n","extra":"é \"q\" <>&"}"#;
    server.rest().trigger(channel, "sealed", payload).await;
    let event = client.expect_event("sealed").await;
    assert_eq!(event["channel"], channel);
    assert_eq!(event["data"].as_str(), Some(payload), "the payload was altered");
}

/// `pusher:unsubscribe` stops delivery on that channel (and only that channel).
#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let server = TestServer::start().await;
    let rest = server.rest();
    let mut client = server.client().await;
    client.subscribe("news").await;
    client.subscribe("sport").await;
    rest.trigger("news", "headline", "1").await;
    client.expect_event("headline").await;

    client.send_json(json!({"event":"pusher:unsubscribe","data":{"channel":"news"}})).await;
    round_trip(&mut client).await;
    rest.trigger("news", "headline", "2").await;
    rest.trigger("sport", "score", "3").await;
    let next = client.recv().await;
    assert_eq!(next["event"], "score", "an event of the unsubscribed channel arrived: {next}");
    client.expect_silence(SILENCE).await;
}

/// A misbehaving client (garbage, bad subscribes, a frame so large the transport drops it) does
/// not disturb another client of the same app.
#[tokio::test]
async fn a_bad_client_does_not_affect_another() {
    let server = TestServer::start_with(|config| config.apps[0].max_message_size_bytes = 1000).await;
    let mut good = server.client().await;
    good.subscribe("news").await;

    let mut bad = server.client().await;
    bad.send_text("{{{{").await;
    bad.send_json(json!({"event":"pusher:subscribe","data":{"channel":"private-x","auth":"nope"}})).await;
    bad.send_json(json!({"event":"client-x","channel":"news","data":{}})).await;
    // Over the transport limit: the server cuts the socket (the send itself may fail then).
    let _ = bad.stream.send(Message::text("z".repeat(100_000))).await;
    loop {
        if bad.next().await.is_err() {
            break;
        }
    }

    server.rest().trigger("news", "headline", "still here").await;
    let event = good.expect_event("headline").await;
    assert_eq!(event["data"], "still here");
    round_trip(&mut good).await;
}

/// The server pings a client that has been idle for `ping_interval_secs` (Reverb's behaviour).
#[tokio::test]
async fn server_pings_an_idle_client() {
    let server = TestServer::start_with(|config| {
        config.apps[0].ping_interval_secs = 1;
        config.apps[0].activity_timeout_secs = 5;
    })
    .await;
    let mut client = server.client().await;
    let started = Instant::now();
    let ping = client.recv().await;
    assert_eq!(ping["event"], "pusher:ping", "{ping}");
    assert!(started.elapsed() < Duration::from_secs(5), "ping came after {:?}", started.elapsed());
}

/// A client that never answers the server's ping is closed with 4201 (pong not received), so dead
/// sockets do not pile up.
#[tokio::test]
async fn client_that_never_answers_pings_is_closed_with_4201() {
    let server = TestServer::start_with(|config| {
        config.apps[0].ping_interval_secs = 1;
        config.apps[0].activity_timeout_secs = 1;
    })
    .await;
    let mut client = server.client().await;
    let ping = client.recv().await;
    assert_eq!(ping["event"], "pusher:ping", "{ping}");
    assert_eq!(client.expect_close().await, 4201);
}

/// A client that answers every ping with `pusher:pong` stays connected well past
/// `ping_interval + activity_timeout`.
#[tokio::test]
async fn client_that_answers_pings_stays_connected() {
    let server = TestServer::start_with(|config| {
        config.apps[0].ping_interval_secs = 1;
        config.apps[0].activity_timeout_secs = 1;
    })
    .await;
    let mut client = server.client().await;
    let until = Instant::now() + Duration::from_millis(3500);
    let mut pings = 0;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Ok(frame) = tokio::time::timeout(left, client.next()).await else { break };
        match frame {
            Ok(frame) if frame["event"] == "pusher:ping" => {
                pings += 1;
                client.send_json(json!({"event":"pusher:pong","data":{}})).await;
            }
            Ok(frame) => panic!("unexpected frame {frame}"),
            Err(close) => panic!("closed although every ping was answered: {close:?}"),
        }
    }
    assert!(pings >= 2, "expected the server to keep pinging, got {pings} pings");
    round_trip(&mut client).await;
}

/// A request to the WebSocket endpoint that cannot be upgraded gets a plain HTTP answer saying
/// why (the server answers the handshake itself since `connection::upgrade`; these are axum's
/// statuses and messages, which it replaced).
#[tokio::test]
async fn a_request_that_cannot_be_upgraded_is_answered_with_why() {
    let server = TestServer::start().await;
    let http = reqwest::Client::new();
    let url = server.url(&format!("/app/{APP_KEY}?protocol=7"));
    let upgrade = |request: reqwest::RequestBuilder| {
        request
            .header("Connection", "keep-alive, Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
    };
    // (A POST is refused by the router first: 405, as before.)
    let response = upgrade(http.post(&url)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let cases = [
        (http.get(&url), "Connection header did not include 'upgrade'"),
        (upgrade(http.get(&url)), "`Sec-WebSocket-Key` header missing"),
        (
            http.get(&url)
                .header("Connection", "Upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("Sec-WebSocket-Version", "8"),
            "`Sec-WebSocket-Version` header did not include '13'",
        ),
    ];
    for (request, message) in cases {
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{message}");
        assert_eq!(response.text().await.unwrap(), message);
    }
}

/// Opens a WebSocket by hand over TCP, so a test can send frames no client library would, and
/// reads past `connection_established`.
async fn raw_websocket(server: &TestServer) -> TcpStream {
    raw_websocket_sending(server, &[]).await
}

/// Like `raw_websocket`, with `early` (client frames) sent in the same write as the upgrade
/// request, before the client has seen the 101.
async fn raw_websocket_sending(server: &TestServer, early: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /app/{APP_KEY}?protocol=7&client=js&version=8.4.0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(&[request.as_bytes(), early].concat()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tokio::time::timeout(SILENCE * 10, stream.read_u8()).await.unwrap().unwrap());
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // RFC 6455's own example key and answer (section 1.3).
    assert!(head.contains("\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"), "{head}");
    let (opcode, payload) = read_frame(&mut stream).await.expect("connection_established");
    assert_eq!(opcode, 1, "{}", String::from_utf8_lossy(&payload));
    stream
}

/// The next frame from the server (unmasked): its opcode and payload; None if the connection
/// ended without one.
async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Option<(u8, Vec<u8>)> {
    let read = async {
        let mut header = [0_u8; 2];
        stream.read_exact(&mut header).await.ok()?;
        let length = match header[1] & 0x7f {
            126 => u64::from(stream.read_u16().await.ok()?),
            127 => stream.read_u64().await.ok()?,
            short => u64::from(short),
        };
        let mut payload = vec![0_u8; usize::try_from(length).unwrap()];
        stream.read_exact(&mut payload).await.ok()?;
        Some((header[0] & 0x0f, payload))
    };
    tokio::time::timeout(SILENCE * 10, read).await.expect("a frame or the end of the connection in time")
}

/// A client frame (masked, as clients must) with the given first byte (FIN, RSV, opcode).
fn client_frame(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![first_byte];
    match u16::try_from(payload.len()) {
        Ok(short) if short < 126 => frame.push(0x80 | u8::try_from(short).unwrap()),
        Ok(medium) => frame.extend([0x80 | 126].into_iter().chain(medium.to_be_bytes())),
        Err(_) => frame.extend([0x80 | 127].into_iter().chain(u64::try_from(payload.len()).unwrap().to_be_bytes())),
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
    frame
}

/// WebSocket pings are answered between the frames the connection writes. However the two meet
/// (here the client reads late, so that writes wait on a full socket while pings keep coming),
/// every frame arrives whole: the events in order, the pongs answering pings in order.
#[tokio::test]
async fn pongs_and_events_never_interleave_inside_a_frame() {
    const BATCHES: usize = 60;
    const PER_BATCH: usize = 10;
    const PINGS: u32 = 400;
    let server = TestServer::start_with(|config| {
        config.server.outbox_frames = 10_000;
        config.apps[0].max_message_size_bytes = 100_000;
        config.apps[0].max_request_size_bytes = 1_000_000;
    })
    .await;
    let mut stream = raw_websocket(&server).await;
    let subscribe = json!({"event":"pusher:subscribe","data":{"channel":"mixed"}}).to_string();
    stream.write_all(&client_frame(0x81, subscribe.as_bytes())).await.unwrap();
    loop {
        let (opcode, payload) = read_frame(&mut stream).await.expect("subscription_succeeded");
        if opcode == 1
            && serde_json::from_slice::<Value>(&payload).unwrap()["event"] == "pusher_internal:subscription_succeeded"
        {
            break;
        }
    }
    let (mut reader, mut writer) = stream.into_split();
    let rest = server.rest();
    let publishing = tokio::spawn(async move {
        let padding = "x".repeat(20_000);
        for batch in 0..BATCHES {
            let events: Vec<Value> = (0..PER_BATCH)
                .map(|i| json!({"name":"big","channel":"mixed","data": format!("{}:{padding}", batch * PER_BATCH + i)}))
                .collect();
            let (status, response) =
                rest.call("POST", &rest.path("/batch_events"), &[], Some(&json!({"batch": events}))).await;
            assert_eq!(status, 200, "{response}");
        }
    });
    let pinging = tokio::spawn(async move {
        for ping in 0..PINGS {
            // As long as a control frame may be (125 bytes): a pong that long is more often cut
            // by a full socket than a short one.
            let mut payload = ping.to_be_bytes().to_vec();
            payload.resize(125, b'p');
            writer.write_all(&client_frame(0x89, &payload)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        writer // kept open: dropping it would close the client's side
    });
    // Late: the socket fills while events and pings keep coming.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut next_event, mut last_pong) = (0, None);
    while next_event < BATCHES * PER_BATCH {
        let (opcode, payload) = read_frame(&mut reader).await.expect("a whole frame");
        match opcode {
            0x1 => {
                let frame: Value = serde_json::from_slice(&payload).expect("a text frame is one whole JSON message");
                if frame["event"] == "big" {
                    let data = frame["data"].as_str().unwrap();
                    assert_eq!(data.split(':').next(), Some(next_event.to_string().as_str()), "events in order");
                    next_event += 1;
                }
            }
            0xA => {
                assert_eq!(payload.len(), 125, "a pong echoes its ping");
                let pong = u32::from_be_bytes(payload[..4].try_into().unwrap());
                assert!(last_pong.is_none_or(|last| pong > last), "pong {pong} after {last_pong:?}");
                last_pong = Some(pong);
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    publishing.await.unwrap();
    let _writer = pinging.await.unwrap();
    assert!(last_pong.is_some(), "pings were answered");
}

/// Sends `frame` on a fresh raw WebSocket and returns the code of the close frame that comes
/// back (skipping any other frame); panics if the connection ends without one.
/// A WebSocket ping is answered with a pong carrying its payload (RFC 6455, 5.5.2).
#[tokio::test]
async fn a_websocket_ping_gets_a_pong_with_its_payload() {
    let server = TestServer::start().await;
    let mut stream = raw_websocket(&server).await;
    stream.write_all(&client_frame(0x89, b"are you there")).await.unwrap();
    assert_eq!(read_frame(&mut stream).await, Some((0xA, b"are you there".to_vec())));
}

/// A client's close frame is answered with a close frame carrying its code (RFC 6455, 5.5.1),
/// and then the connection ends.
#[tokio::test]
async fn a_client_close_is_answered_with_its_code() {
    let server = TestServer::start().await;
    let mut stream = raw_websocket(&server).await;
    stream.write_all(&client_frame(0x88, &[&4000_u16.to_be_bytes()[..], b"bye"].concat())).await.unwrap();
    let (opcode, payload) = read_frame(&mut stream).await.expect("a close frame");
    assert_eq!((opcode, u16::from_be_bytes([payload[0], payload[1]])), (0x8, 4000));
    assert_eq!(read_frame(&mut stream).await, None, "the connection ends after the close");
}

/// A message may come in fragments, with a control frame between them, and TCP may cut it
/// anywhere: a `pusher:ping` sent so, three bytes per write, is understood, and the WebSocket
/// ping between its fragments is answered first.
#[tokio::test]
async fn a_fragmented_message_cut_into_small_writes_is_understood() {
    let server = TestServer::start().await;
    let mut stream = raw_websocket(&server).await;
    let (head, tail) = br#"{"event":"pusher:ping","data":{}}"#.split_at(10);
    let bytes = [client_frame(0x01, head), client_frame(0x89, b"p"), client_frame(0x80, tail)].concat();
    for piece in bytes.chunks(3) {
        stream.write_all(piece).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(read_frame(&mut stream).await, Some((0xA, b"p".to_vec())));
    let (opcode, payload) = read_frame(&mut stream).await.expect("pusher:pong");
    assert_eq!(opcode, 0x1);
    let message: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(message["event"], "pusher:pong", "{message}");
}

/// Frames a client sends right behind its upgrade request, before it has seen the 101, are read
/// (hyper has already read them with the request).
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_read() {
    let server = TestServer::start().await;
    let early = client_frame(0x81, br#"{"event":"pusher:ping","data":{}}"#);
    let mut stream = raw_websocket_sending(&server, &early).await;
    let (opcode, payload) = read_frame(&mut stream).await.expect("pusher:pong");
    assert_eq!(opcode, 0x1);
    let message: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(message["event"], "pusher:pong", "{message}");
}

async fn close_code_after(server: &TestServer, frame: &[u8]) -> u16 {
    let mut stream = raw_websocket(server).await;
    stream.write_all(frame).await.unwrap();
    loop {
        match read_frame(&mut stream).await {
            Some((0x8, payload)) => return u16::from_be_bytes([payload[0], payload[1]]),
            Some(_) => {}
            None => panic!("the connection ended without a close frame"),
        }
    }
}

/// A text frame that is not UTF-8 is answered with close 1007 (RFC 6455 7.4.1) before the
/// connection ends; it used to be a bare TCP close.
#[tokio::test]
async fn a_text_frame_that_is_not_utf8_gets_close_1007() {
    let server = TestServer::start().await;
    assert_eq!(close_code_after(&server, &client_frame(0x81, &[0xc3, 0x28])).await, 1007);
}

/// Protocol violations (a continuation with nothing to continue, a reserved opcode) are
/// answered with close 1002; they used to be a bare TCP close.
#[tokio::test]
async fn protocol_violations_get_close_1002() {
    let server = TestServer::start().await;
    assert_eq!(close_code_after(&server, &client_frame(0x80, b"orphan")).await, 1002, "orphan continuation");
    assert_eq!(close_code_after(&server, &client_frame(0x83, b"reserved")).await, 1002, "reserved opcode 3");
}

/// A text frame over the WebSocket layer's limit (8 × `max_message_size_bytes`) gets close 1009.
#[tokio::test]
async fn a_frame_over_the_transport_limit_gets_close_1009() {
    let server = TestServer::start().await;
    let too_big = vec![b'x'; 8 * server.config.apps[0].max_message_size_bytes + 1];
    assert_eq!(close_code_after(&server, &client_frame(0x81, &too_big)).await, 1009);
}

//! A client's text frame (`parse_client_message`): any text is understood or refused with a
//! `FrameError`, and what is understood means the same once written back as a frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_api::frames::{ClientMessage, client_event_data, parse_client_message};
use serde_json::{Value, json};

fuzz_target!(|bytes: &[u8]| {
    // A WebSocket text frame is UTF-8 by the time the parser sees it.
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let Ok(message) = parse_client_message(text) else { return };
    let written = match &message {
        ClientMessage::Subscribe(request) => json!({"event": "pusher:subscribe", "data": {
            "channel": request.channel,
            "auth": request.auth,
            "channel_data": request.channel_data,
            "since": request.since,
        }}),
        ClientMessage::Unsubscribe { channel } => json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}),
        ClientMessage::Ping => json!({"event": "pusher:ping"}),
        ClientMessage::Pong => json!({"event": "pusher:pong"}),
        ClientMessage::Signin { auth, user_data } => {
            json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})
        }
        ClientMessage::ClientEvent { event, channel, data } => {
            assert!(event.starts_with("client-"), "a client event named {event:?}");
            // What the server relays must itself be a string (Pusher's `data`).
            let relayed = client_event_data(data);
            if let Value::String(s) = data {
                assert_eq!(&relayed, s, "a string payload is relayed as is");
            }
            json!({"event": event, "channel": channel, "data": data})
        }
    };
    let again = parse_client_message(&written.to_string());
    assert_eq!(again.as_ref(), Ok(&message), "{text:?} was understood as {message:?}, written back as {written}");
});

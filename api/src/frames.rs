//! Pusher protocol v7 frames: parsing what clients send and building what the server sends.
//!
//! Server frames carry `data` as a JSON *string*, like Pusher and Reverb do; pusher-js parses it.
//! Event frames of logged channels also carry Reprise's `id` at the top level (the replay
//! extension; see `docs/replay.md`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::EventId;
use crate::codes::ErrorCode;

/// A frame a client sent, understood.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    Subscribe(SubscribeRequest),
    Unsubscribe {
        channel: String,
    },
    Ping,
    Pong,
    /// User authentication (`pusher.signin()`): `auth` signs `socket_id::user::user_data`.
    Signin {
        auth: String,
        user_data: String,
    },
    /// A `client-*` event to relay to the channel's other members.
    ClientEvent {
        event: String,
        channel: String,
        data: Value,
    },
}

/// The data of `pusher:subscribe`, plus Reprise's `since`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct SubscribeRequest {
    pub channel: String,
    #[serde(default)]
    pub auth: Option<String>,
    #[serde(default)]
    pub channel_data: Option<String>,
    /// The last event id the client saw on this channel: replay what came after it.
    #[serde(default)]
    pub since: Option<String>,
}

/// Why a client frame could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("Invalid message format: not a JSON object with a string \"event\"")]
    Malformed,
    #[error("Unknown Pusher event: {0}")]
    UnknownPusherEvent(String),
    #[error("Invalid data for {0}")]
    InvalidData(&'static str),
    #[error("Client events must be named client-* and name a channel")]
    InvalidClientEvent,
}

#[derive(Deserialize)]
struct RawClientFrame {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    data: Value,
}

/// Parses one text frame from a client.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, FrameError> {
    let raw: RawClientFrame = serde_json::from_str(text).map_err(|_| FrameError::Malformed)?;
    // Some clients send `data` as a JSON string holding the object.
    let data = match raw.data {
        Value::String(s) if raw.event.starts_with("pusher:") => serde_json::from_str(&s).unwrap_or(Value::String(s)),
        other => other,
    };
    match raw.event.as_str() {
        "pusher:subscribe" => serde_json::from_value(data)
            .map(ClientMessage::Subscribe)
            .map_err(|_| FrameError::InvalidData("pusher:subscribe")),
        "pusher:unsubscribe" => {
            #[derive(Deserialize)]
            struct Unsubscribe {
                channel: String,
            }
            serde_json::from_value::<Unsubscribe>(data)
                .map(|u| ClientMessage::Unsubscribe { channel: u.channel })
                .map_err(|_| FrameError::InvalidData("pusher:unsubscribe"))
        }
        "pusher:signin" => {
            #[derive(Deserialize)]
            struct Signin {
                auth: String,
                user_data: String,
            }
            serde_json::from_value::<Signin>(data)
                .map(|s| ClientMessage::Signin { auth: s.auth, user_data: s.user_data })
                .map_err(|_| FrameError::InvalidData("pusher:signin"))
        }
        "pusher:ping" => Ok(ClientMessage::Ping),
        "pusher:pong" => Ok(ClientMessage::Pong),
        other if other.starts_with("pusher:") || other.starts_with("pusher_internal:") => {
            Err(FrameError::UnknownPusherEvent(other.to_owned()))
        }
        other if other.starts_with("client-") => match raw.channel {
            Some(channel) => Ok(ClientMessage::ClientEvent { event: raw.event, channel, data }),
            None => Err(FrameError::InvalidClientEvent),
        },
        _ => Err(FrameError::InvalidClientEvent),
    }
}

/// The `data` of a relayed client event, as the string every server frame carries.
pub fn client_event_data(data: &Value) -> String {
    match data {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Serialize)]
struct Frame<'a> {
    event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<EventId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a str>,
}

fn frame(event: &str, channel: Option<&str>, data: Option<&str>) -> String {
    let frame = Frame { event, channel, data, id: None, user_id: None };
    serde_json::to_string(&frame).expect("a frame of strings always serialises")
}

/// An application event (published or client) as subscribers receive it.
pub fn event_frame(event: &str, channel: &str, data: &str, id: Option<EventId>, user_id: Option<&str>) -> String {
    let mut out = Vec::with_capacity(event_frame_capacity(event, channel, data, user_id));
    write_event_frame(&mut out, event, channel, data, id, user_id);
    String::from_utf8(out).expect("JSON made of strings is UTF-8")
}

/// What `write_event_frame` writes for these strings when none needs an escape (most do not):
/// the capacity to give its buffer.
pub fn event_frame_capacity(event: &str, channel: &str, data: &str, user_id: Option<&str>) -> usize {
    const SYNTAX: usize = r#"{"event":"","channel":"","data":"","id":"","user_id":""}"#.len();
    SYNTAX + event.len() + channel.len() + data.len() + EventId::TEXT_LEN + user_id.map_or(0, str::len)
}

/// Appends `event_frame`'s JSON to `out`, written field by field rather than through serde's
/// derived `Serialize` (half the instructions, and no intermediate `String`: the hub
/// writes a published event's frame straight after room for its WebSocket header). The same
/// fields in the same order as `Frame`, which the tests check against it.
pub fn write_event_frame(
    out: &mut Vec<u8>,
    event: &str,
    channel: &str,
    data: &str,
    id: Option<EventId>,
    user_id: Option<&str>,
) {
    out.extend_from_slice(br#"{"event":"#);
    write_json_string(out, event);
    out.extend_from_slice(br#","channel":"#);
    write_json_string(out, channel);
    out.extend_from_slice(br#","data":"#);
    write_json_string(out, data);
    if let Some(id) = id {
        // Crockford base32: nothing to escape.
        out.extend_from_slice(br#","id":""#);
        out.extend_from_slice(id.encode(&mut [0; EventId::TEXT_LEN]).as_bytes());
        out.push(b'"');
    }
    if let Some(user_id) = user_id {
        out.extend_from_slice(br#","user_id":"#);
        write_json_string(out, user_id);
    }
    out.push(b'}');
}

/// `text` as a JSON string, quoted and escaped as serde_json escapes it.
fn write_json_string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("writing to a Vec cannot fail");
}

/// Sent instead of a logged event to the socket a publish excluded (`socket_id`, Laravel's
/// `toOthers()`): the event is not delivered, but the socket's cursor moves past it, so its ids
/// stay contiguous and a resume does not replay to it what it chose not to receive. pusher-js
/// ignores unknown `pusher_internal:` events.
pub fn skipped(channel: &str, id: EventId) -> String {
    let frame =
        Frame { event: "pusher_internal:skipped", channel: Some(channel), data: None, id: Some(id), user_id: None };
    serde_json::to_string(&frame).expect("a frame of strings always serialises")
}

pub fn connection_established(socket_id: &str, activity_timeout_secs: u64) -> String {
    let data = serde_json::json!({ "socket_id": socket_id, "activity_timeout": activity_timeout_secs });
    frame("pusher:connection_established", None, Some(&data.to_string()))
}

/// A `pusher:error`. `code` is `None` for errors that have no Pusher code.
pub fn error(code: Option<ErrorCode>, message: &str) -> String {
    let data = serde_json::json!({ "code": code.map(ErrorCode::as_u16), "message": message });
    frame("pusher:error", None, Some(&data.to_string()))
}

pub fn ping() -> String {
    frame("pusher:ping", None, Some("{}"))
}

pub fn pong() -> String {
    frame("pusher:pong", None, Some("{}"))
}

/// `subscription_succeeded`; `data` is the JSON object to send (empty, presence, replay).
pub fn subscription_succeeded(channel: &str, data: &Value) -> String {
    frame("pusher_internal:subscription_succeeded", Some(channel), Some(&data.to_string()))
}

/// `pusher:subscription_error` in the shape pusher-js gives its own auth failures.
pub fn subscription_error(channel: &str, kind: &str, message: &str, status: u16) -> String {
    let data = serde_json::json!({ "type": kind, "error": message, "status": status });
    frame("pusher:subscription_error", Some(channel), Some(&data.to_string()))
}

/// The answer to a valid `pusher:signin`: the signed `user_data`, as pusher-js expects it.
pub fn signin_success(user_data: &str) -> String {
    let data = serde_json::json!({ "user_data": user_data });
    frame("pusher:signin_success", None, Some(&data.to_string()))
}

/// `pusher_internal:watchlist_events`: the online status of users a signed-in socket watches.
/// pusher-js emits each `{name, user_ids}` of `events` on `pusher.user.watchlist` by its `name`
/// (`online` or `offline`). Empty lists are left out.
pub fn watchlist_events(online: &[&str], offline: &[&str]) -> String {
    let events: Vec<Value> = [("online", online), ("offline", offline)]
        .into_iter()
        .filter(|(_, user_ids)| !user_ids.is_empty())
        .map(|(name, user_ids)| serde_json::json!({ "name": name, "user_ids": user_ids }))
        .collect();
    let data = serde_json::json!({ "events": events });
    frame("pusher_internal:watchlist_events", None, Some(&data.to_string()))
}

pub fn cache_miss(channel: &str) -> String {
    frame("pusher:cache_miss", Some(channel), None)
}

pub fn member_added(channel: &str, user_id: &str, user_info: &Value) -> String {
    let data = serde_json::json!({ "user_id": user_id, "user_info": user_info });
    frame("pusher_internal:member_added", Some(channel), Some(&data.to_string()))
}

pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = serde_json::json!({ "user_id": user_id });
    frame("pusher_internal:member_removed", Some(channel), Some(&data.to_string()))
}

#[cfg(test)]
mod tests {

    /// Found by the `client_frame` fuzz target: a number with more digits than an f64 holds, in
    /// a client event's data, must mean the same number once the data is written back (as the
    /// server does when it relays it). serde_json's default parsing could be one unit off in the
    /// last place; `float_roundtrip` makes it exact.
    #[test]
    fn a_long_number_in_client_event_data_survives_being_written_back() {
        let text = r#"{"event":"client-typing","channel":"private-room","data":{"t":1844674455555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555073709551616,"c":0}}"#;
        let message = parse_client_message(text).unwrap();
        let ClientMessage::ClientEvent { event, channel, data } = &message else { panic!("a client event") };
        let written = serde_json::json!({"event": event, "channel": channel, "data": data}).to_string();
        assert_eq!(parse_client_message(&written).as_ref(), Ok(&message));
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn parses_subscribe_with_auth_and_since() {
        let text = r#"{"event":"pusher:subscribe","data":{"channel":"private-a","auth":"k:s","since":"01"}}"#;
        let ClientMessage::Subscribe(req) = parse_client_message(text).unwrap() else { panic!() };
        assert_eq!(req.channel, "private-a");
        assert_eq!(req.auth.as_deref(), Some("k:s"));
        assert_eq!(req.since.as_deref(), Some("01"));
        assert_eq!(req.channel_data, None);
    }

    #[test]
    fn watchlist_events_in_the_shape_pusher_js_reads() {
        let frame: Value = serde_json::from_str(&watchlist_events(&["b", "c"], &["d"])).unwrap();
        assert_eq!(frame["event"], "pusher_internal:watchlist_events");
        assert!(frame.get("channel").is_none(), "a connection-level event");
        let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
        let expected = serde_json::json!({"events": [
            {"name": "online", "user_ids": ["b", "c"]},
            {"name": "offline", "user_ids": ["d"]},
        ]});
        assert_eq!(data, expected);
        let only_offline: Value = serde_json::from_str(&watchlist_events(&[], &["d"])).unwrap();
        assert_eq!(only_offline["data"], r#"{"events":[{"name":"offline","user_ids":["d"]}]}"#);
    }

    #[test]
    fn parses_signin() {
        let text = r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"1\"}"}}"#;
        let message = parse_client_message(text).unwrap();
        assert_eq!(message, ClientMessage::Signin { auth: "k:s".into(), user_data: r#"{"id":"1"}"#.into() });
        assert_eq!(
            parse_client_message(r#"{"event":"pusher:signin","data":{"auth":"k:s"}}"#),
            Err(FrameError::InvalidData("pusher:signin"))
        );
        let success: Value = serde_json::from_str(&signin_success(r#"{"id":"1"}"#)).unwrap();
        assert_eq!(success["event"], "pusher:signin_success");
        let data: Value = serde_json::from_str(success["data"].as_str().unwrap()).unwrap();
        assert_eq!(data, json!({"user_data": r#"{"id":"1"}"#}));
    }

    #[test]
    fn parses_data_sent_as_a_string() {
        let text = r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#;
        assert!(matches!(parse_client_message(text).unwrap(), ClientMessage::Subscribe(r) if r.channel == "a"));
    }

    #[test]
    fn refuses_bad_frames_with_a_reason() {
        assert_eq!(parse_client_message("{nope"), Err(FrameError::Malformed));
        assert_eq!(parse_client_message(r#"{"data":1}"#), Err(FrameError::Malformed));
        assert_eq!(
            parse_client_message(r#"{"event":"pusher:bogus"}"#),
            Err(FrameError::UnknownPusherEvent("pusher:bogus".into()))
        );
        assert_eq!(
            parse_client_message(r#"{"event":"pusher:subscribe","data":{}}"#),
            Err(FrameError::InvalidData("pusher:subscribe"))
        );
        assert_eq!(parse_client_message(r#"{"event":"client-x","data":{}}"#), Err(FrameError::InvalidClientEvent));
        assert_eq!(parse_client_message(r#"{"event":"hello","channel":"a"}"#), Err(FrameError::InvalidClientEvent));
    }

    #[test]
    fn client_event_data_becomes_a_string() {
        assert_eq!(client_event_data(&json!({"a":1})), r#"{"a":1}"#);
        assert_eq!(client_event_data(&json!("text")), "text");
    }

    /// `write_event_frame` writes what serde writes for `Frame`, escapes included, with and
    /// without an id and a user id, and `event_frame_capacity` is enough when nothing is escaped.
    #[test]
    fn event_frames_are_written_as_serde_writes_them() {
        let texts =
            ["", "e", "private-orders.42", "quote \" back\\slash", "tab\t nul\u{0} del\u{7f}", "é ü 漢字 🙂 \u{2028}"];
        let ids = [None, Some(EventId::new(1_764_000_000_000, 123_456)), Some(EventId::new(0, 1))];
        let cases = texts.iter().flat_map(|event| texts.iter().map(move |channel| (*event, *channel)));
        for (event, channel) in cases {
            for (data, id, user_id) in texts.iter().flat_map(|data| {
                ids.iter()
                    .flat_map(move |id| [None, Some("7"), Some("a \"user\"")].map(|user_id| (*data, *id, user_id)))
            }) {
                let serde =
                    serde_json::to_string(&Frame { event, channel: Some(channel), data: Some(data), id, user_id })
                        .unwrap();
                let written = event_frame(event, channel, data, id, user_id);
                assert_eq!(written, serde);
                let plain = [event, channel, data, user_id.unwrap_or_default()]
                    .iter()
                    .all(|text| !text.chars().any(|c| c == '"' || c == '\\' || c.is_control()));
                if plain {
                    assert!(written.len() <= event_frame_capacity(event, channel, data, user_id), "{written}");
                }
            }
        }
    }

    /// Golden frames: clients parse these exact shapes.
    #[test]
    fn server_frames_have_pushers_shape() {
        assert_eq!(
            connection_established("1.2", 30),
            r#"{"event":"pusher:connection_established","data":"{\"activity_timeout\":30,\"socket_id\":\"1.2\"}"}"#
        );
        assert_eq!(
            error(Some(ErrorCode::ApplicationDoesNotExist), "Application does not exist"),
            r#"{"event":"pusher:error","data":"{\"code\":4001,\"message\":\"Application does not exist\"}"}"#
        );
        assert_eq!(pong(), r#"{"event":"pusher:pong","data":"{}"}"#);
        let id = EventId::new(1, 1);
        assert_eq!(
            event_frame("e", "c", "{\"x\":1}", Some(id), None),
            format!(r#"{{"event":"e","channel":"c","data":"{{\"x\":1}}","id":"{id}"}}"#)
        );
        assert_eq!(
            event_frame("client-e", "presence-c", "d", None, Some("7")),
            r#"{"event":"client-e","channel":"presence-c","data":"d","user_id":"7"}"#
        );
        assert_eq!(cache_miss("cache-a"), r#"{"event":"pusher:cache_miss","channel":"cache-a"}"#);
        assert_eq!(skipped("c", id), format!(r#"{{"event":"pusher_internal:skipped","channel":"c","id":"{id}"}}"#));
        assert_eq!(
            member_removed("presence-a", "7"),
            r#"{"event":"pusher_internal:member_removed","channel":"presence-a","data":"{\"user_id\":\"7\"}"}"#
        );
    }
}

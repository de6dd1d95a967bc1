//! The bus message: what [`super::RedisLog`]'s append script publishes on `{prefix}:bus` for every
//! event it appends, in the same atomic step, so the live bus and the log never disagree on order.
//!
//! A JSON object written by Redis's cjson:
//!
//! ```text
//! {"k":"ev","a":"<app>","c":"<channel>","s":"<seq>","t":"<timestamp ms>","e":"<event>","d":"<data>",
//!  "u":"<user id>","x":"<socket id not to deliver to>"}
//! ```
//!
//! `u` and `x` are absent when there is none. Sequences and times are strings: Lua numbers are
//! doubles, and cjson would print a large one as `1.7e+15`. Other nodes publish other kinds (`k`)
//! on the same channel; [`parse_bus_message`] ignores them.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

use crate::{EventId, LogKey};

/// The `k` of an appended event.
const EVENT_KIND: &str = "ev";

/// One appended event as the bus carries it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BusEvent {
    #[serde(rename = "a")]
    pub app: String,
    #[serde(rename = "c")]
    pub channel: String,
    #[serde(rename = "s", deserialize_with = "u64_from_text")]
    pub seq: u64,
    #[serde(rename = "t", deserialize_with = "u64_from_text")]
    pub timestamp_ms: u64,
    #[serde(rename = "e")]
    pub event: String,
    #[serde(rename = "d")]
    pub data: String,
    #[serde(rename = "u", default)]
    pub user_id: Option<String>,
    /// The socket that published it as a client event (or named itself in the HTTP API's
    /// `socket_id`), which must not get it back.
    #[serde(rename = "x", default)]
    pub except_socket: Option<String>,
}

impl BusEvent {
    /// The event's id, the same on every node.
    pub fn id(&self) -> EventId {
        EventId::new(self.timestamp_ms, self.seq)
    }

    /// The log the event was appended to.
    pub fn key(&self) -> LogKey {
        LogKey::new(self.app.as_str(), self.channel.as_str())
    }
}

/// Decodes a bus message; None for another kind of message or one that does not parse.
pub fn parse_bus_message(payload: &[u8]) -> Option<BusEvent> {
    #[derive(Deserialize)]
    struct Kind<'a> {
        #[serde(borrow)]
        k: Cow<'a, str>,
    }
    let kind: Kind<'_> = serde_json::from_slice(payload).ok()?;
    if kind.k != EVENT_KIND {
        return None;
    }
    serde_json::from_slice(payload).ok()
}

fn u64_from_text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let text = Cow::<'de, str>::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape the append script writes, with a sequence above 2^53 / 1000 (a seeded one) and
    /// escapes cjson produces.
    #[test]
    fn an_event_message_decodes() {
        let payload = br#"{"k":"ev","a":"app","c":"presence-room","s":"1731000000123456","t":"1731000000123","e":"client-typing","d":"{\"on\":true,\"path\":\"a\/b\"}","u":"42","x":"1.2"}"#;
        let event = parse_bus_message(payload).expect("decodes");
        assert_eq!(event.key(), LogKey::new("app", "presence-room"));
        assert_eq!(event.id(), EventId::new(1_731_000_000_123, 1_731_000_000_123_456));
        assert_eq!(event.data, r#"{"on":true,"path":"a/b"}"#);
        assert_eq!((event.user_id.as_deref(), event.except_socket.as_deref()), (Some("42"), Some("1.2")));
        let bare = parse_bus_message(br#"{"k":"ev","a":"a","c":"c","s":"1","t":"2","e":"e","d":""}"#).unwrap();
        assert_eq!((bare.user_id, bare.except_socket), (None, None));
    }

    /// Other kinds share the channel (the cluster's presence and control messages): not events.
    #[test]
    fn other_kinds_and_garbage_are_ignored() {
        assert_eq!(parse_bus_message(br#"{"k":"presence","a":"app","c":"c","s":"1","t":"2","e":"e","d":""}"#), None);
        assert_eq!(parse_bus_message(br#"{"a":"app","c":"c","s":"1","t":"2","e":"e","d":""}"#), None);
        assert_eq!(parse_bus_message(br#"{"k":"ev","a":"app","c":"c","s":"1.7e+15","t":"2","e":"e","d":""}"#), None);
        assert_eq!(parse_bus_message(b"not json"), None);
    }
}

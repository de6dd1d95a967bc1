//! What the nodes of a cluster tell each other on the bus (one Redis pub/sub channel per cluster,
//! `{prefix}:bus`): JSON objects told apart by `k`.
//!
//! `ev` (a logged event) is published by the shared log's append script, atomically with the
//! append; the other kinds are published by the node where they happen. Sequences and timestamps
//! travel as strings: Lua numbers are doubles and print big ones in exponent form.

use serde::{Deserialize, Serialize};

/// One bus message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum BusMessage {
    /// A logged event, appended to the shared log: every node fans it out in sequence order.
    #[serde(rename = "ev")]
    Event {
        #[serde(rename = "a")]
        app: String,
        #[serde(rename = "c")]
        channel: String,
        #[serde(rename = "s", with = "number_as_string")]
        seq: u64,
        #[serde(rename = "t", with = "number_as_string")]
        timestamp_ms: u64,
        #[serde(rename = "e")]
        event: String,
        #[serde(rename = "d")]
        data: String,
        #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        /// The socket that must not receive it (`socket_id` of the publish: `toOthers`).
        #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
        except_socket: Option<String>,
    },
    /// An unlogged client event (a whisper), relayed to the channel's subscribers on every node.
    #[serde(rename = "cev")]
    ClientEvent {
        #[serde(rename = "a")]
        app: String,
        #[serde(rename = "c")]
        channel: String,
        #[serde(rename = "e")]
        event: String,
        #[serde(rename = "d")]
        data: String,
        #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        #[serde(rename = "x")]
        except_socket: String,
    },
    /// A user's first socket anywhere in the cluster joined a presence channel.
    #[serde(rename = "pa")]
    MemberAdded {
        #[serde(rename = "a")]
        app: String,
        #[serde(rename = "c")]
        channel: String,
        #[serde(rename = "u")]
        user_id: String,
        /// The member's `user_info`, as JSON text.
        #[serde(rename = "i")]
        user_info: String,
        /// The joining socket, which is not told about itself.
        #[serde(rename = "x")]
        except_socket: String,
    },
    /// A user's last socket anywhere in the cluster left a presence channel.
    #[serde(rename = "pr")]
    MemberRemoved {
        #[serde(rename = "a")]
        app: String,
        #[serde(rename = "c")]
        channel: String,
        #[serde(rename = "u")]
        user_id: String,
    },
    /// A user came online (their first socket anywhere in the cluster signed in) or went
    /// offline (their last one went, or its node died): published by the sign-in scripts, with
    /// the change's version, for watchlists.
    #[serde(rename = "user")]
    UserStatus {
        #[serde(rename = "a")]
        app: String,
        #[serde(rename = "u")]
        user_id: String,
        #[serde(rename = "o")]
        online: bool,
        #[serde(rename = "v", with = "number_as_string")]
        version: u64,
    },
    /// `terminate_connections`: every node closes the user's sockets.
    #[serde(rename = "term")]
    Terminate {
        #[serde(rename = "a")]
        app: String,
        #[serde(rename = "u")]
        user_id: String,
    },
}

impl BusMessage {
    /// Parses a bus payload; None for anything this build does not know (a newer node's kind).
    pub fn parse(payload: &[u8]) -> Option<BusMessage> {
        serde_json::from_slice(payload).ok()
    }

    /// The kind, as the `reprise_cluster_bus_messages_total` label names it.
    pub fn kind(&self) -> &'static str {
        match self {
            BusMessage::Event { .. } => "event",
            BusMessage::ClientEvent { .. } => "client_event",
            BusMessage::MemberAdded { .. } => "member_added",
            BusMessage::MemberRemoved { .. } => "member_removed",
            BusMessage::Terminate { .. } => "terminate",
            BusMessage::UserStatus { .. } => "user_status",
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("bus messages are plain strings and numbers")
    }
}

/// `"123"` <-> 123, for numbers a Lua script writes.
mod number_as_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape the shared log's Lua script publishes, big sequences included, parses.
    #[test]
    fn an_appended_event_from_lua_parses() {
        let payload = br#"{"k":"ev","a":"app","c":"orders","s":"1764000000123456","t":"1764000000123","e":"e","d":"{\"x\":1}","x":"1.2"}"#;
        let Some(BusMessage::Event { seq, timestamp_ms, data, except_socket, user_id, .. }) =
            BusMessage::parse(payload)
        else {
            panic!("an event")
        };
        assert_eq!((seq, timestamp_ms), (1_764_000_000_123_456, 1_764_000_000_123));
        assert_eq!((data.as_str(), except_socket.as_deref(), user_id), ("{\"x\":1}", Some("1.2"), None));
    }

    /// The shape the sign-in scripts publish (cjson, the version as a string) parses.
    #[test]
    fn an_online_change_from_lua_parses() {
        let payload = br#"{"u":"ann","k":"user","a":"app","o":true,"v":"1764000000123457"}"#;
        let expected = BusMessage::UserStatus {
            app: "app".into(),
            user_id: "ann".into(),
            online: true,
            version: 1_764_000_000_123_457,
        };
        assert_eq!(BusMessage::parse(payload), Some(expected));
    }

    #[test]
    fn every_kind_round_trips_and_unknown_kinds_are_ignored() {
        let messages = [
            BusMessage::ClientEvent {
                app: "a".into(),
                channel: "private-c".into(),
                event: "client-typing".into(),
                data: "{}".into(),
                user_id: Some("7".into()),
                except_socket: "1.2".into(),
            },
            BusMessage::MemberAdded {
                app: "a".into(),
                channel: "presence-c".into(),
                user_id: "7".into(),
                user_info: "{\"name\":\"Ann\"}".into(),
                except_socket: "1.2".into(),
            },
            BusMessage::MemberRemoved { app: "a".into(), channel: "presence-c".into(), user_id: "7".into() },
            BusMessage::Terminate { app: "a".into(), user_id: "7".into() },
            BusMessage::UserStatus { app: "a".into(), user_id: "7".into(), online: false, version: 2 },
        ];
        for message in messages {
            assert_eq!(BusMessage::parse(message.to_json().as_bytes()), Some(message));
        }
        assert_eq!(BusMessage::parse(br#"{"k":"from-the-future"}"#), None);
        assert_eq!(BusMessage::parse(b"not json"), None);
    }
}

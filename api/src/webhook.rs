//! Webhooks as Pusher sends them: the events, the body (`{"time_ms":..,"events":[..]}`) and its
//! signature (`X-Pusher-Signature`: hex HMAC-SHA256 of the raw body with the app secret), so the
//! official server SDKs (`pusher.webhook(...)`, `Pusher::webhook()` in PHP) verify them.

use serde::{Deserialize, Serialize};

use crate::signature;

/// The header that names the app key the body was signed for.
pub const KEY_HEADER: &str = "X-Pusher-Key";
/// The header that carries the body's signature.
pub const SIGNATURE_HEADER: &str = "X-Pusher-Signature";
/// Reprise's stable id of one webhook request: the same on every retry of it, so a receiver can
/// drop a duplicate (delivery is at least once).
pub const ID_HEADER: &str = "X-Reprise-Webhook-Id";

/// One event of a webhook, with Pusher's names for the event and its fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum WebhookEvent {
    /// The channel got its first subscriber.
    ChannelOccupied { channel: String },
    /// The channel lost its last subscriber.
    ChannelVacated { channel: String },
    /// A user's first socket joined the presence channel.
    MemberAdded { channel: String, user_id: String },
    /// A user's last socket left the presence channel.
    MemberRemoved { channel: String, user_id: String },
    /// A client event (`client-*`) was sent on a private or presence channel. `data` is the
    /// event's data as a string, as Pusher sends it; `user_id` only on presence channels.
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    /// A socket subscribed to a cache channel that has no last event.
    CacheMiss { channel: String },
    /// The channel's number of subscriptions changed.
    SubscriptionCount { channel: String, subscription_count: u64 },
}

/// The event types, as `event_types` in a target's configuration names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WebhookKind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
    SubscriptionCount,
}

impl WebhookKind {
    pub const ALL: [WebhookKind; 7] = [
        WebhookKind::ChannelOccupied,
        WebhookKind::ChannelVacated,
        WebhookKind::MemberAdded,
        WebhookKind::MemberRemoved,
        WebhookKind::ClientEvent,
        WebhookKind::CacheMiss,
        WebhookKind::SubscriptionCount,
    ];

    /// Pusher's name of the event type (the `name` field of an event).
    pub fn name(self) -> &'static str {
        match self {
            WebhookKind::ChannelOccupied => "channel_occupied",
            WebhookKind::ChannelVacated => "channel_vacated",
            WebhookKind::MemberAdded => "member_added",
            WebhookKind::MemberRemoved => "member_removed",
            WebhookKind::ClientEvent => "client_event",
            WebhookKind::CacheMiss => "cache_miss",
            WebhookKind::SubscriptionCount => "subscription_count",
        }
    }

    pub fn parse(name: &str) -> Option<WebhookKind> {
        WebhookKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// A bit of its own, so a set of kinds is one integer (checked on the hot path).
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl WebhookEvent {
    pub fn kind(&self) -> WebhookKind {
        match self {
            WebhookEvent::ChannelOccupied { .. } => WebhookKind::ChannelOccupied,
            WebhookEvent::ChannelVacated { .. } => WebhookKind::ChannelVacated,
            WebhookEvent::MemberAdded { .. } => WebhookKind::MemberAdded,
            WebhookEvent::MemberRemoved { .. } => WebhookKind::MemberRemoved,
            WebhookEvent::ClientEvent { .. } => WebhookKind::ClientEvent,
            WebhookEvent::CacheMiss { .. } => WebhookKind::CacheMiss,
            WebhookEvent::SubscriptionCount { .. } => WebhookKind::SubscriptionCount,
        }
    }

    pub fn channel(&self) -> &str {
        match self {
            WebhookEvent::ChannelOccupied { channel }
            | WebhookEvent::ChannelVacated { channel }
            | WebhookEvent::MemberAdded { channel, .. }
            | WebhookEvent::MemberRemoved { channel, .. }
            | WebhookEvent::ClientEvent { channel, .. }
            | WebhookEvent::CacheMiss { channel }
            | WebhookEvent::SubscriptionCount { channel, .. } => channel,
        }
    }
}

/// The body of one webhook request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookBody {
    /// When the webhook was created (Unix time, ms): a receiver can tell a late retry.
    pub time_ms: u64,
    pub events: Vec<WebhookEvent>,
}

impl WebhookBody {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a webhook body always serialises")
    }
}

/// `X-Pusher-Signature` of a raw body: hex HMAC-SHA256 with the app secret.
pub fn sign_body(secret: &str, raw_body: &str) -> String {
    signature::sign(secret, raw_body)
}

/// Checks a body's signature in constant time (what a receiver does).
pub fn verify_body(secret: &str, raw_body: &str, signature_hex: &str) -> bool {
    signature::verify(secret, raw_body, signature_hex)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// pusher-http-node's own webhook test: this body, key 123456789 and secret "beef" carry this
    /// signature, which its `isValid()` accepts.
    #[test]
    fn the_signature_matches_the_pusher_node_sdk_fixture() {
        let body = r#"{"time_ms":1403175510755,"events":[{"channel":"test_channel","name":"channel_vacated"}]}"#;
        let expected = "df1465f5ff93f83238152fd002cb904f9562d39569e68f00a6bfa0d8ccf88334";
        assert_eq!(sign_body("beef", body), expected);
        assert!(verify_body("beef", body, expected));
        assert!(!verify_body("not-beef", body, expected));
    }

    /// pusher-http-php's webhook test: secret "thisisasecret" over `{"hello":"world"}`.
    #[test]
    fn the_signature_matches_the_pusher_php_sdk_fixture() {
        let expected = "40e0ad3b9aa49529322879e84de1aaaf18bde1efe839ca263d540cc865510d25";
        assert_eq!(sign_body("thisisasecret", r#"{"hello":"world"}"#), expected);
    }

    /// Every event has Pusher's documented fields, and nothing else.
    #[test]
    fn events_have_pushers_field_names() {
        let body = WebhookBody {
            time_ms: 1_327_078_148_132,
            events: vec![
                WebhookEvent::ChannelOccupied { channel: "test_channel".into() },
                WebhookEvent::ChannelVacated { channel: "test_channel".into() },
                WebhookEvent::MemberAdded { channel: "presence-r".into(), user_id: "1".into() },
                WebhookEvent::MemberRemoved { channel: "presence-r".into(), user_id: "1".into() },
                WebhookEvent::ClientEvent {
                    channel: "private-c".into(),
                    event: "client-typing".into(),
                    data: r#"{"a":1}"#.into(),
                    socket_id: "1.2".into(),
                    user_id: None,
                },
                WebhookEvent::ClientEvent {
                    channel: "presence-r".into(),
                    event: "client-typing".into(),
                    data: "{}".into(),
                    socket_id: "1.2".into(),
                    user_id: Some("7".into()),
                },
                WebhookEvent::CacheMiss { channel: "cache-c".into() },
                WebhookEvent::SubscriptionCount { channel: "c".into(), subscription_count: 3 },
            ],
        };
        let value: Value = serde_json::from_str(&body.to_json()).unwrap();
        assert_eq!(
            value,
            json!({
                "time_ms": 1_327_078_148_132_u64,
                "events": [
                    { "name": "channel_occupied", "channel": "test_channel" },
                    { "name": "channel_vacated", "channel": "test_channel" },
                    { "name": "member_added", "channel": "presence-r", "user_id": "1" },
                    { "name": "member_removed", "channel": "presence-r", "user_id": "1" },
                    { "name": "client_event", "channel": "private-c", "event": "client-typing",
                      "data": "{\"a\":1}", "socket_id": "1.2" },
                    { "name": "client_event", "channel": "presence-r", "event": "client-typing",
                      "data": "{}", "socket_id": "1.2", "user_id": "7" },
                    { "name": "cache_miss", "channel": "cache-c" },
                    { "name": "subscription_count", "channel": "c", "subscription_count": 3 },
                ]
            })
        );
        let back: WebhookBody = serde_json::from_value(value).unwrap();
        assert_eq!(back, body);
        for event in &body.events {
            assert_eq!(WebhookKind::parse(event.kind().name()), Some(event.kind()));
        }
    }

    #[test]
    fn kinds_have_distinct_bits() {
        let all = WebhookKind::ALL.iter().fold(0u8, |bits, kind| {
            assert_eq!(bits & kind.bit(), 0);
            bits | kind.bit()
        });
        assert_eq!(all.count_ones(), 7);
        assert_eq!(WebhookKind::parse("nope"), None);
    }
}

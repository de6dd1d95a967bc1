//! The Pusher protocol as the load generator speaks it: the benchmark payload, the subscribe
//! frame, and classifying what a server sends.
//!
//! Every benchmark event carries `data = "rl:{seq}:{sent_ns}:{padding}"`: the publisher's own
//! per-channel sequence number and its send time. Receivers find them with one substring search in
//! the raw frame bytes, whatever the server's field order, so no frame is parsed as JSON on the hot
//! path. Reprise also puts its event `id` (a ULID whose low 64 bits are the channel sequence) in the
//! frame; it is read the same way when present, so the same code measures servers without it.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use reprise_api::EventId;
use serde_json::Value;

/// The name of every event the load generator publishes.
pub const EVENT_NAME: &str = "bench";

/// Opens the payload inside the frame: the quote that starts the `data` string, then the tag.
static PAYLOAD_MARK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"rl:"));
/// Reprise's event id field; its value is a 26-character ULID.
static ID_MARK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"id\":\""));
static EVENT_MARK: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"event\":\""));

/// Length of an event id (a ULID string).
pub const ID_LEN: usize = 26;
/// The cursor "before the channel's first event": a since that replays the whole channel.
pub const BEFORE_FIRST_ID: &str = "00000000000000000000000000";

/// The `data` of benchmark event `seq`, sent at `sent_ns`, padded with `x` to `size` bytes.
pub fn payload(seq: u64, sent_ns: u64, size: usize) -> String {
    let mut data = format!("rl:{seq}:{sent_ns}:");
    while data.len() < size {
        data.push('x');
    }
    data
}

/// `pusher:subscribe`, resuming after `since` when given (Reprise's replay extension).
pub fn subscribe(channel: &str, since: Option<&str>) -> String {
    match since {
        Some(since) => {
            format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}","since":"{since}"}}}}"#)
        }
        None => format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#),
    }
}

pub const PONG: &str = r#"{"event":"pusher:pong","data":{}}"#;

/// The replay block of Reprise's `subscription_succeeded` (absent on other servers).
#[derive(Debug, Default, Clone)]
pub struct ReplayBlock {
    pub recovered: Option<bool>,
    pub count: Option<u64>,
}

/// What one server text frame is, as far as the load generator cares.
pub enum Incoming<'a> {
    /// A benchmark event: the publisher's sequence and send time, and Reprise's id if present.
    Event {
        seq: u64,
        sent_ns: u64,
        id: Option<&'a [u8]>,
    },
    ConnectionEstablished,
    SubscriptionSucceeded(ReplayBlock),
    /// `pusher:ping`: answer with [`PONG`] or be disconnected.
    Ping,
    /// `pusher:error` or `pusher:subscription_error`: the whole frame, for the report.
    Error(String),
    Other,
}

/// Classifies a text frame. Benchmark events (the hot path) cost one or two substring searches.
pub fn classify(frame: &[u8]) -> Incoming<'_> {
    if let Some(at) = PAYLOAD_MARK.find(frame) {
        let rest = &frame[at + 4..];
        let (seq, rest) = leading_number(rest);
        let (sent_ns, _) = leading_number(rest.get(1..).unwrap_or_default());
        let id = ID_MARK.find(frame).and_then(|at| frame.get(at + 6..at + 6 + ID_LEN));
        return Incoming::Event { seq, sent_ns, id };
    }
    let Some(at) = EVENT_MARK.find(frame) else { return Incoming::Other };
    let name = &frame[at + 9..];
    let name = &name[..memchr::memchr(b'"', name).unwrap_or(name.len())];
    match name {
        b"pusher:connection_established" => Incoming::ConnectionEstablished,
        b"pusher_internal:subscription_succeeded" => Incoming::SubscriptionSucceeded(replay_block(frame)),
        b"pusher:ping" => Incoming::Ping,
        b"pusher:error" | b"pusher:subscription_error" => Incoming::Error(String::from_utf8_lossy(frame).into_owned()),
        _ => Incoming::Other,
    }
}

/// The decimal number at the start of `bytes` (0 if none), and what follows it.
fn leading_number(bytes: &[u8]) -> (u64, &[u8]) {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let value = bytes[..digits].iter().fold(0u64, |n, &d| n.wrapping_mul(10).wrapping_add(u64::from(d - b'0')));
    (value, &bytes[digits..])
}

/// Reads the replay block out of a `subscription_succeeded` (rare: once per subscribe).
fn replay_block(frame: &[u8]) -> ReplayBlock {
    let data: Option<Value> = serde_json::from_slice::<Value>(frame).ok().and_then(|frame| match &frame["data"] {
        Value::String(text) => serde_json::from_str(text).ok(),
        other => Some(other.clone()),
    });
    let Some(replay) = data.as_ref().map(|data| &data["replay"]) else { return ReplayBlock::default() };
    ReplayBlock { recovered: replay["recovered"].as_bool(), count: replay["count"].as_u64() }
}

/// The per-channel sequence inside a Reprise event id.
pub fn id_seq(id: &[u8]) -> Option<u64> {
    std::str::from_utf8(id).ok()?.parse::<EventId>().ok().map(EventId::seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_found_in_any_field_order() {
        let id = EventId::new(1_700_000_000_000, 7).to_string();
        let data = payload(7, 123_456, 40);
        assert_eq!(data.len(), 40);
        let reprise = format!(r#"{{"event":"bench","channel":"c","data":"{data}","id":"{id}"}}"#);
        let Incoming::Event { seq, sent_ns, id: Some(found) } = classify(reprise.as_bytes()) else { panic!() };
        assert_eq!((seq, sent_ns, id_seq(found)), (7, 123_456, Some(7)));
        let reverb = format!(r#"{{"event":"bench","data":"{data}","channel":"c"}}"#);
        assert!(matches!(classify(reverb.as_bytes()), Incoming::Event { seq: 7, sent_ns: 123_456, id: None }));
    }

    #[test]
    fn protocol_frames_are_told_apart() {
        let ok = r#"{"event":"pusher_internal:subscription_succeeded","channel":"c","data":"{\"replay\":{\"head\":\"01\",\"recovered\":true,\"count\":3}}"}"#;
        let Incoming::SubscriptionSucceeded(block) = classify(ok.as_bytes()) else { panic!() };
        assert_eq!((block.recovered, block.count), (Some(true), Some(3)));
        assert!(matches!(classify(br#"{"event":"pusher:ping","data":"{}"}"#), Incoming::Ping));
        assert!(matches!(classify(br#"{"event":"pusher:error","data":"{}"}"#), Incoming::Error(_)));
        assert!(matches!(
            classify(br#"{"event":"pusher:connection_established","data":"{}"}"#),
            Incoming::ConnectionEstablished
        ));
    }
}

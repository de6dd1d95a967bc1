//! `EventId`: the id of a logged event, both a time-ordered cursor and a contiguity check.
//!
//! An id is a ULID (26 Crockford base32 characters, 128 bits) whose layout Reprise fixes:
//!
//! ```text
//! | 48 bits: append time, ms since the Unix epoch | 16 bits: zero | 64 bits: per-channel sequence |
//! ```
//!
//! The time never decreases within a channel (a clock that steps back reuses the channel's last time)
//! and the sequence grows by exactly one per event, starting at 1. So ids sort like ULIDs, and a client
//! that sees sequence `n + 2` right after `n` knows it missed an event. Any other ULID still parses
//! (a cursor from somewhere else); the server then simply finds it does not belong to the channel.

use std::fmt;
use std::str::FromStr;

use ulid::Ulid;

/// The id of one logged event. Ordered like the ULID it wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(Ulid);

/// A string that is not a ULID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid event id (expected a 26-character ULID)")]
pub struct ParseEventIdError;

impl EventId {
    /// The largest time a ULID can carry (48 bits of milliseconds).
    pub const MAX_TIMESTAMP_MS: u64 = (1 << 48) - 1;

    /// The id of the event with sequence `seq` appended at `timestamp_ms`.
    ///
    /// Times past the 48-bit range are clamped (that is the year 10889).
    pub fn new(timestamp_ms: u64, seq: u64) -> Self {
        let time = u128::from(timestamp_ms.min(Self::MAX_TIMESTAMP_MS));
        EventId(Ulid((time << 80) | u128::from(seq)))
    }

    /// The per-channel sequence number (1 for a channel's first event).
    pub fn seq(self) -> u64 {
        // The low 64 bits; the mask makes the narrowing lossless by construction.
        u64::try_from(self.0.0 & u128::from(u64::MAX)).expect("masked to 64 bits")
    }

    /// The append time in milliseconds since the Unix epoch.
    pub fn timestamp_ms(self) -> u64 {
        self.0.timestamp_ms()
    }

    /// The 16 big-endian bytes, which sort like the id.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.0.to_be_bytes()
    }

    /// The id whose big-endian bytes these are.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        EventId(Ulid(u128::from_be_bytes(bytes)))
    }

    /// The id's 26 characters, written into `buffer`: what `Display` shows, without going
    /// through a formatter.
    pub fn encode(self, buffer: &mut [u8; Self::TEXT_LEN]) -> &str {
        self.0.array_to_str(buffer)
    }

    /// How many characters an id has.
    pub const TEXT_LEN: usize = ulid::ULID_LEN;
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode(&mut [0; Self::TEXT_LEN]))
    }
}

impl FromStr for EventId {
    type Err = ParseEventIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // 26 base32 characters hold 130 bits; a first character above '7' would overflow 128 bits,
        // which the ulid crate does not reject on its own.
        if !matches!(s.as_bytes().first(), Some(b'0'..=b'7')) {
            return Err(ParseEventIdError);
        }
        Ulid::from_string(s).map(EventId).map_err(|_| ParseEventIdError)
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.encode(&mut [0; Self::TEXT_LEN]))
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trips_time_and_sequence() {
        let id = EventId::new(1_764_000_000_123, 42);
        assert_eq!(id.timestamp_ms(), 1_764_000_000_123);
        assert_eq!(id.seq(), 42);
        let text = id.to_string();
        assert_eq!(text.len(), 26);
        assert_eq!(text.parse::<EventId>().unwrap(), id);
        assert_eq!(EventId::from_bytes(id.to_bytes()), id);
    }

    #[test]
    fn ids_order_by_time_then_sequence() {
        let a = EventId::new(1000, 7);
        let b = EventId::new(1000, 8);
        let c = EventId::new(1001, 9);
        assert!(a < b && b < c);
        assert!(a.to_bytes() < b.to_bytes() && b.to_bytes() < c.to_bytes());
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in
            ["", "123", "not-a-ulid-at-all-xxxxxxxxx", "01ARZ3NDEKTSV4RRFFQ69G5FAVX", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ"]
        {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn serde_uses_the_ulid_string() {
        let id = EventId::new(5, 1);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<EventId>(&json).unwrap(), id);
    }
}

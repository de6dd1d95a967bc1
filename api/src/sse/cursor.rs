//! The composite cursor of a stream: where every channel of the stream stands, in one SSE `id`,
//! so that the `Last-Event-ID` a browser sends back resumes each channel exactly.
//!
//! A stream's channels are its `channel` parameters, sorted and each once; the cursor holds one
//! event id per channel, in that order: the last event of the channel the client was given, the
//! channel's head when the stream started there, or the zero id (`EventId::new(0, 0)`, "before
//! the first event") for a channel that had none. Every id is kept whole (time and sequence), so
//! a resume is checked exactly as a WebSocket `since` is (a cursor from before a loss or from
//! another channel is not taken for this channel's).
//!
//! Text form: base64url (no padding) of
//!
//! ```text
//! | version: 1 byte (1) | channel-set fingerprint: 4 bytes | per channel, in order:              |
//! |                     | (FNV-1a 32 of the names joined  |   time delta, ms: zigzag varint    |
//! |                     |  by "\n", big-endian)           |   (from the previous id's, or 0)   |
//! |                     |                                 |   sequence: varint                 |
//! ```
//!
//! About 10 bytes for the first channel and 3 to 5 per further channel (their times are close),
//! so a cursor for three channels is some 30 characters, where three ULIDs would be 80. The
//! version byte makes the first character `A`, which no ULID starts with (a ULID starts with a
//! digit), so `since` can take either without ambiguity. The fingerprint makes a cursor for
//! another set of channels an error rather than a silent misreading.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::{ChannelName, EventId};

const VERSION: u8 = 1;
/// Version and fingerprint.
const HEADER_BYTES: usize = 5;

/// Why a cursor is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error(
        "not a stream cursor (expected the id of an event of this stream, or one event id for a one-channel stream)"
    )]
    Malformed,
    #[error("the cursor was made by a newer or older server and cannot be read")]
    UnknownVersion,
    #[error("the cursor was issued for another set of channels")]
    OtherChannels,
}

/// FNV-1a (32 bits) of the channel names joined by `\n`: tells channel sets apart, no secret.
fn fingerprint(channels: &[ChannelName]) -> [u8; 4] {
    let mut hash: u32 = 0x811c_9dc5;
    for (index, channel) in channels.iter().enumerate() {
        let separator: &[u8] = if index == 0 { b"" } else { b"\n" };
        for &byte in separator.iter().chain(channel.as_str().as_bytes()) {
            hash ^= u32::from(byte);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash.to_be_bytes()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(u8::try_from(value & 0x7f).expect("masked to 7 bits") | 0x80);
        value >>= 7;
    }
    out.push(u8::try_from(value).expect("below 0x80"));
}

fn take_varint(bytes: &mut &[u8]) -> Result<u64, CursorError> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first().ok_or(CursorError::Malformed)?;
        *bytes = rest;
        let low = u64::from(byte & 0x7f);
        if shift == 63 && low > 1 {
            return Err(CursorError::Malformed); // over 64 bits
        }
        value |= low << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(CursorError::Malformed)
}

fn zigzag(delta: i64) -> u64 {
    ((delta << 1) ^ (delta >> 63)).cast_unsigned()
}

fn unzigzag(value: u64) -> i64 {
    (value >> 1).cast_signed() ^ -(value & 1).cast_signed()
}

/// The cursor text for `positions` (one per channel of `channels`, the stream's sorted channels).
pub fn encode(channels: &[ChannelName], positions: &[EventId]) -> String {
    let mut text = String::new();
    CursorWriter::new(channels).write(&mut text, positions);
    text
}

/// Writes the cursors of one stream: the fingerprint is computed once and the buffers are
/// reused, so the cursor of each event a stream sends costs no allocation.
#[derive(Debug)]
pub struct CursorWriter {
    fingerprint: [u8; 4],
    bytes: Vec<u8>,
}

impl CursorWriter {
    pub fn new(channels: &[ChannelName]) -> CursorWriter {
        CursorWriter {
            fingerprint: fingerprint(channels),
            bytes: Vec::with_capacity(HEADER_BYTES + 12 * channels.len()),
        }
    }

    /// Replaces `text` with the cursor for `positions` (one per channel, in the stream's order).
    pub fn write(&mut self, text: &mut String, positions: &[EventId]) {
        self.bytes.clear();
        self.bytes.push(VERSION);
        self.bytes.extend_from_slice(&self.fingerprint);
        let mut previous_ms: i64 = 0;
        for position in positions {
            // Times are at most 48 bits, so they and their differences fit an i64.
            let ms = i64::try_from(position.timestamp_ms()).expect("48-bit time");
            put_varint(&mut self.bytes, zigzag(ms - previous_ms));
            put_varint(&mut self.bytes, position.seq());
            previous_ms = ms;
        }
        text.clear();
        URL_SAFE_NO_PAD.encode_string(&self.bytes, text);
    }
}

/// The positions a cursor holds for `channels` (the stream's sorted channels).
pub fn decode(text: &str, channels: &[ChannelName]) -> Result<Vec<EventId>, CursorError> {
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| CursorError::Malformed)?;
    let (&version, rest) = bytes.split_first().ok_or(CursorError::Malformed)?;
    if version != VERSION {
        return Err(CursorError::UnknownVersion);
    }
    let (print, mut rest) = rest.split_at_checked(HEADER_BYTES - 1).ok_or(CursorError::Malformed)?;
    if print != fingerprint(channels) {
        return Err(CursorError::OtherChannels);
    }
    let mut positions = Vec::with_capacity(channels.len());
    let mut previous_ms: i64 = 0;
    while !rest.is_empty() {
        let ms = previous_ms.checked_add(unzigzag(take_varint(&mut rest)?)).ok_or(CursorError::Malformed)?;
        let seq = take_varint(&mut rest)?;
        let time =
            u64::try_from(ms).ok().filter(|&ms| ms <= EventId::MAX_TIMESTAMP_MS).ok_or(CursorError::Malformed)?;
        positions.push(EventId::new(time, seq));
        previous_ms = ms;
    }
    if positions.len() != channels.len() {
        return Err(CursorError::OtherChannels);
    }
    Ok(positions)
}

/// A `since` or `Last-Event-ID`: a cursor of this stream, or, for a one-channel stream, one
/// event id (a ULID from the HTTP API or a WebSocket frame).
pub fn parse_since(text: &str, channels: &[ChannelName]) -> Result<Vec<EventId>, CursorError> {
    if channels.len() == 1
        && let Ok(id) = text.parse::<EventId>()
    {
        return Ok(vec![id]);
    }
    decode(text, channels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<ChannelName> {
        names.iter().map(|n| ChannelName::parse(n).unwrap()).collect()
    }

    #[test]
    fn a_cursor_round_trips_every_position_exactly() {
        let channels = names(&["orders.1", "orders.2", "private-orders.3"]);
        let positions = [EventId::new(1_764_000_000_123, 42), EventId::new(0, 0), EventId::new(1_764_000_000_100, 7)];
        let text = encode(&channels, &positions);
        assert!(text.starts_with('A'), "{text}");
        assert!(text.len() < 40, "compact: {text} ({} characters)", text.len());
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "URL-safe: {text}");
        assert_eq!(decode(&text, &channels).unwrap(), positions);
        assert_eq!(parse_since(&text, &channels).unwrap(), positions);
    }

    #[test]
    fn extreme_ids_round_trip() {
        let channels = names(&["a", "b"]);
        let positions = [EventId::new(EventId::MAX_TIMESTAMP_MS, u64::MAX), EventId::new(0, 1)];
        assert_eq!(decode(&encode(&channels, &positions), &channels).unwrap(), positions);
    }

    /// A cursor is for one set of channels: another set (one more, one fewer, another name) is
    /// refused rather than resuming the wrong channels.
    #[test]
    fn a_cursor_for_other_channels_is_refused() {
        let text = encode(&names(&["a", "b"]), &[EventId::new(1, 1), EventId::new(1, 2)]);
        for other in [names(&["a"]), names(&["a", "c"]), names(&["a", "b", "c"]), names(&["b", "a"])] {
            assert_eq!(decode(&text, &other), Err(CursorError::OtherChannels), "{other:?}");
        }
    }

    #[test]
    fn malformed_cursors_are_refused() {
        let channels = names(&["a"]);
        let good = encode(&channels, &[EventId::new(9, 9)]);
        for bad in ["", "!!!!", "A", &good[..good.len() - 1], &format!("{good}AAAA"), "AQID"] {
            assert!(decode(bad, &channels).is_err(), "{bad:?} should be refused");
        }
        let future = URL_SAFE_NO_PAD.encode([2, 0, 0, 0, 0]);
        assert_eq!(decode(&future, &channels), Err(CursorError::UnknownVersion));
    }

    /// One channel: a plain event id works as `since` too; with several it is refused.
    #[test]
    fn a_one_channel_stream_takes_an_event_id() {
        let id = EventId::new(1_764_000_000_000, 3);
        assert_eq!(parse_since(&id.to_string(), &names(&["a"])).unwrap(), vec![id]);
        assert!(parse_since(&id.to_string(), &names(&["a", "b"])).is_err());
    }

    #[test]
    fn zigzag_round_trips() {
        for delta in [0, 1, -1, 63, -64, i64::from(i32::MAX), -(1 << 48), 1 << 48] {
            assert_eq!(unzigzag(zigzag(delta)), delta);
        }
    }
}

//! The on-disk encoding of records, and nothing else: the only module that knows it.
//!
//! Every record is one format-version byte ([`EVENT_FORMAT_VERSION`], [`META_FORMAT_VERSION`])
//! followed by the bincode 2 (standard config: varint integers) encoding of that version's record
//! struct. A reader decodes every version it knows (event records of version 1 are still read)
//! and refuses a version it does not know ([`StorageError::UnsupportedFormat`]) instead of
//! misreading a newer layout; truncated or trailing bytes are [`StorageError::Corrupt`].
//!
//! The watermark file ([`crate::watermark`]) has a fixed-size layout of its own, also here
//! ([`encode_watermark`]): it is overwritten in place, so its size never changes, and it carries a
//! CRC-32 because, unlike sled's records, nothing else checks it.
//!
//! Event and channel records carry no checksum of their own: sled 0.34 stores every page update as
//! a log message with a CRC-32 over its header and body (and a CRC-32 over every blob file), checks
//! it on every read from disk, and treats a mismatch as the end of the log (at recovery) or as
//! corruption (when a page is read later). A second checksum per record would check the same
//! bytes again. What sled's check cannot see is that a damaged log silently ends early; the
//! watermark is for that.
//!
//! Decoding borrows strings straight from the stored bytes: besides saving a copy, that means a
//! corrupt length prefix fails as "not enough bytes" instead of making bincode allocate whatever size
//! it claims.

use serde::{Deserialize, Serialize};

use crate::{EventId, StorageError};

/// The version of the event records this build writes. Version 2 added `user_id`.
pub(crate) const EVENT_FORMAT_VERSION: u8 = 2;
/// The version of the channel records this build writes.
pub(crate) const META_FORMAT_VERSION: u8 = 1;
/// The version of the log-wide totals record this build writes.
pub(crate) const TOTALS_FORMAT_VERSION: u8 = 2;
/// The version of the watermark slots this build writes.
pub(crate) const WATERMARK_FORMAT_VERSION: u8 = 1;
/// The size of one watermark slot: magic (2), version (1), zero (1), CRC-32 (4), generation (8),
/// appends (8), latest time (8).
pub(crate) const WATERMARK_SLOT_BYTES: usize = 32;
/// Starts every watermark slot, so a slot never written (zeros) is told apart from a damaged one.
const WATERMARK_MAGIC: [u8; 2] = *b"RW";

/// One event's stored value (version 1). The id is not stored: it is part of the key.
#[derive(Serialize, Deserialize)]
struct EventRecordV1<'a> {
    event: &'a str,
    data: &'a str,
}

/// One event's stored value (version 2): version 1 and the sender of a client event.
#[derive(Serialize, Deserialize)]
struct EventRecordV2<'a> {
    event: &'a str,
    data: &'a str,
    user_id: Option<&'a str>,
}

/// An event record as the backend uses it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct EventRecord {
    pub(crate) event: String,
    pub(crate) data: String,
    pub(crate) user_id: Option<String>,
}

/// A channel's stored metadata (version 1).
#[derive(Serialize, Deserialize)]
struct ChannelMetaV1 {
    channel_id: u64,
    compacted_through: Option<[u8; 16]>,
    head: Option<[u8; 16]>,
}

/// A channel's metadata as the backend uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChannelMeta {
    /// The short id that prefixes the channel's event keys; allocated once, never reused.
    pub(crate) channel_id: u64,
    /// The highest id ever removed by compaction.
    pub(crate) compacted_through: Option<EventId>,
    /// The head as of the last compaction (it may have removed the newest event, whose key then no
    /// longer tells the head). Later appends are newer; the real head is the max of both.
    pub(crate) head: Option<EventId>,
}

/// The log-wide totals (version 1).
#[derive(Serialize, Deserialize)]
struct TotalsV1 {
    appends: u64,
    max_time_ms: u64,
    lost_through_ms: Option<u64>,
}

/// The log-wide totals (version 2): version 1 and the events held.
#[derive(Serialize, Deserialize)]
struct TotalsV2 {
    appends: u64,
    max_time_ms: u64,
    lost_through_ms: Option<u64>,
    held: u64,
}

/// What the whole log has seen, stored in the same sled batch as every append.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    /// Events ever appended (never decreases, also across compactions).
    pub(crate) appends: u64,
    /// The latest timestamp of any id handed out.
    pub(crate) max_time_ms: u64,
    /// Set when a data loss was accepted: every id that may have been handed out and lost has a
    /// timestamp at or below this, and every id handed out since has a later one.
    pub(crate) lost_through_ms: Option<u64>,
    /// Events the log holds now: appended or imported, not yet compacted away. Written in the same
    /// batch as the events it counts. None when read from a version 1 record, which did not
    /// count them (the log then counts them once when it opens).
    pub(crate) held: Option<u64>,
}

/// One slot of the watermark file: how far appends had been made durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WatermarkSlot {
    /// Grows by one per write; the valid slot with the highest generation is the current one.
    pub(crate) generation: u64,
    /// [`Totals::appends`] as of a completed flush.
    pub(crate) appends: u64,
    /// [`Totals::max_time_ms`] as of the same flush.
    pub(crate) max_time_ms: u64,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Most bytes bincode's standard configuration gives a length or an option tag: a varint `u64`
/// takes at most 9, a tag 1.
const MAX_LENGTH_BYTES: usize = 9;
/// Room for a record of integers and ids only (channel meta, totals: at most 1 + 4 x 17 bytes).
const FIXED_RECORD_BYTES: usize = 72;

/// `capacity`: the encoded size, or more, so that the buffer is allocated once (growing it from
/// the version byte cost four reallocations per event: callgrind, docs/benchmarks.md, round
/// two, fifth pass).
fn encode<T: Serialize>(version: u8, record: &T, capacity: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(capacity);
    bytes.push(version);
    bincode::serde::encode_into_std_write(record, &mut bytes, config())
        .expect("strings, integers and byte arrays always encode, and a Vec never fails to grow");
    bytes
}

/// Splits a record into its version byte and its body.
fn split_version<'a>(what: &str, bytes: &'a [u8]) -> Result<(u8, &'a [u8]), StorageError> {
    let (&version, body) = bytes.split_first().ok_or_else(|| StorageError::Corrupt(format!("empty {what} record")))?;
    Ok((version, body))
}

/// Decodes a record's body, which must be consumed exactly.
fn decode_body<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, StorageError> {
    let (record, read) = bincode::serde::borrow_decode_from_slice(body, config())
        .map_err(|error| StorageError::Corrupt(format!("{what} record: {error}")))?;
    if read != body.len() {
        return Err(StorageError::Corrupt(format!("{what} record: {} trailing bytes", body.len() - read)));
    }
    Ok(record)
}

pub(crate) fn encode_event(event: &str, data: &str, user_id: Option<&str>) -> Vec<u8> {
    encode(EVENT_FORMAT_VERSION, &EventRecordV2 { event, data, user_id }, event_capacity(event, data, user_id))
}

/// The most bytes an event's record takes: the version byte, the strings, and a length or tag
/// before each.
fn event_capacity(event: &str, data: &str, user_id: Option<&str>) -> usize {
    1 + event.len() + data.len() + user_id.map_or(0, str::len) + 3 * MAX_LENGTH_BYTES
}

pub(crate) fn decode_event(bytes: &[u8]) -> Result<EventRecord, StorageError> {
    let owned = |event: &str, data: &str, user_id: Option<&str>| EventRecord {
        event: event.to_owned(),
        data: data.to_owned(),
        user_id: user_id.map(str::to_owned),
    };
    match split_version("event", bytes)? {
        (1, body) => decode_body("event", body).map(|r: EventRecordV1<'_>| owned(r.event, r.data, None)),
        (2, body) => decode_body("event", body).map(|r: EventRecordV2<'_>| owned(r.event, r.data, r.user_id)),
        (version, _) => Err(StorageError::UnsupportedFormat(version)),
    }
}

pub(crate) fn encode_meta(meta: &ChannelMeta) -> Vec<u8> {
    encode(
        META_FORMAT_VERSION,
        &ChannelMetaV1 {
            channel_id: meta.channel_id,
            compacted_through: meta.compacted_through.map(EventId::to_bytes),
            head: meta.head.map(EventId::to_bytes),
        },
        FIXED_RECORD_BYTES,
    )
}

pub(crate) fn decode_meta(bytes: &[u8]) -> Result<ChannelMeta, StorageError> {
    let record: ChannelMetaV1 = match split_version("channel", bytes)? {
        (META_FORMAT_VERSION, body) => decode_body("channel", body)?,
        (version, _) => return Err(StorageError::UnsupportedFormat(version)),
    };
    Ok(ChannelMeta {
        channel_id: record.channel_id,
        compacted_through: record.compacted_through.map(EventId::from_bytes),
        head: record.head.map(EventId::from_bytes),
    })
}

/// Encodes the totals. `held` must be known by then (see [`Totals::held`]).
pub(crate) fn encode_totals(totals: &Totals) -> Vec<u8> {
    encode(
        TOTALS_FORMAT_VERSION,
        &TotalsV2 {
            appends: totals.appends,
            max_time_ms: totals.max_time_ms,
            lost_through_ms: totals.lost_through_ms,
            held: totals.held.expect("the log counts the events it holds when it opens"),
        },
        FIXED_RECORD_BYTES,
    )
}

pub(crate) fn decode_totals(bytes: &[u8]) -> Result<Totals, StorageError> {
    match split_version("totals", bytes)? {
        (1, body) => decode_body("totals", body).map(|r: TotalsV1| Totals {
            appends: r.appends,
            max_time_ms: r.max_time_ms,
            lost_through_ms: r.lost_through_ms,
            held: None,
        }),
        (2, body) => decode_body("totals", body).map(|r: TotalsV2| Totals {
            appends: r.appends,
            max_time_ms: r.max_time_ms,
            lost_through_ms: r.lost_through_ms,
            held: Some(r.held),
        }),
        (version, _) => Err(StorageError::UnsupportedFormat(version)),
    }
}

/// The CRC-32 of a slot: everything but the CRC field itself.
fn watermark_crc(bytes: &[u8; WATERMARK_SLOT_BYTES]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&bytes[..4]);
    hasher.update(&bytes[8..]);
    hasher.finalize()
}

pub(crate) fn encode_watermark(slot: &WatermarkSlot) -> [u8; WATERMARK_SLOT_BYTES] {
    let mut bytes = [0; WATERMARK_SLOT_BYTES];
    bytes[..2].copy_from_slice(&WATERMARK_MAGIC);
    bytes[2] = WATERMARK_FORMAT_VERSION;
    bytes[8..16].copy_from_slice(&slot.generation.to_le_bytes());
    bytes[16..24].copy_from_slice(&slot.appends.to_le_bytes());
    bytes[24..32].copy_from_slice(&slot.max_time_ms.to_le_bytes());
    let crc = watermark_crc(&bytes);
    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
    bytes
}

/// A slot, or None if it was never written or is damaged (a torn write, a flipped bit).
pub(crate) fn decode_watermark(bytes: &[u8; WATERMARK_SLOT_BYTES]) -> Result<Option<WatermarkSlot>, StorageError> {
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if bytes[..2] != WATERMARK_MAGIC || crc != watermark_crc(bytes) {
        return Ok(None);
    }
    if bytes[2] != WATERMARK_FORMAT_VERSION {
        return Err(StorageError::UnsupportedFormat(bytes[2]));
    }
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    Ok(Some(WatermarkSlot { generation: u64_at(8), appends: u64_at(16), max_time_ms: u64_at(24) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_round_trips_with_the_version_byte_first() {
        for user_id in [None, Some("42")] {
            let bytes = encode_event("message", "{\"text\":\"héllo\"}", user_id);
            assert_eq!(bytes[0], EVENT_FORMAT_VERSION);
            let record = decode_event(&bytes).unwrap();
            assert_eq!(record.event, "message");
            assert_eq!(record.data, "{\"text\":\"héllo\"}");
            assert_eq!(record.user_id.as_deref(), user_id);
        }
    }

    /// Each record is encoded into the buffer it was given: none grows (and so reallocates) on
    /// the way, whatever the sizes of its strings.
    #[test]
    fn records_are_encoded_without_growing_their_buffer() {
        for (event, data, user_id) in [
            ("", "", None),
            ("message", "x", Some("user-1")),
            ("e", &"d".repeat(200)[..], None),
            (&"n".repeat(200)[..], &"d".repeat(70_000)[..], Some(&"u".repeat(300)[..])),
        ] {
            let bytes = encode_event(event, data, user_id);
            assert_eq!(bytes.capacity(), event_capacity(event, data, user_id), "{} bytes", bytes.len());
        }
        let id = Some(EventId::new(u64::MAX >> 16, u64::MAX));
        let meta = encode_meta(&ChannelMeta { channel_id: u64::MAX, compacted_through: id, head: id });
        assert_eq!(meta.capacity(), FIXED_RECORD_BYTES);
        let totals =
            Totals { appends: u64::MAX, max_time_ms: u64::MAX, lost_through_ms: Some(u64::MAX), held: Some(u64::MAX) };
        assert_eq!(encode_totals(&totals).capacity(), FIXED_RECORD_BYTES);
    }

    /// Logs written before version 2 stay readable.
    #[test]
    fn version_1_events_are_read_without_a_user_id() {
        let bytes = encode(1, &EventRecordV1 { event: "message", data: "d" }, 0);
        let record = decode_event(&bytes).unwrap();
        assert_eq!(record, EventRecord { event: "message".into(), data: "d".into(), user_id: None });
    }

    #[test]
    fn meta_round_trips() {
        for meta in [
            ChannelMeta { channel_id: 0, compacted_through: None, head: None },
            ChannelMeta {
                channel_id: u64::MAX,
                compacted_through: Some(EventId::new(1_764_000_000_000, 7)),
                head: Some(EventId::new(1_764_000_000_001, 9)),
            },
        ] {
            assert_eq!(decode_meta(&encode_meta(&meta)).unwrap(), meta);
        }
    }

    /// Guards against a newer release's records being misread as a known version.
    #[test]
    fn unknown_version_is_unsupported_not_corrupt() {
        let mut bytes = encode_event("e", "d", None);
        bytes[0] = 3;
        assert!(matches!(decode_event(&bytes), Err(StorageError::UnsupportedFormat(3))));
        let mut bytes = encode_meta(&ChannelMeta { channel_id: 1, compacted_through: None, head: None });
        bytes[0] = 0;
        assert!(matches!(decode_meta(&bytes), Err(StorageError::UnsupportedFormat(0))));
    }

    #[test]
    fn truncated_empty_and_trailing_bytes_are_corrupt() {
        let bytes = encode_event("message", "some data", Some("7"));
        for cut in 0..bytes.len() {
            assert!(
                matches!(decode_event(&bytes[..cut]), Err(StorageError::Corrupt(_))),
                "a record cut to {cut} bytes must be corrupt"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode_event(&longer), Err(StorageError::Corrupt(_))));

        let meta = encode_meta(&ChannelMeta {
            channel_id: 3,
            compacted_through: Some(EventId::new(1, 1)),
            head: Some(EventId::new(2, 2)),
        });
        for cut in 0..meta.len() {
            assert!(matches!(decode_meta(&meta[..cut]), Err(StorageError::Corrupt(_))));
        }
    }

    /// A garbage length prefix must fail cleanly, not make the decoder allocate what it claims.
    #[test]
    fn huge_claimed_length_is_corrupt_without_allocating() {
        // A version, then a varint u64 marker (253) claiming a string of u64::MAX bytes.
        let mut bytes = vec![EVENT_FORMAT_VERSION, 253];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        assert!(matches!(decode_event(&bytes), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn invalid_utf8_is_corrupt() {
        let mut bytes = encode_event("ab", "", None);
        // [version, len 2, 'a', 'b', len 0]: break the event name.
        bytes[2] = 0xff;
        assert!(matches!(decode_event(&bytes), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn totals_round_trip() {
        for totals in [
            Totals { held: Some(0), ..Totals::default() },
            Totals {
                appends: u64::MAX,
                max_time_ms: 1_764_000_000_000,
                lost_through_ms: Some(1_764_000_000_001),
                held: Some(u64::MAX - 5),
            },
        ] {
            let bytes = encode_totals(&totals);
            assert_eq!(bytes[0], TOTALS_FORMAT_VERSION);
            assert_eq!(decode_totals(&bytes).unwrap(), totals);
        }
    }

    /// A log written before the totals counted the events it holds still opens: its totals read
    /// with the count unknown, for the log to count once.
    #[test]
    fn version_1_totals_read_without_a_held_count() {
        let mut bytes = vec![1];
        bincode::serde::encode_into_std_write(
            &TotalsV1 { appends: 9, max_time_ms: 1_764_000_000_000, lost_through_ms: None },
            &mut bytes,
            config(),
        )
        .unwrap();
        let totals = decode_totals(&bytes).unwrap();
        assert_eq!((totals.appends, totals.max_time_ms, totals.held), (9, 1_764_000_000_000, None));
    }

    #[test]
    fn watermark_slot_round_trips() {
        let slot = WatermarkSlot { generation: 7, appends: 300, max_time_ms: 1_764_000_000_000 };
        assert_eq!(decode_watermark(&encode_watermark(&slot)).unwrap(), Some(slot));
    }

    /// A torn or damaged slot must read as "no slot", never as a different watermark: the
    /// watermark decides whether the log refuses to start.
    #[test]
    fn damaged_or_blank_watermark_slots_read_as_none() {
        assert_eq!(decode_watermark(&[0; WATERMARK_SLOT_BYTES]).unwrap(), None, "never written");
        let bytes = encode_watermark(&WatermarkSlot { generation: 1, appends: 300, max_time_ms: 5 });
        for at in 0..WATERMARK_SLOT_BYTES {
            for bit in 0..8 {
                let mut damaged = bytes;
                damaged[at] ^= 1 << bit;
                assert_eq!(decode_watermark(&damaged).unwrap(), None, "bit {bit} of byte {at} flipped");
            }
        }
        let mut torn = bytes;
        torn[16..].fill(0);
        assert_eq!(decode_watermark(&torn).unwrap(), None, "half written");
    }

    #[test]
    fn unknown_watermark_version_is_unsupported() {
        let mut bytes = encode_watermark(&WatermarkSlot { generation: 1, appends: 2, max_time_ms: 3 });
        bytes[2] = 9;
        let crc = watermark_crc(&bytes);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode_watermark(&bytes), Err(StorageError::UnsupportedFormat(9))));
    }
}

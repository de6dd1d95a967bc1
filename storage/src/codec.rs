//! The on-disk encoding of records, and nothing else: the only module that knows it.
//!
//! Every record is one format-version byte ([`EVENT_FORMAT_VERSION`], [`META_FORMAT_VERSION`])
//! followed by the bincode 2 (standard config: varint integers) encoding of that version's record
//! struct. A reader decodes every version it knows (event records of version 1 are still read)
//! and refuses a version it does not know ([`StorageError::UnsupportedFormat`]) instead of
//! misreading a newer layout; truncated or trailing bytes are [`StorageError::Corrupt`].
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

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn encode<T: Serialize>(version: u8, record: &T) -> Vec<u8> {
    let mut bytes = vec![version];
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
    encode(EVENT_FORMAT_VERSION, &EventRecordV2 { event, data, user_id })
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

    /// Logs written before version 2 stay readable.
    #[test]
    fn version_1_events_are_read_without_a_user_id() {
        let bytes = encode(1, &EventRecordV1 { event: "message", data: "d" });
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
}

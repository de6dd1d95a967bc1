//! The on-disk encoding of records, and nothing else: the only module that knows it.
//!
//! Every record is one format-version byte ([`FORMAT_VERSION`]) followed by the bincode 2 (standard
//! config: varint integers) encoding of that version's record struct. A reader refuses a version it
//! does not know ([`StorageError::UnsupportedFormat`]) instead of misreading a newer layout, and
//! truncated or trailing bytes are [`StorageError::Corrupt`].
//!
//! Decoding borrows strings straight from the stored bytes: besides saving a copy, that means a
//! corrupt length prefix fails as "not enough bytes" instead of making bincode allocate whatever size
//! it claims.

use serde::{Deserialize, Serialize};

use crate::{EventId, StorageError};

/// The format version written by this build.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// One event's stored value (version 1). The id is not stored: it is part of the key.
#[derive(Serialize, Deserialize)]
struct EventRecordV1<'a> {
    event: &'a str,
    data: &'a str,
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

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut bytes = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(record, &mut bytes, config())
        .expect("strings, integers and byte arrays always encode, and a Vec never fails to grow");
    bytes
}

/// Checks the version byte and decodes the rest, which must be consumed exactly.
fn decode<'a, T: Deserialize<'a>>(what: &str, bytes: &'a [u8]) -> Result<T, StorageError> {
    let (&version, body) = bytes.split_first().ok_or_else(|| StorageError::Corrupt(format!("empty {what} record")))?;
    if version != FORMAT_VERSION {
        return Err(StorageError::UnsupportedFormat(version));
    }
    let (record, read) = bincode::serde::borrow_decode_from_slice(body, config())
        .map_err(|error| StorageError::Corrupt(format!("{what} record: {error}")))?;
    if read != body.len() {
        return Err(StorageError::Corrupt(format!("{what} record: {} trailing bytes", body.len() - read)));
    }
    Ok(record)
}

pub(crate) fn encode_event(event: &str, data: &str) -> Vec<u8> {
    encode(&EventRecordV1 { event, data })
}

/// The event name and data of a stored event.
pub(crate) fn decode_event(bytes: &[u8]) -> Result<(String, String), StorageError> {
    let record: EventRecordV1<'_> = decode("event", bytes)?;
    Ok((record.event.to_owned(), record.data.to_owned()))
}

pub(crate) fn encode_meta(meta: &ChannelMeta) -> Vec<u8> {
    encode(&ChannelMetaV1 {
        channel_id: meta.channel_id,
        compacted_through: meta.compacted_through.map(EventId::to_bytes),
        head: meta.head.map(EventId::to_bytes),
    })
}

pub(crate) fn decode_meta(bytes: &[u8]) -> Result<ChannelMeta, StorageError> {
    let record: ChannelMetaV1 = decode("channel", bytes)?;
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
        let bytes = encode_event("message", "{\"text\":\"héllo\"}");
        assert_eq!(bytes[0], FORMAT_VERSION);
        let (event, data) = decode_event(&bytes).unwrap();
        assert_eq!(event, "message");
        assert_eq!(data, "{\"text\":\"héllo\"}");
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

    /// Guards against a newer release's records being misread as version 1.
    #[test]
    fn unknown_version_is_unsupported_not_corrupt() {
        let mut bytes = encode_event("e", "d");
        bytes[0] = 2;
        assert!(matches!(decode_event(&bytes), Err(StorageError::UnsupportedFormat(2))));
        let mut bytes = encode_meta(&ChannelMeta { channel_id: 1, compacted_through: None, head: None });
        bytes[0] = 0;
        assert!(matches!(decode_meta(&bytes), Err(StorageError::UnsupportedFormat(0))));
    }

    #[test]
    fn truncated_empty_and_trailing_bytes_are_corrupt() {
        let bytes = encode_event("message", "some data");
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
        // Version 1, then a varint u64 marker (253) claiming a string of u64::MAX bytes.
        let mut bytes = vec![FORMAT_VERSION, 253];
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        bytes.extend_from_slice(b"abc");
        assert!(matches!(decode_event(&bytes), Err(StorageError::Corrupt(_))));
    }

    #[test]
    fn invalid_utf8_is_corrupt() {
        let mut bytes = encode_event("ab", "");
        // [version, len 2, 'a', 'b', len 0]: break the event name.
        bytes[2] = 0xff;
        assert!(matches!(decode_event(&bytes), Err(StorageError::Corrupt(_))));
    }
}

//! The on-disk record codec (`storage/src/codec.rs`): decoding arbitrary bytes never panics (a
//! record is read or refused as `Corrupt` / `UnsupportedFormat`), and a record read, written
//! again, reads the same. Arbitrary fields, encoded then decoded, come back unchanged.
//!
//! The first byte picks the case: `e` / `m` decode the rest as an event / channel record;
//! `E` encodes an event whose fields are the rest split on NUL bytes; `M` encodes channel
//! metadata taken from the rest's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_api::EventId;
use reprise_storage::StorageError;
use reprise_storage::fuzzing::{decode_event, decode_meta, encode_event, encode_meta};

fuzz_target!(|bytes: &[u8]| {
    let Some((&which, rest)) = bytes.split_first() else { return };
    match which {
        b'e' => match decode_event(rest) {
            Ok(record) => {
                let written = encode_event(&record.0, &record.1, record.2.as_deref());
                assert_eq!(decode_event(&written).ok(), Some(record), "{rest:?} read, written as {written:?}");
            }
            Err(error) => assert_refused(&error),
        },
        b'm' => match decode_meta(rest) {
            Ok(meta) => {
                let written = encode_meta(meta);
                assert_eq!(decode_meta(&written).ok(), Some(meta), "{rest:?} read, written as {written:?}");
            }
            Err(error) => assert_refused(&error),
        },
        b'E' => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            let mut fields = text.split('\0');
            let event = fields.next().unwrap_or_default();
            let data = fields.next().unwrap_or_default();
            let user_id = fields.next();
            let written = encode_event(event, data, user_id);
            let read = decode_event(&written).expect("what was written reads back");
            assert_eq!((read.0.as_str(), read.1.as_str(), read.2.as_deref()), (event, data, user_id));
        }
        b'M' => {
            let channel_id = rest.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            let id = |offset: usize| {
                let bytes: [u8; 16] = rest.get(offset..offset + 16)?.try_into().ok()?;
                Some(EventId::from_bytes(bytes))
            };
            let meta = (channel_id, id(8), id(24));
            let read = decode_meta(&encode_meta(meta)).expect("what was written reads back");
            assert_eq!(read, meta);
        }
        _ => {}
    }
});

/// A refused record says why in the codec's own terms, never as a backend or key error.
fn assert_refused(error: &StorageError) {
    assert!(
        matches!(error, StorageError::Corrupt(_) | StorageError::UnsupportedFormat(_)),
        "decoding refused with {error:?}"
    );
}

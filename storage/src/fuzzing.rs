//! The codec's entry points for the fuzz targets in `fuzz/` (which cannot reach a private
//! module). Not part of the crate's API: hidden from its docs, and nothing else may use it.

use crate::{EventId, StorageError, codec};

/// An event record's fields: event name, data, sender.
pub type EventFields = (String, String, Option<String>);
/// A channel record's fields: channel id, `compacted_through`, head.
pub type MetaFields = (u64, Option<EventId>, Option<EventId>);

pub fn encode_event(event: &str, data: &str, user_id: Option<&str>) -> Vec<u8> {
    codec::encode_event(event, data, user_id)
}

pub fn decode_event(bytes: &[u8]) -> Result<EventFields, StorageError> {
    codec::decode_event(bytes).map(|record| (record.event, record.data, record.user_id))
}

pub fn encode_meta((channel_id, compacted_through, head): MetaFields) -> Vec<u8> {
    codec::encode_meta(&codec::ChannelMeta { channel_id, compacted_through, head })
}

pub fn decode_meta(bytes: &[u8]) -> Result<MetaFields, StorageError> {
    codec::decode_meta(bytes).map(|meta| (meta.channel_id, meta.compacted_through, meta.head))
}

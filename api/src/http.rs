//! Pusher HTTP API payloads (requests and responses), plus Reprise's addition: the ids a publish
//! was logged under. The history and compaction payloads are in [`crate::history`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::EventId;

/// The most channels one `POST /events` may name (Pusher's limit).
pub const MAX_CHANNELS_PER_EVENT: usize = 100;
/// The most events one `POST /batch_events` may carry (Pusher's limit).
pub const MAX_BATCH_EVENTS: usize = 10;

/// `POST /apps/{id}/events`.
#[derive(Debug, Clone, Deserialize)]
pub struct TriggerRequest {
    pub name: String,
    /// Pusher requires a string; SDKs JSON-encode objects themselves. A non-string is encoded here.
    #[serde(deserialize_with = "data_as_string")]
    pub data: String,
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    #[serde(default)]
    pub channel: Option<String>,
    /// Exclude this socket from the fan-out (the sender's own socket, "toOthers").
    #[serde(default)]
    pub socket_id: Option<String>,
    /// Comma-separated attributes to return per channel: `subscription_count`, `user_count`.
    #[serde(default)]
    pub info: Option<String>,
}

impl TriggerRequest {
    /// The channels named by `channels` or `channel`, each once, in the order given.
    pub fn channel_names(&self) -> Vec<&str> {
        let given = match (&self.channels, &self.channel) {
            (Some(channels), _) => channels.as_slice(),
            (None, Some(channel)) => std::slice::from_ref(channel),
            (None, None) => &[],
        };
        let mut names: Vec<&str> = Vec::with_capacity(given.len());
        for name in given {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        names
    }
}

/// One item of `POST /apps/{id}/batch_events`.
#[derive(Debug, Clone, Deserialize)]
pub struct BatchEvent {
    pub name: String,
    #[serde(deserialize_with = "data_as_string")]
    pub data: String,
    pub channel: String,
    #[serde(default)]
    pub socket_id: Option<String>,
    #[serde(default)]
    pub info: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchRequest {
    pub batch: Vec<BatchEvent>,
}

fn data_as_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(s) => s,
        other => other.to_string(),
    })
}

/// The attributes a publish's `info` asked for, per channel.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChannelInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occupied: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_count: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_count: Option<usize>,
    /// `info=cache` on a cache channel: the cached event, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CachedEvent>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CachedEvent {
    pub event: String,
    pub data: String,
}

/// Which attributes `info=a,b` asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InfoRequest {
    pub subscription_count: bool,
    pub user_count: bool,
    pub cache: bool,
}

impl InfoRequest {
    pub fn parse(info: Option<&str>) -> Self {
        let mut request = InfoRequest::default();
        for attribute in info.unwrap_or_default().split(',').map(str::trim) {
            match attribute {
                "subscription_count" => request.subscription_count = true,
                "user_count" => request.user_count = true,
                "cache" => request.cache = true,
                _ => {}
            }
        }
        request
    }
}

/// The answer to `POST /events`: `{}` for plain Pusher clients, plus `channels` when `info` was
/// given and Reprise's `ids` (the id each channel logged the event under).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TriggerResponse {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub channels: BTreeMap<String, ChannelInfo>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ids: BTreeMap<String, EventId>,
}

/// Writes the answer to a publish that asked for no `info`: byte for byte what a
/// [`TriggerResponse`] holding only these `ids` serialises to (the channels in its map's order),
/// without building the map. Every trigger is answered, and the map and its serialisation cost
/// ~1,000 instructions more (docs/benchmarks.md, round two, eighth pass). Sorts `ids`.
pub fn write_trigger_ids(out: &mut Vec<u8>, ids: &mut [(&str, EventId)]) {
    if ids.is_empty() {
        out.extend_from_slice(b"{}");
        return;
    }
    ids.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.extend_from_slice(br#"{"ids":{"#);
    for (at, (channel, id)) in ids.iter().enumerate() {
        if at > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, channel).expect("writing to a Vec cannot fail");
        // Crockford base32: nothing to escape.
        out.extend_from_slice(b":\"");
        out.extend_from_slice(id.encode(&mut [0; EventId::TEXT_LEN]).as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"}}");
}

/// One item of the answer to `POST /batch_events`: the `info` attributes flattened (Pusher's
/// shape) and Reprise's `ids`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchItemResponse {
    #[serde(flatten)]
    pub info: ChannelInfo,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ids: BTreeMap<String, EventId>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchResponse {
    pub batch: Vec<BatchItemResponse>,
}

/// `GET /apps/{id}/channels`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChannelsResponse {
    pub channels: BTreeMap<String, ChannelInfo>,
}

/// `GET /apps/{id}/connections` (Reverb's): the app's open connections.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionsResponse {
    pub connections: usize,
}

/// `GET /apps/{id}/channels/{name}/users`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UsersResponse {
    pub users: Vec<UserEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserEntry {
    pub id: String,
}

/// Every error body: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn trigger_accepts_channel_or_channels_and_object_data() {
        let one: TriggerRequest = serde_json::from_value(json!({"name":"e","data":"x","channel":"a"})).unwrap();
        assert_eq!(one.channel_names(), vec!["a"]);
        let many: TriggerRequest =
            serde_json::from_value(json!({"name":"e","data":{"k":1},"channels":["a","b","a"]})).unwrap();
        assert_eq!(many.channel_names(), vec!["a", "b"]);
        assert_eq!(many.data, r#"{"k":1}"#);
        let none: TriggerRequest = serde_json::from_value(json!({"name":"e","data":"x"})).unwrap();
        assert!(none.channel_names().is_empty());
    }

    #[test]
    fn info_lists_attributes() {
        let info = InfoRequest::parse(Some("user_count,subscription_count"));
        assert!(info.user_count && info.subscription_count && !info.cache);
        assert_eq!(InfoRequest::parse(None), InfoRequest::default());
    }

    /// What `write_trigger_ids` writes is what serde writes for the same ids in a
    /// `TriggerResponse`: none, one, several out of order, and names that need escapes.
    #[test]
    fn trigger_ids_are_written_as_serde_writes_them() {
        let cases: [&[&str]; 4] =
            [&[], &["orders"], &["private-b", "a", "presence-c", "A", "a-"], &["q\"uote", "back\\slash", "é"]];
        for (n, names) in cases.into_iter().enumerate() {
            let mut ids: Vec<(&str, EventId)> = names
                .iter()
                .enumerate()
                .map(|(at, name)| (*name, EventId::new(1_700_000_000_000 + n as u64, at as u64)))
                .collect();
            let mut response = TriggerResponse::default();
            for (name, id) in &ids {
                response.ids.insert((*name).to_owned(), *id);
            }
            let mut written = Vec::new();
            write_trigger_ids(&mut written, &mut ids);
            assert_eq!(String::from_utf8(written).unwrap(), serde_json::to_string(&response).unwrap(), "{names:?}");
        }
    }

    #[test]
    fn plain_trigger_response_is_an_empty_object() {
        assert_eq!(serde_json::to_value(TriggerResponse::default()).unwrap(), json!({}));
        let mut response = TriggerResponse::default();
        response.ids.insert("a".into(), EventId::new(1, 1));
        response.channels.insert("a".into(), ChannelInfo { subscription_count: Some(2), ..Default::default() });
        assert_eq!(
            serde_json::to_value(response).unwrap(),
            json!({"channels":{"a":{"subscription_count":2}},"ids":{"a":EventId::new(1, 1).to_string()}})
        );
    }
}

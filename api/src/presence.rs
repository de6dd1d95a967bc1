//! Presence members: the `channel_data` a presence subscription carries, and the roster sent to a
//! new member in `subscription_succeeded`.

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// One member as its `channel_data` describes it. Pusher allows numeric ids (Laravel sends the
/// user's integer key); they are kept as strings so `1` and `"1"` are the same member.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceMember {
    pub user_id: String,
    pub user_info: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("channel_data must be a JSON object with a string or number user_id")]
pub struct InvalidChannelData;

impl PresenceMember {
    pub fn parse(channel_data: &str) -> Result<Self, InvalidChannelData> {
        #[derive(Deserialize)]
        struct Raw {
            user_id: Value,
            #[serde(default)]
            user_info: Value,
        }
        // Through `Value` first: serde would otherwise also accept a JSON array as the struct.
        let value: Value = serde_json::from_str(channel_data).map_err(|_| InvalidChannelData)?;
        if !value.is_object() {
            return Err(InvalidChannelData);
        }
        let raw: Raw = serde_json::from_value(value).map_err(|_| InvalidChannelData)?;
        let user_id = match raw.user_id {
            Value::String(s) if !s.is_empty() => s,
            Value::Number(n) => n.to_string(),
            _ => return Err(InvalidChannelData),
        };
        Ok(PresenceMember { user_id, user_info: raw.user_info })
    }
}

/// `{"presence":{"ids":[...],"hash":{id: info},"count":n}}` for `subscription_succeeded`.
pub fn roster<'a>(members: impl IntoIterator<Item = (&'a str, &'a Value)>) -> Value {
    let mut ids = Vec::new();
    let mut hash = Map::new();
    for (user_id, user_info) in members {
        ids.push(Value::String(user_id.to_owned()));
        hash.insert(user_id.to_owned(), user_info.clone());
    }
    json!({ "presence": { "count": ids.len(), "ids": ids, "hash": hash } })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_and_string_ids_are_the_same_member() {
        let a = PresenceMember::parse(r#"{"user_id":7,"user_info":{"name":"Ann"}}"#).unwrap();
        let b = PresenceMember::parse(r#"{"user_id":"7"}"#).unwrap();
        assert_eq!(a.user_id, b.user_id);
        assert_eq!(a.user_info, json!({"name":"Ann"}));
        assert_eq!(b.user_info, Value::Null);
    }

    #[test]
    fn invalid_channel_data_is_refused() {
        for bad in ["", "{}", r#"{"user_id":null}"#, r#"{"user_id":""}"#, r#"{"user_id":[1]}"#, "[1]"] {
            assert_eq!(PresenceMember::parse(bad), Err(InvalidChannelData), "{bad}");
        }
    }

    #[test]
    fn roster_has_pushers_shape() {
        let info = json!({"name":"Ann"});
        let roster = roster([("7", &info)]);
        assert_eq!(roster, json!({"presence":{"count":1,"ids":["7"],"hash":{"7":{"name":"Ann"}}}}));
    }
}

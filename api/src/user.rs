//! The user a `pusher:signin` authenticates: the `user_data` its backend signed.

use serde_json::Value;

/// Why a signin's `user_data` is refused (Pusher answers 4009, the socket stays open).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("user_data must be a JSON object with a non-empty string id")]
pub struct InvalidUserData;

/// The signed-in user's id: `user_data`'s `id`, a non-empty string. Unlike a presence
/// `user_id`, a number is refused: Pusher's user authentication requires a string id, and it
/// names the user's `#server-to-user-{id}` channel.
pub fn parse_user_id(user_data: &str) -> Result<String, InvalidUserData> {
    let data: Value = serde_json::from_str(user_data).map_err(|_| InvalidUserData)?;
    match data.get("id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        _ => Err(InvalidUserData),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_a_non_empty_string() {
        assert_eq!(parse_user_id(r#"{"id":"7","user_info":{"name":"Ann"}}"#), Ok("7".into()));
        assert_eq!(parse_user_id(r#"{"id":"é"}"#), Ok("é".into()));
    }

    #[test]
    fn invalid_user_data_is_refused() {
        for bad in ["", "{}", "[]", r#"["id"]"#, r#"{"id":7}"#, r#"{"id":""}"#, r#"{"id":null}"#, r#""id""#, "{nope"] {
            assert_eq!(parse_user_id(bad), Err(InvalidUserData), "{bad}");
        }
    }
}

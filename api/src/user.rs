//! The user a `pusher:signin` authenticates: the `user_data` its backend signed.

use serde_json::Value;

/// Most user ids a watchlist may hold: Pusher's limit.
pub const MAX_WATCHLIST_USERS: usize = 100;

/// Why a signin's `user_data` is refused (Pusher answers 4009, the socket stays open).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUserData {
    #[error("user_data must be a JSON object with a non-empty string id")]
    NoId,
    #[error("user_data's watchlist must be an array of non-empty string user ids")]
    BadWatchlist,
    #[error("user_data's watchlist has {0} user ids; the limit is 100")]
    WatchlistTooLong(usize),
}

/// What a signin's `user_data` says: who the socket is, and whom it watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUser {
    pub id: String,
    /// The user ids whose online status the socket is told (`pusher_internal:watchlist_events`),
    /// without duplicates, in the order given.
    pub watchlist: Vec<String>,
}

/// The signed-in user's id: `user_data`'s `id`, a non-empty string. Unlike a presence
/// `user_id`, a number is refused: Pusher's user authentication requires a string id, and it
/// names the user's `#server-to-user-{id}` channel.
pub fn parse_user_id(user_data: &str) -> Result<String, InvalidUserData> {
    let data: Value = serde_json::from_str(user_data).map_err(|_| InvalidUserData::NoId)?;
    id_of(&data)
}

/// The `id` of parsed user data (see [`parse_user_id`]).
fn id_of(data: &Value) -> Result<String, InvalidUserData> {
    match data.get("id") {
        Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
        _ => Err(InvalidUserData::NoId),
    }
}

/// The id and the optional `watchlist` (at most [`MAX_WATCHLIST_USERS`] string ids; a number
/// is refused, as for the id: it could never match a signed-in user).
pub fn parse_user_data(user_data: &str) -> Result<SignedUser, InvalidUserData> {
    let data: Value = serde_json::from_str(user_data).map_err(|_| InvalidUserData::NoId)?;
    let id = id_of(&data)?;
    let watchlist = match data.get("watchlist") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ids)) => {
            if ids.len() > MAX_WATCHLIST_USERS {
                return Err(InvalidUserData::WatchlistTooLong(ids.len()));
            }
            let mut watchlist: Vec<String> = Vec::with_capacity(ids.len());
            for id in ids {
                match id {
                    Value::String(id) if !id.is_empty() => {
                        if !watchlist.contains(id) {
                            watchlist.push(id.clone());
                        }
                    }
                    _ => return Err(InvalidUserData::BadWatchlist),
                }
            }
            watchlist
        }
        Some(_) => return Err(InvalidUserData::BadWatchlist),
    };
    Ok(SignedUser { id, watchlist })
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
            assert_eq!(parse_user_id(bad), Err(InvalidUserData::NoId), "{bad}");
            assert_eq!(parse_user_data(bad), Err(InvalidUserData::NoId), "{bad}");
        }
    }

    #[test]
    fn a_watchlist_is_optional_and_deduplicated() {
        let user = |watchlist: &[&str]| SignedUser {
            id: "a".into(),
            watchlist: watchlist.iter().map(|id| (*id).to_owned()).collect(),
        };
        assert_eq!(parse_user_data(r#"{"id":"a"}"#), Ok(user(&[])));
        assert_eq!(parse_user_data(r#"{"id":"a","watchlist":null}"#), Ok(user(&[])));
        assert_eq!(parse_user_data(r#"{"id":"a","watchlist":["b","c","b"]}"#), Ok(user(&["b", "c"])));
    }

    /// Pusher's limit: 100 ids pass, 101 are refused with a message that says so.
    #[test]
    fn a_watchlist_over_100_ids_or_not_of_strings_is_refused() {
        let ids = |n: usize| (0..n).map(|i| format!("\"u{i}\"")).collect::<Vec<_>>().join(",");
        let hundred = format!(r#"{{"id":"a","watchlist":[{}]}}"#, ids(100));
        assert_eq!(parse_user_data(&hundred).map(|user| user.watchlist.len()), Ok(100));
        let too_many = format!(r#"{{"id":"a","watchlist":[{}]}}"#, ids(101));
        let refused = parse_user_data(&too_many).unwrap_err();
        assert_eq!(refused, InvalidUserData::WatchlistTooLong(101));
        assert!(refused.to_string().contains("limit is 100"), "{refused}");
        for bad in [r#"{"id":"a","watchlist":"b"}"#, r#"{"id":"a","watchlist":[1]}"#, r#"{"id":"a","watchlist":[""]}"#]
        {
            assert_eq!(parse_user_data(bad), Err(InvalidUserData::BadWatchlist), "{bad}");
        }
    }
}

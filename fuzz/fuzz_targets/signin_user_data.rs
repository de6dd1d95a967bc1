//! A signin's `user_data` (`user::parse_user_id`, `user::parse_user_data`): any text is a
//! non-empty id (with a watchlist of at most 100 distinct non-empty ids) or `InvalidUserData`;
//! both parsers agree on the id; and what they accepted, written back as user data, parses to
//! the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_api::user::{MAX_WATCHLIST_USERS, parse_user_data, parse_user_id};
use serde_json::json;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let id = parse_user_id(text);
    let user = parse_user_data(text);
    if let Ok(user) = &user {
        assert_eq!(id.as_ref(), Ok(&user.id), "{text:?}: the parsers disagree on the id");
        assert!(user.watchlist.len() <= MAX_WATCHLIST_USERS, "{text:?}: {} watched", user.watchlist.len());
        for (i, watched) in user.watchlist.iter().enumerate() {
            assert!(!watched.is_empty(), "{text:?}: an empty watched id");
            assert!(!user.watchlist[..i].contains(watched), "{text:?}: {watched:?} twice");
        }
        let written = json!({"id": user.id, "watchlist": user.watchlist}).to_string();
        assert_eq!(parse_user_data(&written).as_ref(), Ok(user), "{text:?} written back as {written}");
    }
    let Ok(id) = id else { return };
    assert!(!id.is_empty(), "{text:?} gave an empty id");
    let written = json!({"id": id}).to_string();
    assert_eq!(parse_user_id(&written).as_ref(), Ok(&id), "{text:?} written back as {written}");
});

//! A signin's `user_data` (`user::parse_user_id`): any text is a non-empty id or
//! `InvalidUserData`, and the id written back as user data parses to the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_api::user::parse_user_id;
use serde_json::json;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let Ok(id) = parse_user_id(text) else { return };
    assert!(!id.is_empty(), "{text:?} gave an empty id");
    let written = json!({"id": id}).to_string();
    assert_eq!(parse_user_id(&written).as_ref(), Ok(&id), "{text:?} written back as {written}");
});

//! A presence subscription's `channel_data` (`PresenceMember::parse`): any text is a member with
//! a non-empty id or `InvalidChannelData`, and a member written back parses to the same member.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_api::presence::PresenceMember;
use serde_json::json;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let Ok(member) = PresenceMember::parse(text) else { return };
    assert!(!member.user_id.is_empty(), "{text:?} gave an empty user id");
    let written = json!({"user_id": member.user_id, "user_info": member.user_info}).to_string();
    assert_eq!(PresenceMember::parse(&written).as_ref(), Ok(&member), "{text:?} written back as {written}");
});

//! The history endpoint's query and the compact body (`api/src/history.rs`): `since` (a ULID or
//! an RFC 3339 instant), `limit`, and `POST /compact`'s rules. Any text is understood or
//! refused with a typed error, and what is understood round-trips.
//!
//! The first byte picks the parser: `s` since, `l` limit, `c` compact body; the rest is its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reprise_api::EventId;
use reprise_api::history::{CompactRequest, HistoryCursor, HistoryQueryError, MAX_PAGE_EVENTS, parse_limit};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

fuzz_target!(|bytes: &[u8]| {
    let Some((&which, rest)) = bytes.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match which {
        b's' => since(text),
        b'l' => {
            if let Ok(limit) = parse_limit(Some(text)) {
                assert!((1..=MAX_PAGE_EVENTS).contains(&limit), "{text:?} gave {limit}");
                assert_eq!(parse_limit(Some(&limit.to_string())), Ok(limit));
            }
        }
        b'c' => {
            let Ok(request) = serde_json::from_str::<CompactRequest>(text) else { return };
            if let Ok(rules) = request.rules() {
                assert!(rules.keep_last.is_some() || rules.max_age_secs.is_some() || rules.before.is_some());
                assert_eq!(rules.before.map(|id| id.to_string().parse::<EventId>()), rules.before.map(Ok));
            }
        }
        _ => {}
    }
});

fn since(text: &str) {
    match HistoryCursor::parse(Some(text)) {
        Ok(HistoryCursor::Oldest) => panic!("{text:?} parsed as no cursor"),
        Ok(HistoryCursor::After(id)) => {
            // Case-insensitive Crockford base32: the canonical (upper-case) form names the same id.
            assert_eq!(HistoryCursor::parse(Some(&id.to_string())), Ok(HistoryCursor::After(id)));
        }
        Ok(HistoryCursor::FromTime { timestamp_ms }) => {
            // The oracle: the instant the text names, floored to the millisecond, not before 1970.
            let instant = OffsetDateTime::parse(text, &Rfc3339).expect("an accepted cursor is RFC 3339");
            let nanos = instant.unix_timestamp_nanos();
            assert!(nanos >= 0, "{text:?} is before 1970 but was accepted as {timestamp_ms}");
            assert_eq!(i128::from(timestamp_ms), nanos.div_euclid(1_000_000), "{text:?}");
            // Written back in UTC, to the millisecond, it is the same cursor. (A year-9999 time
            // with a negative offset is in year 10000 in UTC, which RFC 3339 cannot write.)
            let Ok(utc) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(timestamp_ms) * 1_000_000) else {
                assert_eq!(instant.year(), 9999, "{text:?}");
                return;
            };
            let written = utc.format(&Rfc3339).expect("a year from 1970 to 9999 formats");
            assert_eq!(
                HistoryCursor::parse(Some(&written)),
                Ok(HistoryCursor::FromTime { timestamp_ms }),
                "{text:?} written back as {written}"
            );
        }
        Err(HistoryQueryError::InvalidSince(_) | HistoryQueryError::SinceBefore1970(_)) => {}
        Err(HistoryQueryError::InvalidLimit) => panic!("{text:?}: a cursor refused as a limit"),
    }
}

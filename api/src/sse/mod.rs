//! Server-Sent Events: the framing of a channel stream (`GET /app/{key}/stream`), its composite
//! cursor ([`cursor`]) and the grant that opens private channels to it ([`grant`]).
//!
//! Framing follows the HTML standard's `text/event-stream`: an event is a block of `field: value`
//! lines ended by a blank line. A value may not hold a line break, so `data` with line breaks is
//! sent as one `data:` line per line (the client joins them with `\n`), and an `id` or `event`
//! with a line break cannot be sent at all (see [`event`]).
//!
//! What a stream sends:
//!
//! | block | when |
//! |---|---|
//! | `retry: <ms>` | first, once: how long the client waits before it reconnects |
//! | `event: reprise:not_recovered` + `data: {"channel","head"}` | a resumed channel whose gap the log no longer covers, before its live events |
//! | `id: <cursor>` `event: <name>` `data: {"event","channel","data","id"}` | each logged event, in id order per channel |
//! | `event: reprise:cache_miss` + `data: {"channel"}` | a fresh cache channel that has no last event |
//! | `id: <cursor>` alone | after the start: the position of every channel, so that a reconnect resumes even if no event came |
//! | `: <comment>` | heartbeats |
//!
//! An event's `data` is the Pusher event frame the WebSocket would send, so the channel and the
//! event's own ULID are in the payload, while `id:` holds the stream's composite cursor.

pub mod cursor;
pub mod grant;

use crate::EventId;

/// The stream's own events start with this; an application should not name its events so.
pub const RESERVED_PREFIX: &str = "reprise:";
/// A resumed channel the log could not resume: what the client missed is gone.
pub const NOT_RECOVERED: &str = "reprise:not_recovered";
/// A fresh stream on a cache channel that has no last event.
pub const CACHE_MISS: &str = "reprise:cache_miss";
/// The stream cannot be served now (the server is over capacity): reconnect after `retry`.
pub const ERROR: &str = "reprise:error";

/// Appends one `field: value` line per line of `value` (split at CRLF, LF or CR, the line breaks
/// the standard recognises), so no line of `value` can end the block or start another field.
pub fn field(out: &mut String, name: &str, value: &str) {
    let mut rest = value;
    loop {
        let (line, next) = match rest.find(['\r', '\n']) {
            None => (rest, None),
            Some(at) => {
                let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
                (&rest[..at], Some(&rest[at + skip..]))
            }
        };
        out.push_str(name);
        if !line.is_empty() {
            // The client strips exactly one space after the colon, so a value that starts with
            // a space keeps it.
            out.push_str(": ");
            out.push_str(line);
        }
        out.push('\n');
        match next {
            Some(next) => rest = next,
            None => return,
        }
    }
}

/// Whether `value` can be an `id` or `event` field: one line, and (for `id`) no NUL, which makes
/// the client ignore the field.
fn is_single_line(value: &str) -> bool {
    !value.contains(['\r', '\n', '\0'])
}

/// Appends one event block: `id` (if any), `event` (if any), `data` (split into lines), and the
/// blank line that dispatches it.
///
/// An event name that is empty or not one line is left out, so the client sees the event as a
/// plain `message` (its real name is still in the data's Pusher frame): sent as it is, it would
/// break the framing.
pub fn event(out: &mut String, id: Option<&str>, name: &str, data: &str) {
    if let Some(id) = id.filter(|id| is_single_line(id)) {
        field(out, "id", id);
    }
    if !name.is_empty() && is_single_line(name) {
        field(out, "event", name);
    }
    field(out, "data", data);
    out.push('\n');
}

/// Appends a block with only an `id`: the client's last event id becomes `id`, and no event is
/// dispatched (the data buffer is empty).
pub fn position(out: &mut String, id: &str) {
    field(out, "id", id);
    out.push('\n');
}

/// Appends `retry: <ms>`: the reconnection delay the client uses from now on.
pub fn retry(out: &mut String, ms: u64) {
    out.push_str("retry: ");
    out.push_str(&ms.to_string());
    out.push_str("\n\n");
}

/// Appends a comment (one line of text): ignored by clients, it keeps proxies from timing the
/// stream out.
pub fn comment(out: &mut String, text: &str) {
    out.push_str(": ");
    out.extend(text.chars().filter(|c| !matches!(c, '\r' | '\n')));
    out.push_str("\n\n");
}

/// The data of a `reprise:not_recovered` event.
pub fn not_recovered_data(channel: &str, head: Option<EventId>) -> String {
    serde_json::json!({ "channel": channel, "head": head }).to_string()
}

/// The data of a `reprise:cache_miss` event.
pub fn cache_miss_data(channel: &str) -> String {
    serde_json::json!({ "channel": channel }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(id: Option<&str>, name: &str, data: &str) -> String {
        let mut out = String::new();
        event(&mut out, id, name, data);
        out
    }

    #[test]
    fn an_event_is_id_event_and_data_lines_then_a_blank_line() {
        assert_eq!(block(Some("A1"), "status", "{\"a\":1}"), "id: A1\nevent: status\ndata: {\"a\":1}\n\n");
    }

    /// Every line break the standard knows splits data into lines; none can end the event early
    /// or inject a field.
    #[test]
    fn multi_line_data_becomes_one_data_line_per_line() {
        assert_eq!(
            block(None, "e", "one\ntwo\r\nthree\rfour"),
            "event: e\ndata: one\ndata: two\ndata: three\ndata: four\n\n"
        );
        assert_eq!(block(None, "e", "x\n\nid: forged"), "event: e\ndata: x\ndata\ndata: id: forged\n\n");
        assert_eq!(block(None, "e", "trailing\n"), "event: e\ndata: trailing\ndata\n\n");
        assert_eq!(block(None, "e", ""), "event: e\ndata\n\n");
        assert_eq!(block(None, "e", " lead"), "event: e\ndata:  lead\n\n", "one space is stripped, the other kept");
    }

    /// A name or id that is not one line is left out rather than breaking the framing.
    #[test]
    fn names_and_ids_with_line_breaks_are_left_out() {
        assert_eq!(block(Some("a\nb"), "x\ny", "d"), "data: d\n\n");
        assert_eq!(block(Some("a\0b"), "", "d"), "data: d\n\n");
    }

    #[test]
    fn positions_comments_and_retry() {
        let mut out = String::new();
        position(&mut out, "Aabc");
        comment(&mut out, "heartbeat");
        retry(&mut out, 1500);
        assert_eq!(out, "id: Aabc\n\n: heartbeat\n\nretry: 1500\n\n");
    }

    #[test]
    fn control_event_data() {
        let head = EventId::new(5, 2);
        assert_eq!(not_recovered_data("orders", Some(head)), format!("{{\"channel\":\"orders\",\"head\":\"{head}\"}}"));
        assert_eq!(not_recovered_data("orders", None), "{\"channel\":\"orders\",\"head\":null}");
        assert_eq!(cache_miss_data("cache-x"), "{\"channel\":\"cache-x\"}");
    }
}

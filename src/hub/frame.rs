//! A frame as the hub fans it out: serialised once, with its WebSocket framing, and shared by
//! every socket it goes to.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use reprise_api::{ChannelName, EventId, frames};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// A frame serialised once and shared by every socket it goes to.
///
/// It carries its WebSocket encoding too: a server's frames are not masked (RFC 6455, 5.1), so
/// the bytes on the wire are the same for every subscriber, and a connection writes them as
/// they are, without encoding or copying per socket. `text` is the payload part of the same
/// allocation (event streams and tests read it).
#[derive(Debug)]
pub struct Frame {
    pub text: Utf8Bytes,
    /// The whole WebSocket frame: header, then `text`.
    pub wire: Bytes,
    /// For logged events (and the skipped marker of one): so that a connection that just
    /// replayed up to sequence N can drop a live copy of an event it already sent, and a stream
    /// can name the event and move its cursor.
    pub logged: Option<Logged>,
}

/// What a frame of a logged event says about it.
#[derive(Debug)]
pub struct Logged {
    pub channel: ChannelName,
    pub id: EventId,
    /// The event's name; `None` for the `pusher_internal:skipped` marker, which only moves the
    /// receiver's cursor past the event.
    pub event: Option<Box<str>>,
}

impl Frame {
    pub fn plain(text: String) -> Arc<Frame> {
        Frame::new(text, None)
    }

    pub fn logged(text: String, logged: Logged) -> Arc<Frame> {
        Frame::new(text, Some(logged))
    }

    fn new(text: String, logged: Option<Logged>) -> Arc<Frame> {
        let wire = encode_text(&text);
        Frame::from_wire(wire, text.len(), logged)
    }

    /// An application event's frame (`frames::event_frame`), written straight into its
    /// WebSocket encoding: the JSON goes after room for the largest header, and the header
    /// right in front of it, so the frame is one buffer, never copied.
    pub fn event(
        (event, channel, data): (&str, &str, &str),
        id: Option<EventId>,
        user_id: Option<&str>,
        logged: Option<Logged>,
    ) -> Arc<Frame> {
        let mut buffer =
            Vec::with_capacity(MAX_HEADER_BYTES + frames::event_frame_capacity(event, channel, data, user_id));
        buffer.resize(MAX_HEADER_BYTES, 0);
        frames::write_event_frame(&mut buffer, event, channel, data, id, user_id);
        let text_len = buffer.len() - MAX_HEADER_BYTES;
        let (header, header_len) = text_frame_header(text_len);
        let start = MAX_HEADER_BYTES - header_len;
        buffer[start..MAX_HEADER_BYTES].copy_from_slice(&header[..header_len]);
        Frame::from_wire(Bytes::from(buffer).slice(start..), text_len, logged)
    }

    /// `wire` is a whole text frame whose last `text_len` bytes are its payload.
    fn from_wire(wire: Bytes, text_len: usize, logged: Option<Logged>) -> Arc<Frame> {
        let text = Utf8Bytes::try_from(wire.slice(wire.len() - text_len..))
            .expect("the tail of the encoding is the text, which is UTF-8");
        Arc::new(Frame { text, wire, logged })
    }
}

/// The most a text frame's header takes: one byte of flags and opcode, one of length, and an
/// extended length of up to eight bytes (no mask: servers do not mask).
const MAX_HEADER_BYTES: usize = 10;

/// Encodes `text` as one final, unmasked WebSocket text frame (RFC 6455, section 5.2).
pub fn encode_text(text: &str) -> Bytes {
    let mut wire = BytesMut::with_capacity(MAX_HEADER_BYTES + text.len());
    put_text_frame(&mut wire, text);
    wire.freeze()
}

/// Appends `text` as one final, unmasked WebSocket text frame: its header, then `text`.
pub fn put_text_frame(out: &mut impl BufMut, text: &str) {
    put_text_payload(out, text.as_bytes());
}

/// Appends an application event's frame (`frames::event_frame`) to `out` as one WebSocket text
/// frame. The JSON is written into `scratch` first (its length decides the header), which the
/// caller keeps across events: a replay of many events allocates no frame of its own per event.
pub fn put_event_frame(
    out: &mut impl BufMut,
    scratch: &mut Vec<u8>,
    (event, channel, data): (&str, &str, &str),
    id: Option<EventId>,
    user_id: Option<&str>,
) {
    scratch.clear();
    frames::write_event_frame(scratch, event, channel, data, id, user_id);
    put_text_payload(out, scratch);
}

/// `payload` (UTF-8 text) after its text frame header.
fn put_text_payload(out: &mut impl BufMut, payload: &[u8]) {
    let (header, header_len) = text_frame_header(payload.len());
    out.put_slice(&header[..header_len]);
    out.put_slice(payload);
}

/// The header of a final, unmasked text frame of `len` payload bytes: the first
/// `header_len` bytes of the array.
fn text_frame_header(len: usize) -> ([u8; MAX_HEADER_BYTES], usize) {
    const FIN_TEXT: u8 = 0x80 | 0x1;
    let mut header = [0; MAX_HEADER_BYTES];
    header[0] = FIN_TEXT;
    let header_len = match len {
        0..=125 => {
            header[1] = u8::try_from(len).expect("below 126");
            2
        }
        126..=0xFFFF => {
            header[1] = 126;
            header[2..4].copy_from_slice(&u16::try_from(len).expect("below 65536").to_be_bytes());
            4
        }
        _ => {
            header[1] = 127;
            header[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    (header, header_len)
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;

    use super::*;

    /// The frames written without tungstenite must be byte for byte what tungstenite would write:
    /// every length class of the header (7-bit, 16-bit and 64-bit lengths, at their edges).
    #[test]
    fn encoding_matches_tungstenite_for_every_length_class() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let text = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let mut expected = Vec::new();
            WsFrame::message(
                text.clone(),
                tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
                    tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
                ),
                true,
            )
            .format(&mut expected)
            .unwrap();
            assert_eq!(encode_text(&text).as_ref(), expected.as_slice(), "length {len}");
        }
    }

    /// The control frames `reprise_api::websocket` writes (tungstenite is not a dependency of
    /// the api crate) are byte for byte what tungstenite wrote for the same pong and close.
    #[test]
    fn pong_and_close_frames_match_tungstenite() {
        use reprise_api::websocket::{close_frame, pong_frame};
        use tokio_tungstenite::tungstenite::protocol::CloseFrame as WsCloseFrame;

        for payload in [&b""[..], b"x", &[0xAB; 125]] {
            let mut expected = Vec::new();
            WsFrame::pong(payload.to_vec()).format(&mut expected).unwrap();
            assert_eq!(pong_frame(payload), expected, "pong of {} bytes", payload.len());
        }
        for (code, reason) in [(1000, ""), (1002, "WebSocket protocol error"), (4200, "é")] {
            let mut expected = Vec::new();
            let close = WsCloseFrame { code: code.into(), reason: reason.into() };
            WsFrame::close(Some(close)).format(&mut expected).unwrap();
            assert_eq!(close_frame(code, reason), expected, "close {code} {reason:?}");
        }
    }

    /// An event's frame written in place is the encoding of `frames::event_frame`, in every
    /// length class of the header.
    #[test]
    fn an_event_frame_written_in_place_is_its_text_encoded() {
        let id = EventId::new(1_764_000_000_000, 42);
        for len in [0, 20, 100, 65_000, 70_000] {
            let data = "\"é\"".repeat(len / 4);
            for user_id in [None, Some("7")] {
                let frame = Frame::event(("e", "private-c", &data), Some(id), user_id, None);
                let text = frames::event_frame("e", "private-c", &data, Some(id), user_id);
                assert_eq!(frame.text.as_str(), text);
                assert_eq!(frame.wire, encode_text(&text), "data of {} bytes", data.len());
            }
        }
    }

    /// A replay's frames, written one after another with one scratch buffer (a long event, then
    /// shorter ones: nothing of the previous one may be left in it), are each event's text encoded.
    #[test]
    fn event_frames_put_with_a_shared_scratch_are_their_texts_encoded() {
        let events =
            [("e", "x".repeat(70_000), Some("7")), ("f", "\"é\"".to_owned(), None), ("g", String::new(), None)];
        let (mut out, mut expected, mut scratch) = (BytesMut::new(), Vec::new(), Vec::new());
        for (seq, (event, data, user_id)) in events.iter().enumerate() {
            let id = Some(EventId::new(1_764_000_000_000, seq as u64 + 1));
            put_event_frame(&mut out, &mut scratch, (event, "private-c", data), id, *user_id);
            let text = frames::event_frame(event, "private-c", data, id, *user_id);
            expected.extend_from_slice(&encode_text(&text));
        }
        assert_eq!(out.as_ref(), expected.as_slice());
    }

    #[test]
    fn a_frame_shares_its_text_with_its_encoding() {
        let frame = Frame::plain("{\"event\":\"e\"}".to_owned());
        assert_eq!(frame.text.as_str(), "{\"event\":\"e\"}");
        assert!(frame.wire.ends_with(frame.text.as_bytes()));
        assert_eq!(frame.wire.len(), frame.text.len() + 2);
    }
}

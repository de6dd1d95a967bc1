//! A frame as the hub fans it out: serialised once, with its WebSocket framing, and shared by
//! every socket it goes to.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use reprise_api::{ChannelName, EventId};
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
        let text = Utf8Bytes::try_from(wire.slice(wire.len() - text.len()..))
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
    const FIN_TEXT: u8 = 0x80 | 0x1;
    out.put_u8(FIN_TEXT);
    let len = text.len();
    match len {
        0..=125 => out.put_u8(u8::try_from(len).expect("below 126")),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(u16::try_from(len).expect("below 65536"));
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.put_slice(text.as_bytes());
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

    #[test]
    fn a_frame_shares_its_text_with_its_encoding() {
        let frame = Frame::plain("{\"event\":\"e\"}".to_owned());
        assert_eq!(frame.text.as_str(), "{\"event\":\"e\"}");
        assert!(frame.wire.ends_with(frame.text.as_bytes()));
        assert_eq!(frame.wire.len(), frame.text.len() + 2);
    }
}

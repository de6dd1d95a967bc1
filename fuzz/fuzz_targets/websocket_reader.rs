//! A client's WebSocket bytes (`websocket::MessageReader`), differentially against tungstenite
//! 0.29, which read the clients' frames before it: both must read the same messages from the
//! same bytes, and stop (wanting more) or fail (with the same class of error) at the same point.
//!
//! Input: byte 0 picks the chunk size the bytes arrive in (0: all at once), byte 1 the size
//! limit (from `LIMITS`), the rest is what the client sent.
//!
//! Where the two legitimately differ, the difference is normalised here, never ignored:
//!
//! - Early refusal. `MessageReader` refuses a frame on its header (unmasked, reserved bits, a
//!   control frame fragmented or over 125 bytes, a fragment out of sequence, a fragmented
//!   message over the limit), before its payload arrives; tungstenite checks these once the
//!   whole frame is in. When the reader has failed and tungstenite is still waiting, the target
//!   completes the frame for tungstenite with zero bytes and then requires it to fail too, with
//!   the same class of error and no message first.
//! - A 64-bit length with its top bit set is a protocol error for the reader (RFC 6455 5.2);
//!   tungstenite does not check the bit and refuses the frame as too big (no limit is that high).
//! - A close frame whose code is not allowed on the wire: the reader fails with a protocol error;
//!   tungstenite hands over a close frame whose code it replaced with 1002 ("Protocol violation")
//!   and answers with that close.
//!
//! Both are compared up to a close frame: after it the server reads nothing more.
#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use reprise_api::websocket::{Incoming, MessageReader, ReadError};
use tungstenite::{
    Message,
    error::Error as WsError,
    protocol::{Role, WebSocket, WebSocketConfig},
};

/// Size limits to try: around the control frames' 125, the 7/16-bit and 16/64-bit length
/// boundaries, and one over anything a 4 KiB input can hold.
const LIMITS: [usize; 12] = [0, 1, 2, 125, 126, 127, 200, 1000, 4096, 65_535, 65_536, 1 << 20];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    Close(Option<(u16, String)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Protocol,
    InvalidUtf8,
    TooBig,
}

/// How a reader's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// It wants more bytes.
    Stopped,
    /// It read a close frame (the last event).
    Closed,
    /// It failed; the detail is the reader's text, or tungstenite's error.
    Failed(Class, String),
}

/// What tungstenite reads from: the chunks fed so far, then `WouldBlock` (a non-blocking socket
/// with nothing more to read). What tungstenite writes (its pongs and close) is dropped.
#[derive(Default)]
struct Feed {
    bytes: Vec<u8>,
    read: usize,
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.bytes[self.read..];
        if rest.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.read += n;
        Ok(n)
    }
}

impl Write for Feed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn ours(chunks: &[&[u8]], limit: usize) -> (Vec<Event>, End) {
    let mut reader = MessageReader::default();
    let mut events = Vec::new();
    let mut fed = 0;
    for chunk in chunks {
        reader.extend(chunk);
        fed += chunk.len();
        loop {
            match reader.next_message(limit) {
                Ok(None) => break,
                Ok(Some(message)) => {
                    let close = matches!(message, Incoming::Close(_));
                    events.push(match message {
                        Incoming::Text(text) => Event::Text(text),
                        Incoming::Binary(bytes) => Event::Binary(bytes),
                        Incoming::Ping(bytes) => {
                            assert!(bytes.len() <= 125, "a ping of {} bytes", bytes.len());
                            Event::Ping(bytes)
                        }
                        Incoming::Pong => Event::Pong,
                        Incoming::Close(close) => Event::Close(close.map(|c| (c.code, c.reason))),
                    });
                    if close {
                        return (events, End::Closed);
                    }
                }
                Err(error) => {
                    let class = match error {
                        ReadError::Protocol(_) => Class::Protocol,
                        ReadError::InvalidUtf8 => Class::InvalidUtf8,
                        ReadError::TooBig => Class::TooBig,
                    };
                    assert!((1002..=1009).contains(&error.close_code()));
                    return (events, End::Failed(class, error.to_string()));
                }
            }
        }
        // What it holds is what it was given, at most; nothing when every frame was whole.
        assert!(reader.held_bytes() <= fed, "holds {} of {fed} bytes", reader.held_bytes());
    }
    (events, End::Stopped)
}

struct Theirs {
    socket: WebSocket<Feed>,
    events: Vec<Event>,
}

impl Theirs {
    fn new(limit: usize) -> Theirs {
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit))
            .accept_unmasked_frames(false);
        let socket = WebSocket::from_raw_socket(Feed::default(), Role::Server, Some(config));
        Theirs { socket, events: Vec::new() }
    }

    /// Feeds a chunk and reads every message it completes: `None` if tungstenite wants more.
    fn feed(&mut self, chunk: &[u8]) -> Option<End> {
        self.socket.get_mut().bytes.extend_from_slice(chunk);
        loop {
            let message = match self.socket.read() {
                Ok(message) => message,
                Err(WsError::Io(error)) if error.kind() == io::ErrorKind::WouldBlock => return None,
                Err(WsError::Protocol(error)) => {
                    return Some(End::Failed(Class::Protocol, error.to_string()));
                }
                Err(WsError::Utf8(error)) => {
                    return Some(End::Failed(Class::InvalidUtf8, error));
                }
                Err(WsError::Capacity(error)) => {
                    return Some(End::Failed(Class::TooBig, error.to_string()));
                }
                Err(error) => panic!("tungstenite failed unexpectedly: {error:?}"),
            };
            let close = matches!(message, Message::Close(_));
            self.events.push(match message {
                Message::Text(text) => Event::Text(text.as_str().to_owned()),
                Message::Binary(bytes) => Event::Binary(bytes.to_vec()),
                Message::Ping(bytes) => Event::Ping(bytes.to_vec()),
                Message::Pong(_) => Event::Pong,
                Message::Close(close) => Event::Close(close.map(|c| (u16::from(c.code), c.reason.as_str().to_owned()))),
                Message::Frame(_) => panic!("tungstenite read a raw frame"),
            });
            if close {
                return Some(End::Closed);
            }
        }
    }

    fn run(&mut self, chunks: &[&[u8]]) -> End {
        for chunk in chunks {
            if let Some(end) = self.feed(chunk) {
                return end;
            }
        }
        End::Stopped
    }
}

fuzz_target!(|input: &[u8]| {
    let [chunk_byte, limit_byte, bytes @ ..] = input else { return };
    let limit = LIMITS[usize::from(*limit_byte) % LIMITS.len()];
    let chunks: Vec<&[u8]> = match chunk_byte {
        0 => vec![bytes],
        size => bytes.chunks(usize::from(*size)).collect(),
    };

    let (our_events, our_end) = ours(&chunks, limit);
    let mut theirs = Theirs::new(limit);
    let mut their_end = theirs.run(&chunks);

    // Early refusal: complete the frame the reader refused on its header, then tungstenite must
    // refuse it too. Its payload is at most the limit (both checked that), so a bounded number
    // of zero bytes completes it.
    if matches!(our_end, End::Failed(..)) && their_end == End::Stopped {
        let zeros = [0u8; 4096];
        let mut fed = 0;
        while their_end == End::Stopped {
            assert!(fed <= limit + 14, "tungstenite still waits for the refused frame: {our_end:?}");
            if let Some(end) = theirs.feed(&zeros) {
                their_end = end;
            }
            fed += zeros.len();
        }
    }

    let mut their_events = theirs.events;
    match (&our_end, &their_end) {
        (End::Failed(Class::Protocol, ours), End::Failed(Class::TooBig, _)) if ours.contains("top bit") => {}
        (End::Failed(Class::Protocol, ours), End::Closed) if ours.contains("close code") => {
            let replaced = Event::Close(Some((1002, "Protocol violation".to_owned())));
            assert_eq!(their_events.pop(), Some(replaced), "tungstenite's close for a bad code");
        }
        (End::Failed(ours, _), End::Failed(theirs, _)) => {
            assert_eq!(ours, theirs, "different errors: ours {our_end:?}, theirs {their_end:?}");
        }
        _ => assert_eq!(our_end, their_end, "different ends"),
    }
    assert_eq!(our_events, their_events, "different messages (ends: {our_end:?}, {their_end:?})");
});

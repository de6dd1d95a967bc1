//! Reading a client's WebSocket messages from the bytes it sent (RFC 6455, section 5, server
//! side), and the two control frames the server writes itself (pong, close). Pure: no IO.
//!
//! The reader holds no heap memory while nothing is pending, so an idle connection costs only
//! the reader's 8 bytes; the connection reads from its socket into a stack buffer, hands the
//! bytes to [`MessageReader::extend`], then calls [`MessageReader::next_message`] until it
//! returns `Ok(None)`.

use std::mem::size_of;

/// Reads a client's WebSocket messages from the bytes it sent (RFC 6455 section 5, server side).
///
/// Every check that the header alone can decide is made before the frame's payload is buffered:
/// a client cannot make the server hold a frame that will be refused (over the size limit,
/// unmasked, with reserved bits, a control frame over 125 bytes, a fragment out of sequence).
#[derive(Debug, Default)]
pub struct MessageReader {
    /// What is read and not yet a whole message; `None` whenever nothing is (released as soon
    /// as it is all consumed). Boxed: an idle connection's task keeps one pointer for it.
    pending: Option<Box<Pending>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Bytes received and not yet parsed: at most one frame's header and payload plus whatever
    /// followed it in the same read.
    unparsed: Vec<u8>,
    /// The data message whose final fragment has not arrived.
    fragmented: Option<Fragmented>,
}

/// A text or binary message received in fragments, its final fragment still to come.
#[derive(Debug)]
struct Fragmented {
    text: bool,
    /// The fragments' payloads so far, unmasked and joined.
    bytes: Vec<u8>,
    /// For a text message: `bytes[..utf8_valid_up_to]` is known to be UTF-8, and what follows it
    /// is at most the start of one character cut by a fragment boundary. Checking each fragment
    /// as it arrives refuses a message at its first invalid byte, not after its last fragment.
    utf8_valid_up_to: usize,
}

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A complete text message (fragments joined), valid UTF-8.
    Text(String),
    /// A complete binary message (fragments joined).
    Binary(Vec<u8>),
    /// A ping: its payload (at most 125 bytes) is to be echoed in a pong ([`pong_frame`]).
    Ping(Vec<u8>),
    Pong,
    /// The client's close frame; `None` when it had no payload (no status code).
    Close(Option<CloseFrame>),
}

/// The status code and reason of a client's close frame (RFC 6455, section 5.5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    pub code: u16,
    pub reason: String,
}

/// Why the client's bytes are not a valid WebSocket stream: the connection is to be failed with
/// [`ReadError::close_code`] (RFC 6455, section 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Close code 1002. The text says what was wrong, for the log, not for the client.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// Close code 1007: a text message, or a close frame's reason, that is not UTF-8.
    #[error("invalid UTF-8 in a text message or a close reason")]
    InvalidUtf8,
    /// Close code 1009: a frame, or a fragmented message's total, over the size limit.
    #[error("a frame or message over the size limit")]
    TooBig,
}

impl ReadError {
    /// The status code of the close frame that fails the connection (RFC 6455, section 7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            ReadError::Protocol(_) => 1002,
            ReadError::InvalidUtf8 => 1007,
            ReadError::TooBig => 1009,
        }
    }

    /// A short reason for the close frame. The texts the server sent when tungstenite read its
    /// frames, so clients see no change; the detail of a protocol error stays in the log.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Protocol(_) => "WebSocket protocol error",
            ReadError::InvalidUtf8 => "Invalid UTF-8 in a text frame",
            ReadError::TooBig => "Message too big",
        }
    }
}

/// The largest payload of a control frame (ping, pong, close): RFC 6455, section 5.5.
pub const MAX_CONTROL_PAYLOAD_BYTES: usize = 125;

/// The capacity of the unparsed buffer kept while it holds part of a frame, however little: about
/// one read from a socket. Above it, a buffer four times larger than what it holds is shrunk.
const KEEP_CAPACITY_BYTES: usize = 4096;

/// The opcodes RFC 6455 defines (section 5.2); the others are reserved and refused, as no
/// extension is negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn parse(bits: u8) -> Result<Opcode, ReadError> {
        match bits {
            0 => Ok(Opcode::Continuation),
            1 => Ok(Opcode::Text),
            2 => Ok(Opcode::Binary),
            8 => Ok(Opcode::Close),
            9 => Ok(Opcode::Ping),
            10 => Ok(Opcode::Pong),
            _ => Err(ReadError::Protocol("reserved opcode")),
        }
    }

    fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A frame's header as sent, before any check.
#[derive(Debug)]
struct Header {
    fin: bool,
    /// RSV1-3, in the low three bits.
    rsv: u8,
    opcode_bits: u8,
    /// `None` for an unmasked frame.
    mask: Option<[u8; 4]>,
    payload_len: u64,
    /// How many bytes the header took: 2, plus 2 or 8 for an extended length, plus 4 for a mask.
    len: usize,
}

impl Header {
    /// Parses the header at the start of `bytes`; `None` if it is not all there yet.
    ///
    /// Nothing is checked here, and nothing before the whole header has arrived: like
    /// tungstenite, which this reader replaced, so both refuse the same inputs at the same point.
    /// Non-minimal length encodings (a 16-bit length under 126, say) are accepted, as tungstenite
    /// accepts them: RFC 6455 says "must" of the sender, and refusing them buys nothing.
    fn parse(bytes: &[u8]) -> Option<Header> {
        let [first, second, rest @ ..] = bytes else { return None };
        let (payload_len, extended, rest) = match second & 0x7F {
            126 => {
                let (length, rest) = rest.split_first_chunk::<2>()?;
                (u64::from(u16::from_be_bytes(*length)), 2, rest)
            }
            127 => {
                let (length, rest) = rest.split_first_chunk::<8>()?;
                (u64::from_be_bytes(*length), 8, rest)
            }
            short => (u64::from(short), 0, rest),
        };
        let mask = if second & 0x80 != 0 { Some(*rest.first_chunk::<4>()?) } else { None };
        Some(Header {
            fin: first & 0x80 != 0,
            rsv: (first >> 4) & 0b111,
            opcode_bits: first & 0x0F,
            mask,
            payload_len,
            len: 2 + extended + if mask.is_some() { 4 } else { 0 },
        })
    }
}

impl MessageReader {
    /// Appends bytes read from the client's socket.
    pub fn extend(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.pending.get_or_insert_default().unparsed.extend_from_slice(bytes);
        }
    }

    /// The next complete message, or None if more bytes are needed. `max_message_bytes` bounds a
    /// frame's payload and a fragmented message's total. After an Err the reader is not to be
    /// used again.
    pub fn next_message(&mut self, max_message_bytes: usize) -> Result<Option<Incoming>, ReadError> {
        let Some(pending) = self.pending.as_deref_mut() else { return Ok(None) };
        let next = pending.next_message(max_message_bytes);
        if pending.unparsed.is_empty() && pending.fragmented.is_none() {
            self.pending = None;
        }
        next
    }

    /// Bytes held (unparsed input plus a fragmented message's parts): 0 whenever nothing is
    /// pending.
    pub fn held_bytes(&self) -> usize {
        self.pending.as_ref().map_or(0, |pending| {
            pending.unparsed.len() + pending.fragmented.as_ref().map_or(0, |message| message.bytes.len())
        })
    }
}

impl Pending {
    fn next_message(&mut self, max_message_bytes: usize) -> Result<Option<Incoming>, ReadError> {
        loop {
            let Some(header) = Header::parse(&self.unparsed) else { return Ok(None) };
            let (opcode, payload_len, mask) = self.check(&header, max_message_bytes)?;
            let Some(frame_end) = header.len.checked_add(payload_len) else {
                return Err(ReadError::TooBig);
            };
            if self.unparsed.len() < frame_end {
                return Ok(None);
            }
            let mut payload = self.unparsed[header.len..frame_end].to_vec();
            unmask(&mut payload, mask);
            self.consume(frame_end);
            if let Some(message) = self.receive(opcode, header.fin, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// Every check the header alone decides, so that a frame that will be refused is refused
    /// before its payload is buffered. Their order is tungstenite's where both refuse at the
    /// header (the opcode, then the size), then the order in which tungstenite checks a whole
    /// frame, so that an input with several faults is refused with the same error by both.
    fn check(&self, header: &Header, max_message_bytes: usize) -> Result<(Opcode, usize, [u8; 4]), ReadError> {
        let opcode = Opcode::parse(header.opcode_bits)?;
        if header.payload_len >> 63 != 0 {
            return Err(ReadError::Protocol("64-bit payload length with its top bit set"));
        }
        let payload_len = usize::try_from(header.payload_len).map_err(|_| ReadError::TooBig)?;
        if payload_len > max_message_bytes {
            return Err(ReadError::TooBig);
        }
        let Some(mask) = header.mask else {
            return Err(ReadError::Protocol("unmasked frame from a client"));
        };
        if header.rsv != 0 {
            return Err(ReadError::Protocol("reserved bits set, and no extension negotiated"));
        }
        if opcode.is_control() {
            if !header.fin {
                return Err(ReadError::Protocol("fragmented control frame"));
            }
            if payload_len > MAX_CONTROL_PAYLOAD_BYTES {
                return Err(ReadError::Protocol("control frame over 125 bytes"));
            }
            return Ok((opcode, payload_len, mask));
        }
        match (opcode, &self.fragmented) {
            (Opcode::Continuation, None) => Err(ReadError::Protocol("continuation frame with no message in progress")),
            (Opcode::Continuation, Some(message)) => {
                // Added, not subtracted from the limit: a caller may lower the limit between
                // two fragments.
                let total = message.bytes.len().checked_add(payload_len);
                if total.is_none_or(|total| total > max_message_bytes) {
                    Err(ReadError::TooBig)
                } else {
                    Ok((opcode, payload_len, mask))
                }
            }
            (_, Some(_)) => Err(ReadError::Protocol("new message before the last one's end")),
            (_, None) => Ok((opcode, payload_len, mask)),
        }
    }

    /// Removes a parsed frame from the unparsed bytes.
    ///
    /// Draining moves what follows the frame to the front: with many small frames in one read,
    /// each costs a copy of the rest of that read (bounded by the connection's read buffer), a
    /// memmove far cheaper than handling the message it yields, and it keeps the reader at
    /// small (an offset into the buffer would need a field of its own).
    fn consume(&mut self, frame_end: usize) {
        if frame_end == self.unparsed.len() {
            // Release the buffer: an idle connection holds no heap memory.
            self.unparsed = Vec::new();
        } else {
            self.unparsed.drain(..frame_end);
            // After a large frame, the start of the next one must not keep its buffer's size;
            // a buffer of a read's size is kept rather than reallocated as small frames drain.
            let capacity = self.unparsed.capacity();
            if capacity > KEEP_CAPACITY_BYTES && capacity / 4 > self.unparsed.len() {
                self.unparsed.shrink_to_fit();
            }
        }
    }

    /// Takes a whole, checked, unmasked frame: the message it completes, if any.
    fn receive(&mut self, opcode: Opcode, fin: bool, payload: Vec<u8>) -> Result<Option<Incoming>, ReadError> {
        match opcode {
            Opcode::Ping => Ok(Some(Incoming::Ping(payload))),
            Opcode::Pong => Ok(Some(Incoming::Pong)),
            Opcode::Close => parse_close(payload).map(|close| Some(Incoming::Close(close))),
            Opcode::Text | Opcode::Binary if fin => Ok(Some(complete(opcode == Opcode::Text, payload)?)),
            Opcode::Text | Opcode::Binary => {
                let mut message = Fragmented { text: opcode == Opcode::Text, bytes: payload, utf8_valid_up_to: 0 };
                message.check_utf8()?;
                self.fragmented = Some(message);
                Ok(None)
            }
            Opcode::Continuation => {
                let mut message = self.fragmented.take().expect("check refuses a continuation with no message");
                message.bytes.extend_from_slice(&payload);
                if fin {
                    return Ok(Some(complete(message.text, message.bytes)?));
                }
                message.check_utf8()?;
                self.fragmented = Some(message);
                Ok(None)
            }
        }
    }
}

impl Fragmented {
    /// Refuses a text message as soon as its fragments so far cannot begin valid UTF-8.
    fn check_utf8(&mut self) -> Result<(), ReadError> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.bytes[self.utf8_valid_up_to..]) {
            Ok(_) => self.utf8_valid_up_to = self.bytes.len(),
            // Only the start of a character the next fragment may complete.
            Err(error) if error.error_len().is_none() => {
                self.utf8_valid_up_to += error.valid_up_to();
            }
            Err(_) => return Err(ReadError::InvalidUtf8),
        }
        Ok(())
    }
}

/// A whole data message. A text message is validated whole: the per-fragment checks cannot hand
/// over a `String` without `unsafe`, and this pass is what makes one.
fn complete(text: bool, bytes: Vec<u8>) -> Result<Incoming, ReadError> {
    if text {
        String::from_utf8(bytes).map(Incoming::Text).map_err(|_| ReadError::InvalidUtf8)
    } else {
        Ok(Incoming::Binary(bytes))
    }
}

/// A close frame's payload: nothing, or a status code and a UTF-8 reason (RFC 6455, 5.5.1).
///
/// The reason is checked before the code, as tungstenite does, so that a frame with both wrong
/// is refused with the same error.
fn parse_close(payload: Vec<u8>) -> Result<Option<CloseFrame>, ReadError> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() {
            Ok(None)
        } else {
            Err(ReadError::Protocol("close frame with a one-byte payload"))
        };
    };
    let code = u16::from_be_bytes(*code);
    let reason = String::from_utf8(reason.to_vec()).map_err(|_| ReadError::InvalidUtf8)?;
    if !close_code_is_allowed(code) {
        return Err(ReadError::Protocol("close code not allowed on the wire"));
    }
    Ok(Some(CloseFrame { code, reason }))
}

/// The status codes a peer may send (RFC 6455, section 7.4): 1000-1003 and 1007-1011 from the
/// RFC, 1012 and 1013 registered with IANA since, and 3000-4999 for libraries and applications.
/// 1004 is reserved, 1005, 1006 and 1015 are never sent, and anything else is undefined.
///
/// The set is tungstenite's (`CloseCode::is_allowed`), which read the clients' frames before this
/// reader, so no client that worked stops working. (It does not allow 1014, registered later.)
fn close_code_is_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// Unmasks (or masks: it is its own inverse) a payload in place (RFC 6455, section 5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (byte, key) in payload.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

/// A pong frame echoing a ping's payload, unmasked as a server's frames are.
///
/// The payload is a ping's, which [`MessageReader::next_message`] bounds to 125 bytes; a longer
/// one (a caller's bug) is cut to 125 so the frame stays valid.
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    debug_assert!(payload.len() <= MAX_CONTROL_PAYLOAD_BYTES, "a pong's payload is a ping's");
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD_BYTES)];
    control_frame(0x8A, &[payload])
}

/// A close frame with a status code and a reason, unmasked as a server's frames are. The reason
/// is cut on a character boundary so that the payload stays within a control frame's 125 bytes.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD_BYTES - size_of::<u16>());
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    control_frame(0x88, &[&code.to_be_bytes(), &reason.as_bytes()[..end]])
}

/// A final, unmasked control frame: `first` is FIN and the opcode; `parts` (at most 125 bytes
/// together) are its payload.
fn control_frame(first: u8, parts: &[&[u8]]) -> Vec<u8> {
    let payload_len: usize = parts.iter().map(|part| part.len()).sum();
    let length = u8::try_from(payload_len)
        .ok()
        .filter(|&length| usize::from(length) <= MAX_CONTROL_PAYLOAD_BYTES)
        .expect("callers bound a control frame's payload to 125 bytes");
    let mut frame = Vec::with_capacity(2 + payload_len);
    frame.extend_from_slice(&[first, length]);
    for part in parts {
        frame.extend_from_slice(part);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;
    const FIN: u8 = 0x80;

    /// A client's frame: `first` is FIN, RSV and the opcode; masked with `KEY`, the length in
    /// its shortest form.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![first];
        match payload.len() {
            short @ 0..=125 => bytes.push(0x80 | u8::try_from(short).unwrap()),
            medium @ 126..=65_535 => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&u16::try_from(medium).unwrap().to_be_bytes());
            }
            long => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&u64::try_from(long).unwrap().to_be_bytes());
            }
        }
        bytes.extend_from_slice(&KEY);
        let start = bytes.len();
        bytes.extend_from_slice(payload);
        unmask(&mut bytes[start..], KEY);
        bytes
    }

    /// Every message in `bytes` fed at once, then what ended the stream: `Ok(())` if it ran out
    /// of bytes.
    fn read_all(bytes: &[u8], max: usize) -> (Vec<Incoming>, Result<(), ReadError>) {
        let mut reader = MessageReader::default();
        reader.extend(bytes);
        let mut messages = Vec::new();
        loop {
            match reader.next_message(max) {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => return (messages, Ok(())),
                Err(error) => return (messages, Err(error)),
            }
        }
    }

    fn read_one(bytes: &[u8]) -> Result<Option<Incoming>, ReadError> {
        let mut reader = MessageReader::default();
        reader.extend(bytes);
        reader.next_message(MAX)
    }

    fn text(text: &str) -> Incoming {
        Incoming::Text(text.to_owned())
    }

    /// RFC 6455 section 5.7's example: "Hello" in one masked text frame.
    #[test]
    fn reads_the_rfc_masked_text_example() {
        let bytes = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(read_one(&bytes), Ok(Some(text("Hello"))));
        assert_eq!(read_one(&frame(FIN | TEXT, b"Hello")), Ok(Some(text("Hello"))));
    }

    /// The mask cycles over the payload position mod 4, not per frame or per byte pair.
    #[test]
    fn unmasks_every_position_mod_4() {
        let payload: Vec<u8> = (0..=255).collect();
        assert_eq!(read_one(&frame(FIN | BINARY, &payload)), Ok(Some(Incoming::Binary(payload))));
    }

    /// Clients must mask (RFC 6455 5.1); the RFC's unmasked "Hello" is refused.
    #[test]
    fn an_unmasked_frame_is_a_protocol_error() {
        let bytes = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert!(matches!(read_one(&bytes), Err(ReadError::Protocol(_))));
        // On its header alone, before its payload arrives.
        assert!(matches!(read_one(&[0x81, 0x05]), Err(ReadError::Protocol(_))));
    }

    /// No extension is negotiated, so every reserved bit must be 0.
    #[test]
    fn each_reserved_bit_is_a_protocol_error() {
        for rsv in [0x40, 0x20, 0x10] {
            let result = read_one(&frame(FIN | rsv | TEXT, b"x"));
            assert!(matches!(result, Err(ReadError::Protocol(_))), "rsv {rsv:#x}: {result:?}");
        }
    }

    #[test]
    fn each_reserved_opcode_is_a_protocol_error() {
        for opcode in [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            let result = read_one(&frame(FIN | opcode, b""));
            assert!(matches!(result, Err(ReadError::Protocol(_))), "opcode {opcode}: {result:?}");
        }
    }

    #[test]
    fn ping_and_pong() {
        let bytes = [frame(FIN | PING, b"are you there"), frame(FIN | PONG, b"yes")].concat();
        let (messages, end) = read_all(&bytes, MAX);
        assert_eq!(messages, [Incoming::Ping(b"are you there".to_vec()), Incoming::Pong]);
        assert_eq!(end, Ok(()));
    }

    /// Control frames must not be fragmented and carry at most 125 bytes (RFC 6455 5.5).
    #[test]
    fn a_fragmented_or_long_control_frame_is_a_protocol_error() {
        for opcode in [CLOSE, PING, PONG] {
            let result = read_one(&frame(opcode, b""));
            assert!(matches!(result, Err(ReadError::Protocol(_))), "no FIN {opcode}: {result:?}");
            // 125 bytes (a close frame's start with a valid code) are fine.
            let longest = [&1000_u16.to_be_bytes()[..], &[b'a'; 123]].concat();
            let result = read_one(&frame(FIN | opcode, &longest));
            assert!(matches!(result, Ok(Some(_))), "125 bytes {opcode}: {result:?}");
            // Refused on the header alone: a long ping is not buffered to be refused.
            let header = &frame(FIN | opcode, &[b'a'; 126])[..8];
            let result = read_one(header);
            assert!(matches!(result, Err(ReadError::Protocol(_))), "126 bytes: {result:?}");
        }
    }

    /// RFC 6455 5.4: control frames may come between a message's fragments. This is 5.7's
    /// fragmented "Hello", with a ping between its two frames.
    #[test]
    fn fragmented_text_with_an_interleaved_ping() {
        let bytes = [frame(TEXT, b"Hel"), frame(FIN | PING, b"p"), frame(FIN, b"lo")].concat();
        let mut reader = MessageReader::default();
        reader.extend(&bytes);
        assert_eq!(reader.next_message(MAX), Ok(Some(Incoming::Ping(b"p".to_vec()))));
        // The first fragment is held while the ping is handed over.
        assert_eq!(reader.held_bytes(), 3 + frame(FIN, b"lo").len());
        assert_eq!(reader.next_message(MAX), Ok(Some(text("Hello"))));
        assert_eq!(reader.next_message(MAX), Ok(None));
        assert_eq!(reader.held_bytes(), 0);
        assert!(reader.pending.is_none());
    }

    #[test]
    fn fragmented_binary_with_empty_fragments() {
        let bytes = [frame(BINARY, b""), frame(0, b"ab"), frame(0, b""), frame(FIN, b"c")].concat();
        let (messages, end) = read_all(&bytes, MAX);
        assert_eq!(messages, [Incoming::Binary(b"abc".to_vec())]);
        assert_eq!(end, Ok(()));
    }

    #[test]
    fn a_continuation_with_no_message_in_progress_is_a_protocol_error() {
        assert!(matches!(read_one(&frame(FIN, b"x")), Err(ReadError::Protocol(_))));
        assert!(matches!(read_one(&frame(0, b"x")), Err(ReadError::Protocol(_))));
    }

    #[test]
    fn a_new_message_before_the_last_fragment_is_a_protocol_error() {
        for opcode in [TEXT, BINARY] {
            let bytes = [frame(TEXT, b"a"), frame(FIN | opcode, b"b")].concat();
            let (messages, end) = read_all(&bytes, MAX);
            assert_eq!(messages, []);
            assert!(matches!(end, Err(ReadError::Protocol(_))), "{end:?}");
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_refused() {
        assert_eq!(read_one(&frame(FIN | TEXT, b"caf\xC3")), Err(ReadError::InvalidUtf8));
        assert_eq!(read_one(&frame(FIN | TEXT, b"\xFF")), Err(ReadError::InvalidUtf8));
        // Binary messages are not text: the same bytes are fine.
        assert!(read_one(&frame(FIN | BINARY, b"\xFF")).is_ok());
    }

    /// A character cut by a fragment boundary is whole once joined.
    #[test]
    fn a_character_split_across_fragments_is_valid() {
        let bytes = [frame(TEXT, b"caf\xC3"), frame(0, b""), frame(FIN, b"\xA9!")].concat();
        assert_eq!(read_all(&bytes, MAX), (vec![text("café!")], Ok(())));
    }

    /// A fragmented text message is refused at its first invalid fragment, not buffered to its
    /// end; one that ends in the middle of a character is refused at its end.
    #[test]
    fn fragmented_text_is_checked_fragment_by_fragment() {
        let bytes = [frame(TEXT, b"ok"), frame(0, b"\xC3\x28")].concat();
        assert_eq!(read_all(&bytes, MAX), (vec![], Err(ReadError::InvalidUtf8)));
        let bytes = [frame(TEXT, b"caf\xC3"), frame(FIN, b"")].concat();
        assert_eq!(read_all(&bytes, MAX), (vec![], Err(ReadError::InvalidUtf8)));
    }

    #[test]
    fn close_frames() {
        assert_eq!(read_one(&frame(FIN | CLOSE, b"")), Ok(Some(Incoming::Close(None))));
        let close =
            |code: u16, reason: &str| Ok(Some(Incoming::Close(Some(CloseFrame { code, reason: reason.to_owned() }))));
        assert_eq!(read_one(&frame(FIN | CLOSE, b"\x03\xE8bye")), close(1000, "bye"));
        assert_eq!(read_one(&frame(FIN | CLOSE, b"\x0F\xA0")), close(4000, ""));
        let result = read_one(&frame(FIN | CLOSE, b"\x03"));
        assert!(matches!(result, Err(ReadError::Protocol(_))), "one byte: {result:?}");
        let result = read_one(&frame(FIN | CLOSE, b"\x03\xE8\xFF"));
        assert_eq!(result, Err(ReadError::InvalidUtf8));
    }

    /// RFC 6455 7.4 and IANA's registry, as tungstenite's `CloseCode::is_allowed` has it.
    #[test]
    fn close_codes_allowed_on_the_wire() {
        let allowed: [u16; 13] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 4999];
        let refused = [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000, u16::MAX];
        for code in allowed {
            let result = read_one(&frame(FIN | CLOSE, &code.to_be_bytes()));
            assert!(matches!(result, Ok(Some(Incoming::Close(Some(_))))), "{code}: {result:?}");
        }
        for code in refused {
            let result = read_one(&frame(FIN | CLOSE, &code.to_be_bytes()));
            assert!(matches!(result, Err(ReadError::Protocol(_))), "{code}: {result:?}");
        }
    }

    /// 16-bit and 64-bit lengths, and the lengths' non-minimal encodings, which tungstenite
    /// accepts too.
    #[test]
    fn extended_lengths() {
        for len in [126, 65_535, 65_536, 70_000] {
            let payload = vec![7; len];
            let result = read_one(&frame(FIN | BINARY, &payload));
            assert_eq!(result, Ok(Some(Incoming::Binary(payload))), "{len}");
        }
        let mut sixteen = vec![FIN | TEXT, 0x80 | 126, 0, 2];
        sixteen.extend_from_slice(&frame(FIN | TEXT, b"hi")[2..]);
        assert_eq!(read_one(&sixteen), Ok(Some(text("hi"))));
        let mut sixty_four = vec![FIN | TEXT, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 2];
        sixty_four.extend_from_slice(&frame(FIN | TEXT, b"hi")[2..]);
        assert_eq!(read_one(&sixty_four), Ok(Some(text("hi"))));
    }

    #[test]
    fn a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() {
        let header = [FIN | BINARY, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4];
        let mut reader = MessageReader::default();
        reader.extend(&header);
        assert!(matches!(reader.next_message(usize::MAX), Err(ReadError::Protocol(_))));
    }

    /// The size limit is decided on the header: a client cannot make the server buffer a frame
    /// that will be refused. Only the header is fed here.
    #[test]
    fn an_oversized_frame_is_refused_on_its_header_alone() {
        for len in [1001_u64, 70_000, 1 << 40] {
            let mut header = frame(FIN | BINARY, &[0; 1001]);
            header.truncate(if len < 65_536 { 8 } else { 14 });
            if len >= 65_536 {
                header[1] = 0x80 | 127;
                header[2..10].copy_from_slice(&len.to_be_bytes());
                header[10..14].copy_from_slice(&KEY);
            }
            let mut reader = MessageReader::default();
            reader.extend(&header);
            assert_eq!(reader.next_message(1000), Err(ReadError::TooBig), "{len}");
        }
        // Exactly the limit is accepted.
        let (messages, end) = read_all(&frame(FIN | BINARY, &[0; 1000]), 1000);
        assert_eq!((messages.len(), end), (1, Ok(())));
    }

    /// The limit bounds a fragmented message's total too, on the header of the fragment that
    /// would exceed it.
    #[test]
    fn a_fragmented_message_over_the_limit_is_refused_on_the_fragment_header() {
        let mut reader = MessageReader::default();
        reader.extend(&[frame(BINARY, &[0; 600]), frame(0, &[0; 400])].concat());
        reader.extend(&frame(FIN, &[0; 1])[..6]);
        assert_eq!(reader.next_message(1000), Err(ReadError::TooBig));
        // Exactly the limit in all is accepted.
        let bytes = [frame(BINARY, &[0; 600]), frame(0, &[0; 399]), frame(FIN, &[0; 1])].concat();
        assert_eq!(read_all(&bytes, 1000).0, [Incoming::Binary(vec![0; 1000])]);
    }

    /// The limit is the caller's on each call: lowered between two fragments, it refuses the
    /// next one (it once subtracted what was held from the limit, and would have underflowed).
    #[test]
    fn a_limit_lowered_mid_message_refuses_the_next_fragment() {
        let mut reader = MessageReader::default();
        reader.extend(&frame(BINARY, &[0; 600]));
        assert_eq!(reader.next_message(1000), Ok(None));
        reader.extend(&frame(FIN, &[0; 1]));
        assert_eq!(reader.next_message(500), Err(ReadError::TooBig));
    }

    /// A stream of several messages of every kind.
    fn every_kind() -> (Vec<u8>, Vec<Incoming>) {
        let long: Vec<u8> = (0..300_u16).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let bytes = [
            frame(FIN | TEXT, "héllo".as_bytes()),
            frame(TEXT, b"frag\xC3"),
            frame(FIN | PING, b"1"),
            frame(0, b"\xA9"),
            frame(FIN | PONG, b""),
            frame(FIN, b"ment"),
            frame(FIN | BINARY, &long),
            frame(FIN | CLOSE, b"\x03\xE8done"),
        ]
        .concat();
        let expected = vec![
            text("héllo"),
            Incoming::Ping(b"1".to_vec()),
            Incoming::Pong,
            text("fragément"),
            Incoming::Binary(long),
            Incoming::Close(Some(CloseFrame { code: 1000, reason: "done".to_owned() })),
        ];
        (bytes, expected)
    }

    /// A message may be cut anywhere by TCP: split at every byte boundary, and fed a byte at a
    /// time, the stream reads the same, and nothing is held at the end.
    #[test]
    fn every_split_reads_the_same() {
        let (bytes, expected) = every_kind();
        assert_eq!(read_all(&bytes, MAX), (expected.clone(), Ok(())));
        let feed = |chunks: &mut dyn Iterator<Item = &[u8]>| {
            let mut reader = MessageReader::default();
            let mut messages = Vec::new();
            for chunk in chunks {
                reader.extend(chunk);
                while let Some(message) = reader.next_message(MAX).unwrap() {
                    messages.push(message);
                }
            }
            assert_eq!(reader.held_bytes(), 0);
            messages
        };
        for at in 0..=bytes.len() {
            let (head, tail) = bytes.split_at(at);
            assert_eq!(feed(&mut [head, tail].into_iter()), expected, "split at {at}");
        }
        assert_eq!(feed(&mut bytes.chunks(1)), expected);
        assert_eq!(feed(&mut bytes.chunks(7)), expected);
    }

    /// The point of this reader: an idle connection holds no heap memory (tungstenite's held
    /// ~700 bytes per socket).
    #[test]
    fn nothing_is_held_once_a_message_is_read() {
        assert_eq!(size_of::<MessageReader>(), 8);
        let mut reader = MessageReader::default();
        let bytes = frame(FIN | TEXT, b"hello");
        reader.extend(&bytes[..4]);
        assert_eq!(reader.next_message(MAX), Ok(None));
        assert_eq!(reader.held_bytes(), 4);
        reader.extend(&bytes[4..]);
        assert_eq!(reader.next_message(MAX), Ok(Some(text("hello"))));
        assert_eq!(reader.held_bytes(), 0);
        assert!(reader.pending.is_none(), "released");
    }

    /// A partial frame after a large one does not keep the large one's buffer.
    #[test]
    fn the_buffer_shrinks_after_a_large_frame() {
        let mut reader = MessageReader::default();
        reader.extend(&[frame(FIN | BINARY, &[0; 100_000]), frame(FIN | TEXT, b"x")[..3].to_vec()].concat());
        assert!(matches!(reader.next_message(MAX), Ok(Some(Incoming::Binary(_)))));
        assert_eq!(reader.next_message(MAX), Ok(None));
        assert_eq!(reader.held_bytes(), 3);
        let capacity = reader.pending.as_ref().map(|pending| pending.unparsed.capacity());
        assert!(capacity < Some(1000), "{capacity:?}");
    }

    #[test]
    fn several_messages_in_one_read() {
        let bytes = [frame(FIN | TEXT, b"a"), frame(FIN | TEXT, b"b"), frame(FIN | TEXT, b"c")];
        let mut reader = MessageReader::default();
        reader.extend(&bytes.concat());
        reader.extend(&frame(FIN | TEXT, b"d")[..3]);
        for expected in ["a", "b", "c"] {
            assert_eq!(reader.next_message(MAX), Ok(Some(text(expected))));
        }
        assert_eq!(reader.next_message(MAX), Ok(None));
        assert_eq!(reader.held_bytes(), 3);
    }

    #[test]
    fn errors_map_to_close_codes() {
        assert_eq!(ReadError::Protocol("x").close_code(), 1002);
        assert_eq!(ReadError::InvalidUtf8.close_code(), 1007);
        assert_eq!(ReadError::TooBig.close_code(), 1009);
        for error in [ReadError::Protocol("x"), ReadError::InvalidUtf8, ReadError::TooBig] {
            assert!(error.reason().len() <= 123);
        }
    }

    /// RFC 6455 5.5.3 and 5.5.1: FIN and the opcode, an unmasked 7-bit length, the payload.
    #[test]
    fn pong_and_close_frame_bytes() {
        assert_eq!(pong_frame(b""), [0x8A, 0x00]);
        assert_eq!(pong_frame(b"Hello"), [0x8A, 0x05, b'H', b'e', b'l', b'l', b'o']);
        assert_eq!(close_frame(1000, ""), [0x88, 0x02, 0x03, 0xE8]);
        assert_eq!(close_frame(1002, "bad"), [0x88, 0x05, 0x03, 0xEA, b'b', b'a', b'd']);
    }

    /// A long reason is cut to fit in 125 bytes, on a character boundary (123 would cut an é).
    #[test]
    fn a_close_reason_is_cut_on_a_character_boundary() {
        let frame = close_frame(1000, &"é".repeat(100));
        assert_eq!(frame[1], 124);
        assert_eq!(frame.len(), 2 + 124);
        assert_eq!(std::str::from_utf8(&frame[4..]).unwrap(), "é".repeat(61));
        assert_eq!(close_frame(1000, &"x".repeat(200)).len(), 2 + 125);
    }
}

//! A minimal WebSocket client (RFC 6455), just what a Pusher subscriber needs: the upgrade, reading
//! unmasked server frames in place, and writing a few small masked client frames.
//!
//! Why not tokio-tungstenite: the load generator must cost the machine much less than the server it
//! measures (both share two cores). Here one `read` fills a per-socket buffer, every complete frame
//! in it is handed out as a borrowed slice of that buffer, and nothing is allocated or copied per
//! frame. Servers do not fragment the small text frames Pusher sends; a fragmented frame is reported
//! as an error rather than reassembled.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starting size of a socket's read buffer; it grows to hold the largest frame seen. Small on
/// purpose: the idle scenario holds 15,000 of them.
const INITIAL_READ_BUFFER_BYTES: usize = 4096;
/// Most bytes the HTTP upgrade response may take.
const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;
/// A frame larger than this is an error (Pusher messages are limited to ~10 KB).
const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One frame from the server, borrowed from the socket's read buffer.
pub enum Frame<'a> {
    Text(&'a [u8]),
    /// A WebSocket-level ping; answer with [`WsConn::send_pong`].
    Ping(&'a [u8]),
    /// Pong or binary: nothing to do.
    Other,
    /// The server closed, with its close code if it gave one.
    Close(Option<u16>),
}

/// A connected, upgraded WebSocket.
pub struct WsConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl WsConn {
    /// Connects to `addr` and upgrades `GET /app/{key}` as pusher-js does.
    pub async fn connect(addr: SocketAddr, key: &str) -> io::Result<WsConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = WsConn { stream, buf: vec![0; INITIAL_READ_BUFFER_BYTES], start: 0, end: 0 };
        // A fixed Sec-WebSocket-Key (the RFC's sample nonce): the server only echoes a digest of
        // it, and a load generator has no proxy cache to defeat.
        let request = format!(
            "GET /app/{key}?protocol=7&client=reprise-load&version=0.1.0&flash=false HTTP/1.1\r\n\
             Host: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        conn.stream.write_all(request.as_bytes()).await?;
        let header_end = loop {
            if let Some(at) = memchr::memmem::find(&conn.buf[..conn.end], b"\r\n\r\n") {
                break at + 4;
            }
            if conn.end >= MAX_HANDSHAKE_BYTES {
                return Err(invalid("upgrade response headers too long"));
            }
            conn.fill().await?;
        };
        let status_line = conn.buf[..header_end].split(|&b| b == b'\r').next().unwrap_or_default();
        if !status_line.starts_with(b"HTTP/1.1 101") {
            return Err(invalid(format!("upgrade refused: {}", String::from_utf8_lossy(status_line))));
        }
        conn.start = header_end;
        Ok(conn)
    }

    /// Reads once from the socket into the buffer. Cancel-safe: bytes are accounted for only
    /// after the read completed. Returns an error on EOF.
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let bigger = self.buf.len() * 2;
                self.buf.resize(bigger, 0);
            }
        }
        let read = self.stream.read(&mut self.buf[self.end..]).await?;
        if read == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection"));
        }
        self.end += read;
        Ok(())
    }

    /// The next complete frame already in the buffer, if any.
    pub fn next_buffered(&mut self) -> io::Result<Option<Frame<'_>>> {
        let available = &self.buf[self.start..self.end];
        let Some((header_len, payload_len, opcode, fin)) = parse_header(available)? else {
            return Ok(None);
        };
        let total = header_len + payload_len;
        if available.len() < total {
            return Ok(None); // `fill` compacts or grows the buffer until the frame fits
        }
        let payload_at = self.start + header_len;
        self.start += total;
        if !fin || opcode == OP_CONTINUATION {
            return Err(invalid("fragmented frames are not supported"));
        }
        let payload = &self.buf[payload_at..payload_at + payload_len];
        Ok(Some(match opcode {
            OP_TEXT => Frame::Text(payload),
            OP_PING => Frame::Ping(payload),
            OP_CLOSE => Frame::Close(payload.get(..2).map(|code| u16::from_be_bytes([code[0], code[1]]))),
            OP_BINARY | OP_PONG => Frame::Other,
            other => return Err(invalid(format!("unknown opcode {other:#x}"))),
        }))
    }

    /// The next frame, reading from the socket as needed.
    pub async fn next_frame(&mut self) -> io::Result<Frame<'_>> {
        // Probe first, then re-borrow: returning the borrow from inside the loop would keep
        // `self` borrowed across `fill`.
        while self.next_buffered_len()?.is_none() {
            self.fill().await?;
        }
        Ok(self.next_buffered()?.expect("a complete frame is buffered"))
    }

    fn next_buffered_len(&self) -> io::Result<Option<usize>> {
        let available = &self.buf[self.start..self.end];
        Ok(parse_header(available)?
            .map(|(header_len, payload_len, _, _)| header_len + payload_len)
            .filter(|&total| available.len() >= total))
    }

    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(OP_TEXT, payload).await
    }

    pub async fn send_pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(OP_PONG, payload).await
    }

    /// Writes one masked frame. Client frames are rare (subscribe, pong), so the small
    /// allocation here is not on any hot path.
    async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x80 | opcode);
        match payload.len() {
            len @ 0..=125 => frame.push(0x80 | u8::try_from(len).expect("len <= 125")),
            len @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&u16::try_from(len).expect("len <= 0xFFFF").to_be_bytes());
            }
            len => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&u64::try_from(len).expect("usize fits u64").to_be_bytes());
            }
        }
        let mask: [u8; 4] = rand::random();
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, byte)| byte ^ mask[i % 4]));
        self.stream.write_all(&frame).await
    }
}

/// Parses a frame header: (header length, payload length, opcode, fin), or None if incomplete.
fn parse_header(bytes: &[u8]) -> io::Result<Option<(usize, usize, u8, bool)>> {
    let [first, second, rest @ ..] = bytes else { return Ok(None) };
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0F;
    if second & 0x80 != 0 {
        return Err(invalid("the server sent a masked frame"));
    }
    let (extra, payload_len) = match second & 0x7F {
        126 => match rest {
            [a, b, ..] => (2, usize::from(u16::from_be_bytes([*a, *b]))),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(len) => {
                let len = u64::from_be_bytes(len.try_into().expect("8 bytes"));
                (8, usize::try_from(len).map_err(|_| invalid("frame too large"))?)
            }
            None => return Ok(None),
        },
        len => (0, usize::from(len)),
    };
    if payload_len > MAX_FRAME_BYTES {
        return Err(invalid(format!("frame of {payload_len} bytes is too large")));
    }
    Ok(Some((2 + extra, payload_len, opcode, fin)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_for_each_length_form() {
        assert_eq!(parse_header(&[0x81, 5]).unwrap(), Some((2, 5, OP_TEXT, true)));
        assert_eq!(parse_header(&[0x81, 126, 1, 0]).unwrap(), Some((4, 256, OP_TEXT, true)));
        assert_eq!(parse_header(&[0x81, 126, 1]).unwrap(), None);
        assert_eq!(parse_header(&[0x88, 127, 0, 0, 0, 0, 0, 1, 0, 0]).unwrap(), Some((10, 65536, OP_CLOSE, true)));
        assert!(parse_header(&[0x81, 0x85]).is_err(), "masked server frames are refused");
    }
}

//! A minimal Server-Sent Events subscriber for Reprise's event streams (`GET /app/{key}/stream`):
//! the request written by hand, chunked transfer undone in place, and each event's `data` line
//! handed out as a slice of the socket's buffer, so it costs about what the WebSocket subscriber
//! costs (see `ws.rs` for why the load generator avoids general-purpose clients).

use std::io;

use memchr::memmem;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::pusher::{self, ID_LEN, Incoming};
use crate::rest::Target;
use crate::stats;
use crate::subscriber::{Ended, SUBSCRIBE_TIMEOUT, Shared, Tracker};

const READ_BYTES: usize = 16 * 1024;
/// Most bytes the response head may take.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// An open event stream.
pub struct SseConn {
    stream: TcpStream,
    /// Bytes read from the socket, still chunk-encoded: `raw[raw_start..]`.
    raw: Vec<u8>,
    raw_start: usize,
    /// The decoded body: events not yet handed out are `body[body_start..]`.
    body: Vec<u8>,
    body_start: usize,
    /// Body bytes left in the current chunk, then the CRLF after it.
    chunk_left: usize,
    crlf_left: usize,
    ended: bool,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

impl SseConn {
    /// Opens a stream of `channel` and reads the response head: once it is in, the server has
    /// subscribed the stream (it subscribes before it answers).
    pub async fn connect(target: &Target, channel: &str) -> io::Result<SseConn> {
        let mut stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET /app/{}/stream?channel={channel} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
            target.key, target.addr
        );
        stream.write_all(request.as_bytes()).await?;
        let mut conn = SseConn {
            stream,
            raw: Vec::with_capacity(READ_BYTES),
            raw_start: 0,
            body: Vec::with_capacity(READ_BYTES),
            body_start: 0,
            chunk_left: 0,
            crlf_left: 0,
            ended: false,
        };
        let head_end = loop {
            if let Some(at) = memmem::find(&conn.raw, b"\r\n\r\n") {
                break at + 4;
            }
            if conn.raw.len() > MAX_HEAD_BYTES || !conn.read_more().await? {
                return Err(invalid("no complete response head"));
            }
        };
        let head = String::from_utf8_lossy(&conn.raw[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") || !head.contains("transfer-encoding: chunked") {
            let status = head.lines().next().unwrap_or_default().to_owned();
            return Err(io::Error::other(format!("stream refused: {status}")));
        }
        conn.raw_start = head_end;
        conn.decode();
        Ok(conn)
    }

    async fn read_more(&mut self) -> io::Result<bool> {
        if self.raw_start > 0 {
            self.raw.drain(..self.raw_start);
            self.raw_start = 0;
        }
        let len = self.raw.len();
        self.raw.resize(len + READ_BYTES, 0);
        let read = self.stream.read(&mut self.raw[len..]).await;
        let n = *read.as_ref().unwrap_or(&0);
        self.raw.truncate(len + n);
        read.map(|n| n > 0)
    }

    /// Moves what `raw` holds of the chunked body into `body`.
    fn decode(&mut self) {
        loop {
            let raw = &self.raw[self.raw_start..];
            if raw.is_empty() || self.ended {
                return;
            }
            if self.chunk_left > 0 {
                let n = self.chunk_left.min(raw.len());
                self.body.extend_from_slice(&raw[..n]);
                self.raw_start += n;
                self.chunk_left -= n;
                if self.chunk_left == 0 {
                    self.crlf_left = 2;
                }
            } else if self.crlf_left > 0 {
                let n = self.crlf_left.min(raw.len());
                self.raw_start += n;
                self.crlf_left -= n;
            } else {
                let Some(at) = memmem::find(raw, b"\r\n") else { return };
                let size = std::str::from_utf8(&raw[..at]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
                self.raw_start += at + 2;
                match size {
                    Some(0) | None => self.ended = true,
                    Some(size) => self.chunk_left = size,
                }
            }
        }
    }

    /// Reads more of the stream. Returns false when it ended.
    pub async fn fill(&mut self) -> io::Result<bool> {
        if self.body_start > 0 && self.body_start * 2 >= self.body.len() {
            self.body.drain(..self.body_start);
            self.body_start = 0;
        }
        if self.ended || !self.read_more().await? {
            return Ok(false);
        }
        self.decode();
        Ok(true)
    }

    /// The `data` of the next complete event in the buffer (comments and `id`-only blocks are
    /// skipped); `None` until more is read.
    pub fn next_data(&mut self) -> Option<&[u8]> {
        loop {
            let rest = &self.body[self.body_start..];
            let end = memmem::find(rest, b"\n\n")?;
            let block_start = self.body_start;
            self.body_start += end + 2;
            let block = &self.body[block_start..block_start + end];
            // The server writes `data: ` last in a block, on one line (a Pusher frame is JSON).
            if let Some(at) = memmem::find(block, b"data: ") {
                return Some(&self.body[block_start + at + 6..block_start + end]);
            }
        }
    }
}

/// Opens a stream under the connect gate, with a timeout.
pub async fn open(shared: &Shared, target: &Target, channel: &str) -> io::Result<SseConn> {
    let _permit = shared.connect_gate.acquire().await.expect("the connect gate is never closed");
    match tokio::time::timeout(SUBSCRIBE_TIMEOUT, SseConn::connect(target, channel)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "stream open timed out")),
    }
}

/// Reads events until `stop` fires or the stream ends, as `subscriber::pump` does for a socket.
pub async fn pump(conn: &mut SseConn, tracker: &mut Tracker, record_latency: bool, stop: &CancellationToken) -> Ended {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        while let Some(data) = conn.next_data() {
            if let Incoming::Event { seq, sent_ns, id } = pusher::classify(data) {
                tracker.on_event(seq, id.filter(|id| id.len() == ID_LEN));
                stats::record_frame(record_latency.then_some(sent_ns));
            }
        }
        tokio::select! {
            biased;
            () = &mut stopped => return Ended::Stopped,
            filled = conn.fill() => match filled {
                Ok(true) => {}
                Ok(false) => return Ended::Closed(None),
                Err(error) => return Ended::Failed(error),
            },
        }
    }
}

//! A raw HTTP/1.1 Server-Sent Events client: it writes the request by hand, reads the status and
//! headers, undoes chunked encoding and parses events as the HTML standard says (`EventSource`'s
//! rules: comments skipped, an `id`-only block moves the last event id, `retry` noted). Every read
//! has a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::READ_TIMEOUT;

/// One dispatched event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The last event id after this event (what a reconnect sends).
    pub id: String,
    /// Whether this block carried an `id` field itself.
    pub has_id: bool,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|_| panic!("event data is not JSON: {self:?}"))
    }
}

pub struct SseClient {
    reader: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    chunked: bool,
    /// Bytes of the body not yet parsed into lines.
    pending: Vec<u8>,
    ended: bool,
    /// The body ended with its last chunk (rather than the connection being dropped).
    pub ended_cleanly: bool,
    pub last_event_id: String,
    pub retry_ms: Option<u64>,
    pub comments: usize,
}

impl SseClient {
    /// `GET path_and_query` with `headers`; returns once the response head is read.
    pub async fn connect(addr: SocketAddr, path_and_query: &str, headers: &[(&str, &str)]) -> SseClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut reader = BufReader::new(stream);
        reader.get_mut().write_all(request.as_bytes()).await.expect("write request");
        let mut client = SseClient {
            reader,
            status: 0,
            headers: Vec::new(),
            chunked: false,
            pending: Vec::new(),
            ended: false,
            ended_cleanly: false,
            last_event_id: String::new(),
            retry_ms: None,
            comments: 0,
        };
        let status_line = client.read_head_line().await;
        client.status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
        loop {
            let line = client.read_head_line().await;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            client.headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        client.chunked = client.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        client
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    async fn read_head_line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(READ_TIMEOUT, self.reader.read_line(&mut line))
            .await
            .expect("timed out reading the response head")
            .expect("read");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }

    /// A whole (non-streamed) body, for refusals.
    pub async fn body(&mut self) -> String {
        let mut text = Vec::new();
        while self.fill().await {}
        text.append(&mut self.pending);
        String::from_utf8(text).expect("UTF-8 body")
    }

    /// Reads more of the body into `pending`. Returns false at its end (or the connection's).
    async fn fill(&mut self) -> bool {
        if self.ended {
            return false;
        }
        let read =
            tokio::time::timeout(READ_TIMEOUT, self.read_some()).await.expect("timed out waiting for the stream");
        if !read {
            self.ended = true;
        }
        read
    }

    async fn read_some(&mut self) -> bool {
        if !self.chunked {
            if let Some(length) = self.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
                let mut body = vec![0; length];
                self.reader.read_exact(&mut body).await.expect("the whole body");
                self.pending.extend_from_slice(&body);
                self.ended_cleanly = true;
                return false; // all of it is in
            }
            let mut buffer = [0; 4096];
            return match self.reader.read(&mut buffer).await {
                Ok(0) | Err(_) => false,
                Ok(n) => {
                    self.pending.extend_from_slice(&buffer[..n]);
                    true
                }
            };
        }
        let mut size_line = String::new();
        match self.reader.read_line(&mut size_line).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else { return false };
        if size == 0 {
            self.ended_cleanly = true;
            return false;
        }
        let mut chunk = vec![0; size + 2];
        if self.reader.read_exact(&mut chunk).await.is_err() {
            return false;
        }
        self.pending.extend_from_slice(&chunk[..size]);
        true
    }

    async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                return Some(String::from_utf8(line[..at].to_vec()).expect("UTF-8 stream"));
            }
            // The end may come with the last bytes (a body with a length is read whole).
            if !self.fill().await && !self.pending.contains(&b'\n') {
                return None;
            }
        }
    }

    /// The next dispatched event, or None when the stream ends.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        let (mut event, mut data, mut has_id) = (String::new(), None::<String>, false);
        loop {
            let line = self.next_line().await?;
            if line.is_empty() {
                if let Some(data) = data.take() {
                    let event = if event.is_empty() { "message".to_owned() } else { std::mem::take(&mut event) };
                    return Some(SseEvent { id: self.last_event_id.clone(), has_id, event, data });
                }
                event.clear();
                has_id = false;
                continue;
            }
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_str(), ""),
            };
            match field {
                "id" => {
                    self.last_event_id = value.to_owned();
                    has_id = true;
                }
                "event" => event = value.to_owned(),
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_owned()),
                },
                "retry" => self.retry_ms = value.parse().ok(),
                _ => {}
            }
        }
    }

    /// The next event that is not one of the stream's own (`reprise:*`).
    pub async fn next_app_event(&mut self) -> SseEvent {
        loop {
            let event = self.next_event().await.expect("the stream ended");
            if !event.event.starts_with("reprise:") {
                return event;
            }
        }
    }

    /// Reads until the stream ends (or `limit` passes); returns every event read.
    pub async fn read_to_end(&mut self, limit: Duration) -> Vec<SseEvent> {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            match self.next_event().await {
                Some(event) => events.push(event),
                None => return events,
            }
        }
        panic!("the stream did not end within {limit:?}");
    }
}

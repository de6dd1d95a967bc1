//! Event streams: a channel's log as Server-Sent Events (`GET /app/{key}/stream`), gap-free across
//! reconnects by the browser's own `Last-Event-ID` (the wire format is `reprise_api::sse`).
//!
//! A stream is a hub subscriber like a WebSocket, with the same rules: one socket with a bounded
//! outbox subscribed to every channel of the stream, and the same "subscribe, then read up to the
//! published head, drop live copies at or below the watermark" start (see docs/architecture.md,
//! "Replay: subscribe, then read"), so no event is missed or sent twice at the seam, and a gap
//! the log no longer covers is said (`reprise:not_recovered`), never skipped in silence.
//!
//! [`open`] runs in the request: it subscribes, reads the log and renders the start, so a log
//! failure is still a 503. [`run`] then writes live events from a task of its own, tracked for
//! shutdown like a WebSocket's, into the response body through a small channel:
//!
//! - a full outbox (a slow reader) or a write that does not drain in [`WRITE_STALL_TIMEOUT`] drops
//!   the connection at once; the client resumes with `Last-Event-ID`;
//! - on shutdown the body ends, so `EventSource` reconnects after its `retry`;
//! - with nothing to send, a comment every `server.sse_heartbeat_secs`.

mod run;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reprise_api::{ChannelName, EventId, sse};
use tokio::sync::mpsc;

use crate::ServerState;
use crate::accept::AbortConnection;
use crate::apps::App;
use crate::connection::ConnectionSlot;
use crate::hub::{Socket, SocketId};
use crate::throttle::ThrottledByKey;

pub use self::run::run;
pub use self::stream::Stream;

/// How long one chunk may take to be taken by the connection. A client that stopped reading
/// would otherwise hold the stream, its outbox and its descriptor until TCP gives up.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The reconnection delay a stream advises (`retry:`), randomised per stream in this range so
/// that the streams a restart ends do not all come back in the same instant.
pub const RETRY_MS: std::ops::Range<u64> = 1000..3000;
/// The `retry:` of an over-capacity answer: back off longer.
pub const OVER_CAPACITY_RETRY_MS: std::ops::Range<u64> = 5000..15000;
/// Chunks waiting for the connection: the start, and one batch behind the one being written.
const CHUNKS_QUEUED: usize = 2;

/// Where a stream starts.
pub enum Resume {
    /// Each channel at its published head (a cache channel with its last event).
    Fresh,
    /// From a cursor: one position per channel.
    From(Vec<EventId>),
    /// A `Last-Event-ID` this server cannot read (for instance made by a server with another
    /// cursor version): every channel is told it was not recovered, and starts at its head.
    Unreadable,
}

/// Why a stream is not served. Answered with a status and `{"error": ...}` before anything is
/// streamed.
#[derive(Debug, thiserror::Error)]
pub enum StreamRefusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the application is over its connection quota")]
    OverQuota,
    #[error("the event log is unavailable")]
    Unavailable,
}

/// Refused streams by status, for their log lines.
static REFUSALS: ThrottledByKey<StatusCode> = ThrottledByKey::new();

impl IntoResponse for StreamRefusal {
    fn into_response(self) -> Response {
        let status = match self {
            StreamRefusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            StreamRefusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            StreamRefusal::Forbidden(_) => StatusCode::FORBIDDEN,
            StreamRefusal::NotFound(_) => StatusCode::NOT_FOUND,
            StreamRefusal::OverQuota | StreamRefusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        // Every one at debug; at info once per status and interval, with a count (`throttle`).
        tracing::debug!(status = status.as_u16(), error = %self, "event stream refused");
        if let Some(count) = REFUSALS.count(status, tokio::time::Instant::now()) {
            tracing::info!(status = status.as_u16(), error = %self, count, "event stream refused");
        }
        let body = reprise_api::http::ErrorBody { error: self.to_string() };
        (status, axum::Json(body)).into_response()
    }
}

/// Subscribes a new stream of `channels` (sorted, each once) to the hub, reads what `resume` asks
/// for from the log, and returns the stream with its first chunk: `retry`, each channel's start
/// and the position of every channel.
pub async fn open(
    state: &ServerState,
    app: Arc<App>,
    channels: Vec<ChannelName>,
    resume: Resume,
    slot: ConnectionSlot,
) -> Result<(Stream, String), StreamRefusal> {
    let socket = Socket::new(SocketId::random(), state.config.server.outbox_frames);
    let mut stream = Stream::new(Arc::clone(&app), socket, channels, slot, state.cluster.clone());
    // A cursor no log can recover (past any head): what an unreadable `Last-Event-ID` resumes.
    let unrecoverable = EventId::new(EventId::MAX_TIMESTAMP_MS, u64::MAX);
    let since: Vec<Option<EventId>> = match resume {
        Resume::Fresh => vec![None; stream.channels.len()],
        Resume::From(positions) => positions.into_iter().map(Some).collect(),
        Resume::Unreadable => vec![Some(unrecoverable); stream.channels.len()],
    };

    // Subscribe, then read: live events from here on wait in the outbox.
    stream.subscribe_all();
    // Every head first, so that the cursor of the first event sent already places every channel
    // (a client cut off in the middle of the start resumes each channel from the right place).
    let mut heads = Vec::with_capacity(stream.channels.len());
    for channel in &stream.channels {
        heads.push(state.log.published_head(&app.hub, &app.log_key(channel)).await.map_err(unavailable)?);
    }
    for (index, head) in heads.iter().enumerate() {
        stream.set_position(index, since[index].unwrap_or(head.unwrap_or(EventId::new(0, 0))));
    }
    let mut first = String::new();
    sse::retry(&mut first, rand::random_range(RETRY_MS));
    for (index, head) in heads.into_iter().enumerate() {
        let channel = &stream.channels[index];
        let key = app.log_key(channel);
        let replay = state.log.replay(&key, since[index], head, channel.is_cache()).await.map_err(unavailable)?;
        stream.start_channel(&mut first, index, since[index].is_some(), &replay);
    }
    sse::position(&mut first, stream.cursor());
    Ok((stream, first))
}

fn unavailable(error: reprise_storage::StorageError) -> StreamRefusal {
    tracing::error!(%error, "reading the event log for a stream failed");
    StreamRefusal::Unavailable
}

/// Starts `stream`'s live task and returns the response that carries it.
pub fn respond(state: Arc<ServerState>, stream: Stream, first: String, abort: Option<AbortConnection>) -> Response {
    let (chunks_tx, mut chunks_rx) = mpsc::channel::<Bytes>(CHUNKS_QUEUED);
    chunks_tx.try_send(Bytes::from(first)).expect("a new channel has room for the first chunk");
    let tracker = state.tracker.clone();
    tracker.spawn(run(state, stream, chunks_tx, abort));
    let body = futures_util::stream::poll_fn(move |cx| {
        chunks_rx.poll_recv(cx).map(|chunk| chunk.map(Ok::<_, std::convert::Infallible>))
    });
    event_stream_response(Body::from_stream(body))
}

/// The over-capacity answer: a stream that says so (`reprise:error` with 4100, as a WebSocket's
/// close code) and ends, with a long `retry`, so `EventSource` backs off and comes back (an error
/// status would make it give up for good).
pub fn over_capacity() -> Response {
    let mut text = String::new();
    sse::retry(&mut text, rand::random_range(OVER_CAPACITY_RETRY_MS));
    let data = serde_json::json!({ "code": reprise_api::ErrorCode::OverCapacity.as_u16(), "message": "Over capacity: reconnect later" });
    sse::event(&mut text, None, sse::ERROR, &data.to_string());
    event_stream_response(Body::from(text))
}

fn event_stream_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream; charset=utf-8"));
    // Neither a browser nor a proxy may cache or buffer a stream; nginx honours X-Accel-Buffering.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

//! The cap on open connections: how many accepted sockets (HTTP and WebSocket alike) the server
//! keeps at once, so that it never runs out of file descriptors for `/up`, the HTTP API and the
//! log.
//!
//! Every accepted socket takes an [`OpenConnection`], carried by its IO ([`CountedIo`]) so it is
//! given back exactly when the socket is closed, whether it served HTTP or was upgraded. Past the
//! cap a connection is still accepted, from the descriptors kept in reserve, and answered: a
//! WebSocket upgrade with close 4100 ("over capacity": back off, reconnect), an HTTP API call with
//! 503; `/up` still answers 200, since a full server is alive. Past the cap plus
//! [`OVER_CAPACITY_ANSWERS`], a connection is closed as soon as it is accepted.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Descriptors kept out of the default cap: the log's files, the listener, the runtime's own
/// (epoll, wake-ups), stdio, and the over-capacity answers below. sled keeps a handful of files
/// open; 256 leaves room for it to open more while the cap is full.
pub const FD_RESERVE: u64 = 256;
/// Over-capacity connections being answered at once (each holds a descriptor until it has its
/// 4100 or 503 and closes). A flood beyond this is closed unanswered, so it cannot eat the reserve.
pub const OVER_CAPACITY_ANSWERS: usize = 64;
/// The request-head timeout of an over-capacity connection, if shorter than the usual one. A
/// client sends its request at once; a connection that sends nothing must not keep one of the
/// [`OVER_CAPACITY_ANSWERS`] places from clients that would be told to back off.
pub const OVER_CAPACITY_HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// The default cap: the open-files limit (already raised to the hard limit by `main`) minus
/// [`FD_RESERVE`], and at least half the limit when the limit is small.
pub fn default_max_open_connections() -> usize {
    use rustix::process::{Resource, getrlimit};
    // None means no limit: the cap then stays out of the way.
    let limit = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let cap = limit.saturating_sub(FD_RESERVE).max(limit / 2);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// Counts open connections against the cap. Shared by the accept loop and every socket's
/// [`OpenConnection`].
#[derive(Debug)]
pub struct ConnectionCap {
    open: AtomicUsize,
    max: usize,
}

/// What the accept loop does with a new socket.
pub enum Admission {
    /// Serve it.
    Admitted(OpenConnection),
    /// Answer it with 4100 or 503, then close.
    OverCapacity(OpenConnection),
    /// Close it now, unanswered.
    Refused,
}

impl ConnectionCap {
    pub fn new(max: usize) -> Arc<ConnectionCap> {
        Arc::new(ConnectionCap { open: AtomicUsize::new(0), max })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// How many sockets are open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Counts a newly accepted socket and says what to do with it.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let counted = OpenConnection(Arc::clone(self));
        if before < self.max {
            Admission::Admitted(counted)
        } else if before < self.max.saturating_add(OVER_CAPACITY_ANSWERS) {
            Admission::OverCapacity(counted)
        } else {
            Admission::Refused // dropping `counted` gives the count back
        }
    }
}

/// One open socket's place in the count; dropping it gives the place back.
#[derive(Debug)]
pub struct OpenConnection(Arc<ConnectionCap>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An accepted TCP stream that holds its [`OpenConnection`]. hyper hands the stream to the
/// WebSocket on upgrade, so the count follows the socket to its close, whatever serves it.
pub struct CountedIo {
    stream: TcpStream,
    _counted: OpenConnection,
}

impl CountedIo {
    pub fn new(stream: TcpStream, counted: OpenConnection) -> CountedIo {
        CountedIo { stream, _counted: counted }
    }
}

impl AsyncRead for CountedIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Marks a request that arrived on an over-capacity connection (a request extension), so that
/// routes answer it with 4100 or 503.
#[derive(Debug, Clone, Copy)]
pub struct OverCapacity;

/// The routes as an over-capacity connection is served: each request marked [`OverCapacity`], and
/// each answer but an upgrade closing the connection, which must not stay open idle.
pub fn over_capacity_routes(app: Router) -> Router {
    app.layer(axum::middleware::map_response(close_after)).layer(Extension(OverCapacity))
}

async fn close_after(mut response: Response) -> Response {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Middleware for the HTTP API routes of an over-capacity connection: 503.
pub async fn refuse_over_capacity(_request: Request, _next: Next) -> Response {
    let body = reprise_api::http::ErrorBody { error: "the server is over capacity; retry later".to_owned() };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count goes back down however a connection ends, and refusals do not leak places.
    #[test]
    fn admission_follows_the_count() {
        let cap = ConnectionCap::new(2);
        let first = cap.admit();
        let second = cap.admit();
        assert!(matches!(first, Admission::Admitted(_)) && matches!(second, Admission::Admitted(_)));
        let over: Vec<Admission> = (0..OVER_CAPACITY_ANSWERS).map(|_| cap.admit()).collect();
        assert!(over.iter().all(|admission| matches!(admission, Admission::OverCapacity(_))));
        assert!(matches!(cap.admit(), Admission::Refused));
        assert_eq!(cap.open(), 2 + OVER_CAPACITY_ANSWERS);
        drop(over);
        drop(first);
        assert_eq!(cap.open(), 1);
        assert!(matches!(cap.admit(), Admission::Admitted(_)));
    }
}

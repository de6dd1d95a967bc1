//! The accept loop: one task per HTTP connection (hyper's HTTP/1.1, with upgrades for the
//! WebSocket), a deadline for every request head, the connection cap, a way for a handler to drop
//! its connection ([`AbortConnection`]), and accept errors that neither spin nor stall.
//!
//! In place of `axum::serve`, which sets no header-read timeout (a socket that never sends a
//! request is held forever), sleeps a second on every accept error and logs each one.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::capacity::{self, Admission, ConnectionCap, CountedIo};
use crate::routes::front::Front;
use crate::throttle::Throttled;

/// How long the loop waits after an accept error other than a client's reset. Out of
/// descriptors (EMFILE, ENFILE), `accept` fails at once for as long as the shortage lasts: without
/// a pause the loop would spin; with a long one (axum's is a second) every pending client waits.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts connections and serves `app` on them (`over_capacity_app` on those over the cap)
/// until `shutdown` fires; then stops accepting, lets every HTTP connection finish its request in
/// flight, and returns once they are all closed. Upgraded sockets are not waited for here: they
/// have their own task and tracker.
pub async fn serve(
    listener: TcpListener,
    (app, over_capacity_app): (Front, Front),
    cap: Arc<ConnectionCap>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    let mut accept_errors = Throttled::default();
    let mut over_capacity = Throttled::default();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            // The client gave up while queued: nothing is wrong here.
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                if let Some(count) = accept_errors.count(Instant::now()) {
                    tracing::warn!(%error, count, "accept failed; pausing before the next accept");
                }
                tokio::select! {
                    () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    () = shutdown.cancelled() => break,
                }
            }
        };
        // No Nagle: a frame must not wait for the ACK of the previous one (up to 40 ms with
        // delayed ACKs). Batching is done above TCP, one write per batch of queued frames.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let admission = cap.admit();
        if !matches!(admission, Admission::Admitted(_))
            && let Some(count) = over_capacity.count(Instant::now())
        {
            tracing::warn!(max_open_connections = cap.max(), count, "over capacity: refusing connections");
        }
        let (counted, routes, header_timeout) = match admission {
            Admission::Admitted(counted) => (counted, &app, header_timeout),
            Admission::OverCapacity(counted) => {
                (counted, &over_capacity_app, header_timeout.min(capacity::OVER_CAPACITY_HEADER_TIMEOUT))
            }
            Admission::Refused => continue, // `stream` is closed here
        };
        let io = TokioIo::new(CountedIo::new(stream, counted));
        let abort = CancellationToken::new();
        let service = TowerToHyperService::new(routes.clone());
        let marker = AbortConnection(abort.clone());
        let shutdown = shutdown.clone();
        // hyper polls a request's handler inside the connection's future, so the handler finds
        // its connection in the task-local (a request extension cost ~800 instructions per request
        // more: callgrind, docs/benchmarks.md, round two, fifth pass).
        connections.spawn(CONNECTION.scope(marker, async move {
            // Also bounds the wait for the next request on a kept-alive connection: hyper
            // restarts this deadline whenever it starts reading a request head.
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let connection = http.serve_connection(io, service).with_upgrades();
            tokio::pin!(connection);
            let served = tokio::select! {
                served = connection.as_mut() => served,
                () = abort.cancelled() => return, // dropping the connection closes the socket
                () = shutdown.cancelled() => {
                    // Finish the request in flight (an idle connection closes at once).
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        served = connection => served,
                        () = abort.cancelled() => return,
                    }
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "HTTP connection ended with an error");
            }
        }));
    }
    connections.close();
    connections.wait().await;
}

tokio::task_local! {
    /// The connection whose task this is: set for each connection's whole task.
    static CONNECTION: AbortConnection;
}

/// Lets a handler drop its HTTP connection at once ([`AbortConnection::current`]). A streamed
/// response whose client stopped reading cannot be ended with a last chunk: hyper's write is
/// stuck, and only closing the socket frees it (and its descriptor) before TCP gives up, minutes
/// later.
#[derive(Clone)]
pub struct AbortConnection(CancellationToken);

impl AbortConnection {
    /// The connection of the request being handled; None outside a connection's task (a
    /// handler called directly, as in a test).
    pub fn current() -> Option<AbortConnection> {
        CONNECTION.try_with(AbortConnection::clone).ok()
    }

    /// Closes the connection this request came on, whatever it is doing.
    pub fn abort(&self) {
        self.0.cancel();
    }
}

/// A client's reset or abort while its connection was queued.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(error.kind(), ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset)
}

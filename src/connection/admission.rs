//! Who may open a connection: refusals before the handshake (unknown app, origin, quota), and the
//! app's `max_connections` slots.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use reprise_api::{ErrorCode, frames, websocket};
use tokio::io::AsyncWriteExt;

use super::{CLOSE_WRITE_TIMEOUT, WsStream};
use crate::apps::App;
use crate::hub::encode_text;
use crate::throttle::ThrottledByKey;

/// Why a connection was refused before the handshake.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    UnknownApp,
    OriginNotAllowed,
    OverQuota,
    /// The server is at its `max_open_connections`.
    OverCapacity,
}

impl Refusal {
    fn code_and_message(self) -> (ErrorCode, &'static str) {
        match self {
            Refusal::UnknownApp => (ErrorCode::ApplicationDoesNotExist, "Application does not exist"),
            Refusal::OriginNotAllowed => (ErrorCode::Unauthorized, "Origin not allowed"),
            Refusal::OverQuota => (ErrorCode::OverConnectionQuota, "Application is over connection quota"),
            Refusal::OverCapacity => (ErrorCode::OverCapacity, "Over capacity: reconnect later"),
        }
    }
}

/// Refused connections by close code, for their log lines (`throttle`).
static REFUSALS: ThrottledByKey<u16> = ThrottledByKey::new();

/// Tells a refused client why (a `pusher:error` with the code) and closes with that code.
pub async fn refuse(mut ws: WsStream, refusal: Refusal) {
    let (code, message) = refusal.code_and_message();
    // Over capacity is logged once a minute by the accept loop: a flood must not log per socket.
    // The others: every one at debug; at info once per code and interval, with a count.
    if !matches!(refusal, Refusal::OverCapacity) {
        tracing::debug!(code = code.as_u16(), message, "connection refused");
        if let Some(count) = REFUSALS.count(code.as_u16(), tokio::time::Instant::now()) {
            tracing::info!(code = code.as_u16(), message, count, "connection refused");
        }
    }
    let mut wire = encode_text(&frames::error(Some(code), message)).to_vec();
    wire.extend_from_slice(&websocket::close_frame(code.as_u16(), message));
    // Bounded: a client that does not read cannot keep the refused socket open.
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, ws.io.write_all(&wire)).await;
}

/// One of an app's `max_connections`; gives it back however the connection ends.
pub struct ConnectionSlot(Arc<App>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.hub.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Takes a connection slot for `app`, unless it is over `max_connections`: this node's
/// connections, exact, plus (in cluster mode) the other nodes' as the census last read them.
pub fn reserve_slot(app: &Arc<App>) -> Option<ConnectionSlot> {
    let previous = app.hub.connections.fetch_add(1, Ordering::AcqRel);
    let slot = ConnectionSlot(Arc::clone(app));
    let elsewhere = app.hub.connections_elsewhere.load(Ordering::Relaxed);
    match app.config.max_connections {
        Some(max) if previous.saturating_add(elsewhere) >= max => None, // dropping `slot` gives the count back
        _ => Some(slot),
    }
}

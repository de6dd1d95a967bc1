//! A stream's live task: takes what fan-out queued in the outbox, renders it, and hands it to
//! the response body; heartbeats; cuts a slow or stalled reader off; ends on shutdown.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use reprise_api::sse;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Stream, WRITE_STALL_TIMEOUT};
use crate::ServerState;
use crate::accept::AbortConnection;

/// The batch buffer's capacity kept between wake-ups (as a WebSocket connection keeps).
const BATCH_CAPACITY_KEPT: usize = 64;
/// How long the last chunk of a stream that ends on shutdown may take to be taken.
const LAST_CHUNK_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a stream ended.
#[derive(Debug)]
enum Ended {
    /// The client went away (the body was dropped).
    ClientGone,
    /// Its outbox overflowed, or a close was asked of its socket.
    SlowConsumer,
    /// A chunk was not taken within `WRITE_STALL_TIMEOUT`.
    Stalled,
    Shutdown,
}

/// Serves `stream` live until it ends: into `chunks_tx`, read by the response body.
pub async fn run(
    state: Arc<ServerState>,
    mut stream: Stream,
    chunks_tx: mpsc::Sender<Bytes>,
    abort: Option<AbortConnection>,
) {
    let socket = Arc::clone(&stream.socket);
    let heartbeat_every = Duration::from_secs(state.config.server.sse_heartbeat_secs);
    let shutdown = state.shutdown.clone();
    // Created once and polled from every iteration, as in the WebSocket connection loop.
    let cancelled = shutdown.cancelled();
    let woken = socket.woken();
    let heartbeat = tokio::time::sleep(heartbeat_every);
    tokio::pin!(cancelled, woken, heartbeat);
    let mut batch = VecDeque::new();
    let ended = 'serve: loop {
        let chunk = tokio::select! {
            () = &mut woken => {
                woken.set(socket.woken());
                if socket.close_code() != 0 {
                    break Ended::SlowConsumer;
                }
                socket.take_frames(&mut batch);
                let mut out = String::new();
                for frame in batch.drain(..) {
                    stream.send_live(&mut out, &frame);
                }
                // A burst grew the batch; a quiet stream should not keep its room.
                if batch.capacity() > BATCH_CAPACITY_KEPT {
                    batch = VecDeque::new();
                }
                if out.is_empty() {
                    continue; // only frames a stream does not carry
                }
                out
            }
            () = &mut heartbeat => {
                let mut out = String::new();
                sse::comment(&mut out, "heartbeat");
                out
            }
            () = &mut cancelled => break Ended::Shutdown,
            () = chunks_tx.closed() => break Ended::ClientGone,
        };
        // The chunk waits while the connection writes the previous one; a reader that stopped
        // reading stalls it while the outbox fills, so the close asked on overflow is heard here.
        let send = tokio::time::timeout(WRITE_STALL_TIMEOUT, chunks_tx.send(Bytes::from(chunk)));
        tokio::pin!(send);
        let mut frames_pending = false;
        loop {
            tokio::select! {
                sent = &mut send => match sent {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => break 'serve Ended::ClientGone,
                    Err(_) => break 'serve Ended::Stalled,
                },
                () = &mut woken => {
                    woken.set(socket.woken());
                    if socket.close_code() != 0 {
                        break 'serve Ended::SlowConsumer;
                    }
                    frames_pending = true;
                }
                () = &mut cancelled => break 'serve Ended::Shutdown,
            }
        }
        if frames_pending {
            socket.wake(); // the wake-up this send consumed: take those frames next
        }
        heartbeat.as_mut().reset(Instant::now() + heartbeat_every);
    };

    let app = &stream.app.config.id;
    match ended {
        Ended::ClientGone => tracing::debug!(%app, "event stream closed by the client"),
        Ended::SlowConsumer => {
            stream.app.hub.slow_consumers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%app, "slow consumer: event stream outbox full, dropping the connection");
            abort_connection(abort.as_ref());
        }
        Ended::Stalled => {
            tracing::warn!(%app, "event stream writes stalled: dropping the connection");
            abort_connection(abort.as_ref());
        }
        Ended::Shutdown => {
            // Ending the body ends the response: `EventSource` reconnects after its `retry`.
            let mut out = String::new();
            sse::comment(&mut out, "server shutting down: reconnect");
            let sent = tokio::time::timeout(LAST_CHUNK_TIMEOUT, chunks_tx.send(Bytes::from(out))).await;
            if sent.is_err() {
                abort_connection(abort.as_ref());
            }
        }
    }
    // Dropping `chunks_tx` ends the body; dropping `stream` leaves every channel.
}

/// Drops the connection: a client cut off mid-stream reconnects and resumes with `Last-Event-ID`.
fn abort_connection(abort: Option<&AbortConnection>) {
    match abort {
        Some(abort) => abort.abort(),
        // Only requests served without the accept loop (router tests) have no handle: ending the
        // body is all that can be done there.
        None => tracing::debug!("no connection handle to abort"),
    }
}

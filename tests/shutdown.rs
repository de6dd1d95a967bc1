//! Graceful shutdown: every socket is told to reconnect now (4200), `run` returns `Ok` after
//! flushing the log, and a server restarted on the same data directory serves again with the
//! events published before the stop.

mod support;

use std::time::Duration;

use reprise::config::Durability;
use support::{APP_KEY, TestServer};

/// On shutdown every connected client gets close code 4200 ("reconnect now"), so pusher-js
/// reconnects at once (to the next instance) instead of backing off, and `stop` returns `Ok`.
#[tokio::test]
async fn stop_closes_every_socket_with_4200_and_returns_ok() {
    let mut server = TestServer::start().await;
    let mut idle = server.client().await;
    let mut subscribed = server.client().await;
    subscribed.subscribe("news").await;
    subscribed.subscribe_presence("presence-room", "ann", serde_json::json!({})).await;

    let (stopped, idle_code, subscribed_code) =
        tokio::join!(server.stop(), idle.expect_close(), subscribed.expect_close());
    stopped.expect("clean shutdown");
    assert_eq!(idle_code, 4200);
    assert_eq!(subscribed_code, 4200);

    // Accepting has stopped: nothing answers on the old address any more.
    let refused = tokio_tungstenite::connect_async(server.ws_url(APP_KEY)).await;
    assert!(refused.is_err(), "a stopped server accepted a connection");
}

/// A server restarted on the same data directory accepts clients again and still has what was
/// published before the stop, even with buffered durability and no periodic flush in between:
/// shutdown flushes the log.
#[tokio::test]
async fn restart_on_the_same_data_dir_serves_again_with_the_log() {
    let server = TestServer::start_with(|config| {
        config.server.durability = Durability::Buffered;
        config.server.flush_every_ms = 3_600_000;
    })
    .await;
    let id = server.rest().trigger_id("news", "headline", "before the restart").await;

    let server = server.restart().await;
    let mut client = server.client().await;
    client.subscribe("news").await;
    server.rest().trigger("news", "headline", "after the restart").await;
    assert_eq!(client.expect_event("headline").await["data"], "after the restart");

    let rest = server.rest();
    let (status, history) = rest.call("GET", &rest.path("/channels/news/events"), &[], None).await;
    assert_eq!(status, 200, "{history}");
    let events = history["events"].as_array().expect("events array");
    assert_eq!(events.len(), 2, "{history}");
    assert_eq!(events[0]["id"], id);
    assert_eq!(events[0]["data"], "before the restart");
}

/// Shutdown does not wait for a client that ignores the close: `stop` returns within the grace
/// period even while a socket never reads.
#[tokio::test]
async fn stop_returns_even_if_a_client_never_reads() {
    let mut server = TestServer::start_with(|config| config.server.shutdown_grace_ms = 500).await;
    let _deaf = server.client().await; // never read again
    let stopped = tokio::time::timeout(Duration::from_secs(5), server.stop()).await;
    stopped.expect("stop took longer than the grace period allows").expect("clean shutdown");
}

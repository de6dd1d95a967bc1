//! What the HTTP API and the sockets do when the log fails: a failing-log double (`FaultyLog`)
//! around the real sled log injects the failures a real disk does not give on demand.

mod support;

use std::sync::Arc;
use std::time::Duration;

use reprise_storage::faulty::{Fault, FaultyLog};
use reprise_storage::{EventLog, SledLog};
use serde_json::json;
use support::{APP_ID, TestServer, data_of, event_id};

async fn server_on_faulty_log() -> (TestServer, Arc<FaultyLog<SledLog>>) {
    let log = Arc::new(FaultyLog::new(SledLog::open_temporary().expect("a temporary log")));
    let server = TestServer::start_on_log(Arc::clone(&log) as Arc<dyn EventLog>).await;
    (server, log)
}

async fn publish(server: &TestServer, channel: &str, data: &str) -> (u16, serde_json::Value) {
    let body = json!({"name": "update", "channel": channel, "data": data});
    server.rest().call("POST", &format!("/apps/{APP_ID}/events"), &[], Some(&body)).await
}

/// An append the log refuses is answered 503 and publishes nothing: no subscriber gets it,
/// history does not hold it, the next event takes the sequence it would have had, and the
/// channel is not left half-announced (a later subscribe to it does not wait for it).
#[tokio::test]
async fn a_refused_append_publishes_nothing() {
    let (server, log) = server_on_faulty_log().await;
    let mut watcher = server.client().await;
    watcher.subscribe("orders").await;
    log.set(Fault::Append, true);
    let (status, body) = publish(&server, "orders", "lost").await;
    assert_eq!(status, 503, "{body}");
    log.set(Fault::Append, false);

    let mut cold = server.client().await;
    cold.subscribe("cold").await; // a channel nobody watched: its head is read from the log
    log.set(Fault::Append, true);
    assert_eq!(publish(&server, "cold", "lost").await.0, 503);
    log.set(Fault::Append, false);
    cold.send_json(json!({"event": "pusher:unsubscribe", "data": {"channel": "cold"}})).await;
    let mut late = server.client().await;
    late.subscribe("cold").await;

    let id = event_id(&server.rest().trigger("orders", "update", "kept").await["ids"]["orders"]);
    assert_eq!(id.seq(), 1, "the refused append took no sequence");
    let frame = watcher.next_app_event().await;
    assert_eq!(frame["data"], "kept", "the refused event never reached a subscriber");
    let (events, _) = server.rest().history_all("orders").await;
    assert_eq!(events.iter().map(|e| e["data"].clone()).collect::<Vec<_>>(), vec![json!("kept")]);
}

/// A flush that fails after the append is answered 500 ("published but not durable; do not
/// retry"), as docs/architecture.md says. A failed flush is the disk failing (sled cannot write
/// again until reopened, and a failed fsync cannot be retried), so the server then stops with an
/// error naming the log, for its supervisor to restart it, instead of refusing every later
/// publish while `/up` says OK (issue 11). Sockets are closed with 4200 (the event may or may not
/// reach them first: shutdown does not wait for outboxes), and resume from the log.
#[tokio::test]
async fn a_failed_flush_is_published_but_not_durable_and_stops_the_server() {
    let (mut server, log) = server_on_faulty_log().await;
    let mut watcher = server.client().await;
    watcher.subscribe("orders").await;
    log.set(Fault::Flush, true);
    let (status, body) = publish(&server, "orders", "maybe").await;
    assert_eq!(status, 500, "{body}");
    assert!(body["error"].as_str().unwrap().contains("do not retry"), "{body}");
    assert_eq!(watcher.expect_close().await, 4200, "sockets are told to reconnect elsewhere");
    let stopped = server.stopped().await;
    assert!(
        matches!(&stopped, Err(reprise::ServerError::Failed(problem)) if problem.contains("the disk refused a write")),
        "{stopped:?}"
    );
}

/// A subscribe that cannot read the channel's head gets a 503 subscription error and leaves no
/// subscription behind; once the log reads again, the same socket subscribes.
#[tokio::test]
async fn a_subscribe_that_cannot_read_the_log_is_refused_cleanly() {
    let (server, log) = server_on_faulty_log().await;
    server.rest().trigger("orders", "update", "1").await;
    let mut client = server.client().await;
    log.set(Fault::Read, true);
    client.send_subscribe(json!({"channel": "orders"})).await;
    let refused = client.expect_event("pusher:subscription_error").await;
    assert_eq!(data_of(&refused)["status"], 503, "{refused}");
    let (status, info) = server.rest().call("GET", &format!("/apps/{APP_ID}/channels/orders"), &[], None).await;
    assert_eq!((status, &info["occupied"]), (200, &json!(false)), "no ghost subscription: {info}");
    log.set(Fault::Read, false);
    let subscribed = client.subscribe("orders").await;
    assert_eq!(event_id(&subscribed["replay"]["head"]).seq(), 1);
}

/// A resume on a channel the hub does not track, sent while a publish to it is between its
/// append and its fan-out (a slow flush), gets that event exactly once: the subscribe waits
/// for the fan-out instead of taking the log's head, which is ahead of what is durable.
#[tokio::test]
async fn a_resume_during_a_slow_flush_gets_the_event_once() {
    let (server, log) = server_on_faulty_log().await;
    let first = server.rest().trigger_id("orders", "update", "1").await;
    log.set_flush_delay(Duration::from_millis(800));
    let rest = server.rest();
    let slow = tokio::spawn(async move { rest.trigger_id("orders", "update", "2").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!slow.is_finished(), "the subscribe must land during the slow flush");
    let mut client = server.client().await;
    let replay = client.subscribe_since("orders", &first).await;
    assert_eq!(replay["recovered"], true, "{replay}");
    let second = slow.await.unwrap();
    let frame = client.next_app_event().await;
    assert_eq!((frame["data"].as_str(), frame["id"].as_str()), (Some("2"), Some(second.as_str())));
    log.set_flush_delay(Duration::ZERO);
    server.rest().trigger("orders", "update", "3").await;
    assert_eq!(client.next_app_event().await["data"], "3", "event 2 came once, then 3");
}

/// A panic inside the committer: that publish is answered 500 (its outcome is unknown), `/up`
/// turns 503 and names the committer, and the server shuts itself down with an error so a
/// supervisor restarts it, instead of accepting publishes it can never answer.
#[tokio::test]
async fn a_committer_panic_stops_the_server_cleanly() {
    let (mut server, log) = server_on_faulty_log().await;
    let mut client = server.client().await;
    log.set(Fault::PanicOnAppend, true);
    let (status, body) = publish(&server, "orders", "boom").await;
    assert_eq!(status, 500, "{body}");
    let close = client.expect_close().await;
    assert_eq!(close, 4200, "sockets are told to reconnect elsewhere");
    let stopped = server.stopped().await;
    assert!(
        matches!(&stopped, Err(reprise::ServerError::Failed(problem)) if problem.contains("committer")),
        "{stopped:?}"
    );
}

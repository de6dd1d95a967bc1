//! A full disk, or one that stops answering, never leaves the server half-alive (issue 11).
//!
//! Before: on a 20 MB tmpfs, publishes got 503 once it was full, but after space was freed every
//! publish and compaction stayed 503 forever while `/up` answered OK, and SIGTERM exited 1 (sled
//! 0.34 keeps its first write error until the database is reopened). In another run the publish
//! that hit the full disk never answered at all. Now the first write the disk refuses stops the
//! server with a message naming the log and exit status 1, so its supervisor restarts it; the
//! restarted server holds every acknowledged event and publishes again. A write that does not
//! return is answered (500, outcome unknown) after `log_write_timeout_secs`, and stops the server
//! the same way.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use reprise_api::signature;
use reprise_storage::faulty::{Fault, FaultyLog};
use reprise_storage::{EventLog, SledLog};
use serde_json::{Value, json};
use support::process::ServerProcess;
use support::{APP_ID, RestClient, TestServer, unix_now};

const CHANNEL: &str = "orders";
/// The recipe: a 20 MB tmpfs, 8 MB of it taken by another file, 6 KB events.
const DISK_MEGABYTES: u64 = 20;
const FILLER_MEGABYTES: usize = 8;
const EVENT_DATA_BYTES: usize = 6000;
/// Far more events than fit on the disk: a bound on the loop if it never fills.
const MAX_EVENTS: usize = 5000;

/// A tmpfs of its own, unmounted (lazily, in case a file is still open) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `megabytes`. Only root may mount: for anyone else the test says it was
    /// skipped (the same paths run, with an injected disk error, in `tests/failures.rs`).
    fn mount(megabytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs failed: {status}");
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("--lazy").arg(self.dir.path()).status();
    }
}

/// One signed publish; `Err` when no answer came (refused, reset, or none within 10 s).
async fn try_publish(rest: &RestClient, data: &str) -> Result<(u16, Value), String> {
    let body = json!({"name": "update", "channel": CHANNEL, "data": data}).to_string().into_bytes();
    let path = format!("/apps/{APP_ID}/events");
    let query = signature::sign_request(&rest.key, &rest.secret, "POST", &path, &[], &body, unix_now());
    let request = reqwest::Client::new()
        .post(format!("{}{path}?{query}", rest.base))
        .header("content-type", "application/json")
        .body(body)
        .send();
    let response = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|error| error.to_string())?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|error| error.to_string())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
}

/// The recipe with a real full disk: fill it while publishing, free space, publish
/// again.
#[tokio::test]
async fn a_full_disk_stops_the_server_and_a_restart_after_freeing_space_loses_nothing() {
    let Some(disk) = Tmpfs::mount(DISK_MEGABYTES) else { return };
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0_u8; FILLER_MEGABYTES << 20]).unwrap();
    let data_dir = disk.path().join("data");
    let logs = tempfile::tempdir().unwrap(); // the server's output must not need the full disk
    let log_path = |name: &str| -> PathBuf { logs.path().join(name) };

    let mut server = ServerProcess::start(&data_dir, log_path("first.log"), &[]).await;
    let rest = server.rest();
    let data = "x".repeat(EVENT_DATA_BYTES);
    let mut acknowledged = Vec::new();
    let (status, body) = loop {
        match try_publish(&rest, &data).await {
            Ok((200, body)) => acknowledged.push(body["ids"][CHANNEL].as_str().unwrap().to_owned()),
            Ok(refused) => break refused,
            Err(error) => panic!("publish {} after a full disk got no answer: {error}", acknowledged.len() + 1),
        }
        assert!(acknowledged.len() < MAX_EVENTS, "the disk never filled up");
    };
    // 503: the append failed, nothing was published. 500: appended, but the fsync failed.
    assert!(status == 503 || status == 500, "the publish that hit the full disk: {status} {body}");

    let (exit, output) = server.exited(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(1), "a non-zero exit, for the supervisor to restart it:\n{output}");
    assert!(output.contains("the disk refused a write of the event log"), "the reason is said:\n{output}");

    std::fs::remove_file(&filler).unwrap();
    let server = ServerProcess::start(&data_dir, log_path("second.log"), &[]).await;
    let rest = server.rest();
    let (events, recovered) = rest.history_all(CHANNEL).await;
    assert!(recovered);
    let held: HashSet<&str> = events.iter().map(|event| event["id"].as_str().unwrap()).collect();
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !held.contains(id.as_str())).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged events were lost: {lost:?}", lost.len(), acknowledged.len());
    assert_eq!(try_publish(&rest, "after").await.map(|(status, _)| status), Ok(200), "publishes work again");
}

/// A write that never returns (sled 0.34 can leave a flush waiting forever when its writer
/// failed): the publish waiting on it is answered 500 once `log_write_timeout_secs` has passed
/// instead of hanging, and the server stops with an error that names the log.
#[tokio::test]
async fn a_write_that_never_returns_is_answered_and_stops_the_server() {
    let log = Arc::new(FaultyLog::new(SledLog::open_temporary().unwrap()));
    let mut server = TestServer::start_on_log_with(Arc::clone(&log) as Arc<dyn EventLog>, |config| {
        config.server.log_write_timeout_secs = 1;
    })
    .await;
    // Longer than the test waits for an answer: without the watchdog the publish gets none.
    log.set_flush_delay(Duration::from_secs(15));
    let answer = try_publish(&server.rest(), "stuck").await;
    let (status, body) = answer.expect("the publish is answered");
    assert_eq!(status, 500, "{body}");
    let stopped = server.stopped().await;
    assert!(
        matches!(&stopped, Err(reprise::ServerError::Failed(problem)) if problem.contains("has not returned")),
        "{stopped:?}"
    );
}

/// A full disk seen by an append, then a flush that would block (sled 0.34 may never wake a flush
/// once its writer failed): the server stops at once, with the disk's error. Before, its last
/// flush on the way down waited until the watchdog gave up on it (`log_write_timeout_secs`,
/// 30 s), and the exit blamed a disk that did not answer.
#[tokio::test]
async fn after_the_disk_refused_a_write_the_server_stops_without_writing_again() {
    let log = Arc::new(FaultyLog::new(SledLog::open_temporary().unwrap()));
    let mut server = TestServer::start_on_log_with(Arc::clone(&log) as Arc<dyn EventLog>, |_| {}).await;
    log.set(Fault::AppendDiskFull, true);
    // Longer than `stopped` waits: a flush after the refused append would hold the server up.
    log.set_flush_delay(Duration::from_secs(60));
    let (status, body) = try_publish(&server.rest(), "refused").await.expect("the publish is answered");
    assert_eq!(status, 503, "nothing was published: {body}");
    let stopped = server.stopped().await;
    assert!(
        matches!(&stopped, Err(reprise::ServerError::Failed(problem)) if problem.contains("the disk refused a write")),
        "{stopped:?}"
    );
}

//! Backup and restore with the real binary on real data directories: `reprise log export` from a
//! stopped server's directory, `reprise log import` into an empty one, a server started on the
//! copy, and a client resuming across the restore with the ids it already had. Also what import
//! refuses (a gap, a reused id), that the commands are offline on a data directory (a running
//! server's is refused with a hint), and a single node's history moved into a running cluster's
//! Redis.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use support::process::ServerProcess;
use support::redis::RedisServer;
use support::{APP_ID, WsClient, event_id};

/// `reprise log ARGS` with `stdin` as its input; returns its output.
fn reprise_log(args: &[&str], data_dir: &Path, stdin: Option<&Path>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reprise"));
    command.arg("log").args(args).arg("--data-dir").arg(data_dir).env_remove("RUST_LOG");
    command.stdin(match stdin {
        Some(path) => Stdio::from(std::fs::File::open(path).unwrap()),
        None => Stdio::null(),
    });
    command.output().expect("run reprise log")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `reprise log export --app APP_ID` on `data_dir` into `file`.
fn export(data_dir: &Path, file: &Path) {
    let output = reprise_log(&["export", "--app", APP_ID], data_dir, None);
    assert!(output.status.success(), "export failed: {}", stderr(&output));
    std::fs::write(file, &output.stdout).unwrap();
}

fn import(data_dir: &Path, file: &Path) -> Output {
    reprise_log(&["import"], data_dir, Some(file))
}

/// The stats lines of the app's channels (head and compaction mark of each).
fn channel_stats(data_dir: &Path) -> Vec<Value> {
    let output = reprise_log(&["stats", "--app", APP_ID], data_dir, None);
    assert!(output.status.success(), "stats failed: {}", stderr(&output));
    String::from_utf8(output.stdout).unwrap().lines().skip(1).map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// The promise of a backup: exported from one data directory and imported into an empty one, a
/// server on the copy serves the same ids, heads and compaction marks; a client resumes across
/// the restore from an id it saw before (recovered, the rest in order with the same ids), an
/// old cursor into the compacted part is still not recovered, and new ids continue after the
/// restored head.
#[tokio::test]
async fn a_backup_restores_with_the_same_ids_and_clients_resume_across_it() {
    let dir = tempfile::tempdir().unwrap();
    let (original, restored, file) = (dir.path().join("original"), dir.path().join("restored"), dir.path().join("b"));

    let mut server = ServerProcess::start(&original, dir.path().join("original.stderr"), &[]).await;
    let rest = server.rest();
    let news = rest.publish_n("news", "headline", "n", 25).await;
    let trimmed = rest.publish_n("trimmed", "tick", "t", 6).await;
    let (status, body) = rest.compact(json!({"channel": "trimmed", "keep_last": 2})).await;
    assert_eq!(status, 200, "{body}");
    rest.publish_n("emptied", "tick", "e", 3).await;
    let (status, body) = rest.compact(json!({"channel": "emptied", "keep_last": 0})).await;
    assert_eq!(status, 200, "{body}");
    server.stop();

    export(&original, &file);
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count(), 25 + 2 + 2, "25 + 2 events and two compaction marks:\n{lines}");
    let imported = import(&restored, &file);
    assert!(imported.status.success(), "import failed: {}", stderr(&imported));
    assert_eq!(channel_stats(&restored), channel_stats(&original), "heads and marks differ after the restore");

    let server = ServerProcess::start(&restored, dir.path().join("restored.stderr"), &[]).await;
    let mut client = WsClient::connect(&server.ws_url()).await;
    client.expect_event("pusher:connection_established").await;
    let replay = client.subscribe_since("news", &news[19]).await;
    assert_eq!(replay["recovered"], true, "{replay}");
    for (i, id) in news.iter().enumerate().skip(20) {
        let frame = client.next_app_event().await;
        assert_eq!(frame["id"], id.as_str(), "{frame}");
        assert_eq!(frame["data"], format!("n-{i}"), "{frame}");
    }
    let replay = client.subscribe_since("trimmed", &trimmed[1]).await;
    assert_eq!(replay["recovered"], false, "a cursor into the compacted part must not resume: {replay}");

    let next = event_id(&json!(server.rest().trigger_id("news", "headline", "after").await));
    let head = event_id(&json!(news[24]));
    assert_eq!(next.seq(), head.seq() + 1, "the sequence continues after the restored head");
    assert!(next > head, "{next} is not after the restored head {head}");
    let emptied = event_id(&json!(server.rest().trigger_id("emptied", "tick", "after").await));
    assert_eq!(emptied.seq(), 4, "a channel compacted to nothing keeps its head across the restore");
}

/// Import refuses what would corrupt a channel: the same backup twice (every id reused), and a
/// backup with an event missing (a gap). The refusal names the line, and exits non-zero.
#[tokio::test]
async fn import_refuses_a_reused_id_and_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let (original, file) = (dir.path().join("original"), dir.path().join("backup.jsonl"));
    let mut server = ServerProcess::start(&original, dir.path().join("original.stderr"), &[]).await;
    server.rest().publish_n("news", "headline", "n", 5).await;
    server.stop();
    export(&original, &file);

    let twice = dir.path().join("twice");
    assert!(import(&twice, &file).status.success());
    let again = import(&twice, &file);
    assert!(!again.status.success(), "the same events were imported twice");
    assert!(stderr(&again).contains("reuses"), "{}", stderr(&again));

    let lines: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(str::to_owned).collect();
    let gap = dir.path().join("gap.jsonl");
    std::fs::write(&gap, [&lines[..2], &lines[3..]].concat().join("\n")).unwrap();
    let gapped = dir.path().join("gapped");
    let refused = import(&gapped, &gap);
    assert!(!refused.status.success(), "a backup with a gap was imported");
    assert!(stderr(&refused).contains("lines 3-") && stderr(&refused).contains("gap"), "{}", stderr(&refused));
    let stats = channel_stats(&gapped);
    assert_eq!(event_id(&stats[0]["head"]).seq(), 2, "the lines before the gap are imported, nothing after: {stats:?}");
}

/// The log commands are offline: on a running server's data directory they fail at once with
/// the lock hint instead of reading under it.
#[tokio::test]
async fn log_commands_refuse_a_running_servers_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _server = ServerProcess::start(&data, dir.path().join("server.stderr"), &[]).await;
    let output = reprise_log(&["export", "--app", APP_ID], &data, None);
    assert!(!output.status.success(), "exported from a running server's directory");
    assert!(stderr(&output).contains("another reprise is probably running"), "{}", stderr(&output));
    assert!(output.stdout.is_empty(), "half an export was written");
}

/// Moving a single node's history into a cluster: exported from a stopped node's directory and
/// imported with `--redis-url` into the Redis of a cluster node that is already running, it is
/// served with the same ids: a client resumes on the cluster from an id it saw on the single
/// node, new ids continue after the imported head, and importing the same backup again is
/// refused without changing anything.
#[tokio::test]
async fn a_single_nodes_history_moves_into_a_running_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let (single, file) = (dir.path().join("single"), dir.path().join("backup.jsonl"));
    let mut server = ServerProcess::start(&single, dir.path().join("single.stderr"), &[]).await;
    let news = server.rest().publish_n("news", "headline", "n", 10).await;
    server.stop();
    export(&single, &file);

    let redis = RedisServer::start();
    let url = redis.url();
    let node =
        ServerProcess::start(&dir.path().join("node"), dir.path().join("node.stderr"), &["--redis-url", &url]).await;
    let unused = dir.path().join("unused");
    let imported = reprise_log(&["import", "--redis-url", &url], &unused, Some(&file));
    assert!(imported.status.success(), "import into Redis failed: {}", stderr(&imported));
    assert!(!unused.exists(), "an import into Redis created a data directory");
    let stats = reprise_log(&["stats", "--redis-url", &url], &unused, None);
    assert!(stats.status.success(), "{}", stderr(&stats));
    let totals: Value = serde_json::from_slice(stats.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(totals["events"], 10, "{totals}");

    let mut client = WsClient::connect(&node.ws_url()).await;
    client.expect_event("pusher:connection_established").await;
    let replay = client.subscribe_since("news", &news[4]).await;
    assert_eq!(replay["recovered"], true, "{replay}");
    for (i, id) in news.iter().enumerate().skip(5) {
        let frame = client.next_app_event().await;
        assert_eq!((&frame["id"], &frame["data"]), (&json!(id), &json!(format!("n-{i}"))), "{frame}");
    }
    let next = event_id(&json!(node.rest().trigger_id("news", "headline", "after").await));
    assert_eq!(next.seq(), event_id(&json!(news[9])).seq() + 1, "the sequence continues after the imported head");

    let again = reprise_log(&["import", "--redis-url", &url], &unused, Some(&file));
    assert!(!again.status.success(), "the same events were imported twice");
    assert!(stderr(&again).contains("reuses"), "{}", stderr(&again));
    let exported = reprise_log(&["export", "--app", APP_ID, "--redis-url", &url], &unused, None);
    assert_eq!(String::from_utf8(exported.stdout).unwrap().lines().count(), 11, "10 imported + 1 published, once each");
}

//! A damaged data directory is never served silently (issue 11), with the real binary: 16 bytes
//! flipped in the middle of what sled's `db` file holds, or the file cut to half of it, used to
//! start with no warning, a channel's head gone back (300 to 171), history saying
//! `recovered: true`, and the next publish reusing sequence 172, so an id clients already held
//! named another event.
//!
//! Now the server refuses to start and says what was lost; `--accept-data-loss` starts it with
//! what is left, the next id is none handed out before, and every resume or history read from
//! before the damage says `recovered: false`.

mod support;

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use reprise_api::EventId;
use support::process::ServerProcess;
use support::{RestClient, WsClient, event_id};

const CHANNEL: &str = "chat";
const EVENTS: usize = 300;

/// Publishes `EVENTS` events on `CHANNEL` one request at a time (each its own group commit, as
/// publishes from a Laravel app are), stops the server cleanly, and returns the ids handed out.
async fn build(data_dir: &Path, stderr: &Path) -> Vec<EventId> {
    let mut server = ServerProcess::start(data_dir, stderr.to_owned(), &[]).await;
    let rest = server.rest();
    let mut ids = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        ids.push(event_id(&serde_json::json!(rest.trigger_id(CHANNEL, "message", &format!("m-{i}")).await)));
    }
    server.stop();
    ids
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// How far into `db` its contents reach: sled grows the file a whole segment at a time, so its
/// end is zeros that are not yet written (sled patch 6, vendor/sled-0.34.7/PATCHES.md).
fn written_len(dir: &Path) -> u64 {
    let bytes = std::fs::read(dir.join("db")).unwrap();
    let written = bytes.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1);
    u64::try_from(written).unwrap()
}

fn flip_16_bytes_in_the_middle(dir: &Path) {
    let middle = written_len(dir) / 2;
    let file = OpenOptions::new().read(true).write(true).open(dir.join("db")).unwrap();
    let mut bytes = [0; 16];
    file.read_exact_at(&mut bytes, middle).unwrap();
    for byte in &mut bytes {
        *byte ^= 0xFF;
    }
    file.write_all_at(&bytes, middle).unwrap();
}

fn truncate_to_half(dir: &Path) {
    let half = written_len(dir) / 2;
    OpenOptions::new().write(true).open(dir.join("db")).unwrap().set_len(half).unwrap();
}

/// `recovered` of a history read from `since`.
async fn history_recovered(rest: &RestClient, since: EventId) -> bool {
    let (status, page) = rest.history(CHANNEL, &[("since", &since.to_string())]).await;
    assert_eq!(status, 200, "{page}");
    page["recovered"].as_bool().expect("recovered")
}

/// The recipe: build a real data directory, damage a copy of it, and check every promise.
async fn damaged_copy_is_refused_then_accepted(damage: fn(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original");
    let handed_out = build(&original, &dir.path().join("build.stderr")).await;
    let damaged = dir.path().join("damaged");
    copy_dir(&original, &damaged);
    damage(&damaged);

    // Refused, with a message that says what was lost and what to do.
    let (status, stderr) = ServerProcess::start_expecting_exit(&damaged, dir.path().join("refused.stderr"), &[]).await;
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("refusing to start: the event log lost acknowledged events"), "{stderr}");
    assert!(stderr.contains(&format!("but {EVENTS} had been made durable")), "{stderr}");
    assert!(stderr.contains("--accept-data-loss"), "{stderr}");

    // Accepted: it starts with what is left.
    let server = ServerProcess::start(&damaged, dir.path().join("accepted.stderr"), &["--accept-data-loss"]).await;
    assert!(server.stderr().contains("the loss is accepted"), "{}", server.stderr());
    let rest = server.rest();
    let (left, recovered) = rest.history_all(CHANNEL).await;
    assert!(!recovered, "history from the start must not claim to be complete");
    assert!(left.len() < EVENTS, "the damage took the end of the channel ({} events left)", left.len());
    for (event, id) in left.iter().zip(&handed_out) {
        assert_eq!(event_id(&event["id"]), *id, "what is left is the start of what was published");
    }

    // The next id is none handed out before, and sorts after all of them.
    let new = event_id(&serde_json::json!(rest.trigger_id(CHANNEL, "message", "after").await));
    let before: HashSet<EventId> = handed_out.iter().copied().collect();
    assert!(!before.contains(&new), "{new} was handed out before the damage");
    assert!(new > *handed_out.last().unwrap(), "{new} sorts after every earlier id");

    // Every cursor from before says recovered:false: one whose event was lost, one that is
    // still there (events after it were lost), in history and in a WebSocket resume.
    let lost = handed_out[EVENTS - 10];
    let kept = handed_out[left.len() - 1];
    for since in [lost, kept] {
        assert!(!history_recovered(&rest, since).await, "history since {since}");
        let mut client = WsClient::connect(&server.ws_url()).await;
        client.expect_event("pusher:connection_established").await;
        let replay = client.subscribe_since(CHANNEL, &since.to_string()).await;
        assert_eq!(replay["recovered"], false, "resume since {since}: {replay}");
        assert_eq!(replay["head"], new.to_string().as_str(), "{replay}");
    }
    // A cursor from after the restart resumes as usual.
    assert!(history_recovered(&rest, new).await);

    // The undamaged original still starts, with everything.
    drop(server);
    let server = ServerProcess::start(&original, dir.path().join("original.stderr"), &[]).await;
    let (all, recovered) = server.rest().history_all(CHANNEL).await;
    assert!(recovered);
    assert_eq!(all.len(), EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_flipped_in_the_middle_of_db_are_refused_then_accepted() {
    damaged_copy_is_refused_then_accepted(flip_16_bytes_in_the_middle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn db_cut_to_half_is_refused_then_accepted() {
    damaged_copy_is_refused_then_accepted(truncate_to_half).await;
}

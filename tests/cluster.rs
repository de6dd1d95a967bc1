//! Cluster mode with real parts: several `reprise` processes sharing a private `redis-server`
//! (started on a free port per test; the shared one on 6379 is never touched), driven by real
//! WebSocket and HTTP clients. Each test names the cross-node promise it guards.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use reprise_api::webhook::WebhookEvent;
use serde_json::{Value, json};
use support::process::ServerProcess;
use support::redis::RedisServer;
use support::webhooks::Receiver;
use support::{APP_ID, APP_KEY, APP_SECRET, RestClient, WsClient, data_of, event_id, watch_event, watchlist_events};

/// Nodes sharing one Redis, each with its own (unused) data directory.
struct TestCluster {
    nodes: Vec<ServerProcess>,
    redis: RedisServer,
    dir: tempfile::TempDir,
}

impl TestCluster {
    async fn start(nodes: usize) -> TestCluster {
        TestCluster::start_with_app_settings(nodes, "").await
    }

    /// Nodes whose test app has `settings` (TOML lines of an `[[apps]]` entry) added.
    async fn start_with_app_settings(nodes: usize, settings: &str) -> TestCluster {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().unwrap();
        let config =
            format!("[[apps]]\nid = \"{APP_ID}\"\nkey = \"{APP_KEY}\"\nsecret = \"{APP_SECRET}\"\n{settings}\n");
        std::fs::write(dir.path().join("reprise.toml"), config).unwrap();
        let mut cluster = TestCluster { nodes: Vec::new(), redis, dir };
        for _ in 0..nodes {
            cluster.add_node().await;
        }
        cluster
    }

    async fn add_node(&mut self) {
        self.add_node_with(&[]).await;
    }

    /// A node with more flags for `reprise start`.
    async fn add_node_with(&mut self, flags: &[&str]) {
        let n = self.nodes.len();
        let data_dir = self.dir.path().join(format!("node{n}"));
        let log = self.dir.path().join(format!("node{n}.log"));
        let (url, config) = (self.redis.url(), self.dir.path().join("reprise.toml"));
        let args: Vec<&str> = ["--redis-url", url.as_str(), "--config", config.to_str().unwrap()]
            .into_iter()
            .chain(flags.iter().copied())
            .collect();
        self.nodes.push(ServerProcess::start(&data_dir, log, &args).await);
    }

    /// Connects to `node`, retrying until the connection is refused with 4004 (over the app's
    /// `max_connections`): established ones are closed at once.
    async fn eventually_refused(&self, node: usize, what: &str) {
        let url = self.nodes[node].ws_url();
        eventually(what, || {
            let url = url.clone();
            async move {
                let mut client = WsClient::connect(&url).await;
                let first = client.recv().await;
                (first["event"] == "pusher:error" && data_of(&first)["code"] == 4004).then_some(())
            }
        })
        .await;
    }

    async fn client(&self, node: usize) -> WsClient {
        WsClient::established(&self.nodes[node].ws_url()).await
    }

    fn rest(&self, node: usize) -> RestClient {
        self.nodes[node].rest()
    }
}

/// Polls `check` (up to 10 s) until it returns Some.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One publish, through any node, reaches the channel's subscribers on every node once, with
/// the same id everywhere.
#[tokio::test]
async fn a_publish_reaches_every_node_with_one_id() {
    let cluster = TestCluster::start(3).await;
    let mut clients = Vec::new();
    for node in 0..3 {
        let mut client = cluster.client(node).await;
        client.subscribe("orders").await;
        clients.push(client);
    }
    let id = cluster.rest(1).trigger_id("orders", "update", "shipped").await;
    for client in &mut clients {
        let frame = client.next_app_event().await;
        assert_eq!((frame["data"].as_str(), frame["id"].as_str()), (Some("shipped"), Some(id.as_str())));
    }
    for client in &mut clients {
        client.expect_silence(Duration::from_millis(200)).await;
    }
}

/// Publishers on every node at once into one channel: every subscriber, on every node, sees one
/// contiguous sequence in one order, with no gap and no duplicate.
#[tokio::test]
async fn concurrent_publishers_on_every_node_make_one_order() {
    const PER_NODE: usize = 40;
    let cluster = TestCluster::start(3).await;
    let mut clients = Vec::new();
    for node in 0..3 {
        let mut client = cluster.client(node).await;
        client.subscribe("race").await;
        clients.push(client);
    }
    let publishers: Vec<_> = (0..3)
        .map(|node| {
            let rest = cluster.rest(node);
            tokio::spawn(async move { rest.publish_n("race", "e", &format!("n{node}"), PER_NODE).await })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let mut orders = Vec::new();
    for client in &mut clients {
        let mut seen = Vec::new();
        for _ in 0..3 * PER_NODE {
            let frame = client.next_app_event().await;
            seen.push((event_id(&frame["id"]).seq(), frame["data"].as_str().unwrap().to_owned()));
        }
        let seqs: Vec<u64> = seen.iter().map(|(seq, _)| *seq).collect();
        let first = seqs[0];
        assert_eq!(seqs, (first..first + seqs.len() as u64).collect::<Vec<_>>(), "contiguous, in order");
        orders.push(seen);
    }
    assert!(orders.windows(2).all(|pair| pair[0] == pair[1]), "every node delivered the same order");
    let distinct: HashSet<_> = orders[0].iter().map(|(_, data)| data.clone()).collect();
    assert_eq!(distinct.len(), 3 * PER_NODE, "no duplicate");
}

/// A client that was on node A resumes on node B with its last id and gets exactly what it
/// missed (published through node C), then live events.
#[tokio::test]
async fn a_client_resumes_on_another_node() {
    let cluster = TestCluster::start(3).await;
    let mut on_a = cluster.client(0).await;
    on_a.subscribe("orders").await;
    cluster.rest(0).trigger("orders", "update", "1").await;
    let last_seen = on_a.next_app_event().await["id"].as_str().unwrap().to_owned();
    drop(on_a);
    let missed = cluster.rest(2).publish_n("orders", "update", "missed", 5).await;
    let mut on_b = cluster.client(1).await;
    let replay = on_b.subscribe_since("orders", &last_seen).await;
    assert_eq!((replay["recovered"].as_bool(), replay["count"].as_u64()), (Some(true), Some(5)), "{replay}");
    for id in &missed {
        assert_eq!(on_b.next_app_event().await["id"].as_str(), Some(id.as_str()));
    }
    let live = cluster.rest(0).trigger_id("orders", "update", "live").await;
    assert_eq!(on_b.next_app_event().await["id"].as_str(), Some(live.as_str()));
    let (status, page) = cluster.rest(2).history("orders", &[("since", &last_seen)]).await;
    assert_eq!(status, 200);
    assert_eq!(page["events"].as_array().unwrap().len(), 6, "history answers the same on every node");
}

/// Presence is cluster-wide: the roster lists members on every node, `member_added` fires once
/// per user (not per tab, not per node), and `/users` answers for the cluster.
#[tokio::test]
async fn presence_is_cluster_wide() {
    let cluster = TestCluster::start(2).await;
    let mut ann = cluster.client(0).await;
    ann.subscribe_presence("presence-room", "ann", json!({"name": "Ann"})).await;
    let mut bob = cluster.client(1).await;
    let joined = bob.subscribe_presence("presence-room", "bob", json!({"name": "Bob"})).await;
    let ids: HashSet<&str> = joined["presence"]["ids"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(ids, HashSet::from(["ann", "bob"]), "{joined}");
    let added = ann.expect_event("pusher_internal:member_added").await;
    assert_eq!(data_of(&added)["user_id"], "bob");

    // Bob's second tab, on the other node: already present, so nobody is told.
    let mut bob_tab = cluster.client(0).await;
    bob_tab.subscribe_presence("presence-room", "bob", json!({"name": "Bob"})).await;
    ann.expect_silence(Duration::from_millis(300)).await;
    let (status, users) =
        cluster.rest(1).call("GET", &cluster.rest(1).path("/channels/presence-room/users"), &[], None).await;
    assert_eq!(status, 200);
    let listed: HashSet<&str> = users["users"].as_array().unwrap().iter().filter_map(|u| u["id"].as_str()).collect();
    assert_eq!(listed, HashSet::from(["ann", "bob"]));

    // Bob leaves one tab: still present. He closes the last: removed, once.
    drop(bob);
    ann.expect_silence(Duration::from_millis(500)).await;
    drop(bob_tab);
    let removed = ann.expect_event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&removed)["user_id"], "bob");
}

/// A node killed with `kill -9` cannot say goodbye: its members are removed by the others (with
/// `member_removed`) within 15 seconds, and its clients resume on another node without a gap.
#[tokio::test]
async fn a_killed_nodes_members_are_removed_and_its_clients_resume_elsewhere() {
    let mut cluster = TestCluster::start(2).await;
    let mut watcher = cluster.client(1).await;
    watcher.subscribe_presence("presence-room", "watcher", json!({})).await;
    let mut doomed = cluster.client(0).await;
    doomed.subscribe_presence("presence-room", "doomed", json!({})).await;
    doomed.subscribe("orders").await;
    watcher.expect_event("pusher_internal:member_added").await;
    cluster.rest(1).trigger("orders", "update", "before").await;
    let last_seen = doomed.next_app_event().await["id"].as_str().unwrap().to_owned();

    let killed_at = Instant::now();
    cluster.nodes[0].kill_9();
    let missed = cluster.rest(1).publish_n("orders", "update", "while-down", 3).await;
    let removed = watcher.expect_event_within("pusher_internal:member_removed", Duration::from_secs(15)).await;
    assert_eq!(data_of(&removed)["user_id"], "doomed");
    assert!(killed_at.elapsed() < Duration::from_secs(15), "took {:?}", killed_at.elapsed());

    let mut resumed = cluster.client(1).await;
    let replay = resumed.subscribe_since("orders", &last_seen).await;
    assert_eq!(replay["recovered"], true, "{replay}");
    for id in &missed {
        assert_eq!(resumed.next_app_event().await["id"].as_str(), Some(id.as_str()));
    }
}

/// Watchlists are cluster-wide: a user signed in on another node is online for a watcher here
/// (in its first status, and as `online` when they sign in), a second socket on a third node
/// changes nothing, the last one going makes them `offline` once, and a node killed with
/// `kill -9` makes its users offline within 15 seconds.
#[tokio::test]
async fn watchlists_are_cluster_wide() {
    let mut cluster = TestCluster::start(3).await;
    let mut carol = cluster.client(2).await;
    assert_eq!(carol.sign_in(r#"{"id":"carol"}"#).await["event"], "pusher:signin_success");
    let mut ann = cluster.client(0).await;
    assert_eq!(ann.sign_in(r#"{"id":"ann","watchlist":["bob","carol"]}"#).await["event"], "pusher:signin_success");
    assert_eq!(
        ann.next_watchlist_events().await,
        vec![watch_event("online", &["carol"]), watch_event("offline", &["bob"])]
    );

    let mut bob = cluster.client(1).await;
    bob.sign_in(r#"{"id":"bob"}"#).await;
    assert_eq!(ann.next_watchlist_events().await, vec![watch_event("online", &["bob"])]);
    let mut bob_tab = cluster.client(0).await;
    bob_tab.sign_in(r#"{"id":"bob"}"#).await;
    drop(bob);
    ann.expect_silence(Duration::from_millis(500)).await;
    drop(bob_tab);
    assert_eq!(ann.next_watchlist_events().await, vec![watch_event("offline", &["bob"])]);

    let killed_at = Instant::now();
    cluster.nodes[2].kill_9();
    let offline = ann.expect_event_within("pusher_internal:watchlist_events", Duration::from_secs(15)).await;
    assert_eq!(watchlist_events(&offline), vec![watch_event("offline", &["carol"])]);
    assert!(killed_at.elapsed() < Duration::from_secs(15), "took {:?}", killed_at.elapsed());
    drop(carol);
}

/// Redis restarts empty: every node puts its sign-ins and presence members back and every
/// watcher gets a fresh status, so a watcher still sees its watched user online, and hears
/// `offline` when that user leaves afterwards (which only a restored sign-in can tell); the
/// presence roster lists both nodes' members again. (A node swept the others before they could
/// send a heartbeat to the new Redis, every time; and, depending on timing, restoring failed on
/// its first command, sent on the connection Redis had closed.)
#[tokio::test]
async fn sign_ins_and_presence_survive_redis_restarting_empty() {
    let mut cluster = TestCluster::start(2).await;
    let mut ann = cluster.client(0).await;
    ann.sign_in(r#"{"id":"ann","watchlist":["bob"]}"#).await;
    assert_eq!(ann.next_watchlist_events().await, vec![watch_event("offline", &["bob"])]);
    let mut bob = cluster.client(1).await;
    bob.sign_in(r#"{"id":"bob"}"#).await;
    assert_eq!(ann.next_watchlist_events().await, vec![watch_event("online", &["bob"])]);
    ann.subscribe_presence("presence-room", "ann", json!({})).await;
    bob.subscribe_presence("presence-room", "bob", json!({})).await;

    cluster.redis.restart(); // empty: no persistence
    // The nodes reconnect in their own time: ann may be told bob is offline (her node read the
    // status before bob's node put him back), but the last word must be that he is online.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut bob_online = false;
    while Instant::now() < deadline {
        let Ok(frame) = tokio::time::timeout(Duration::from_secs(3), ann.recv()).await else {
            if bob_online {
                break; // the status has settled
            }
            continue;
        };
        if frame["event"] != "pusher_internal:watchlist_events" {
            continue;
        }
        for (name, ids) in watchlist_events(&frame) {
            if ids.contains(&"bob".to_owned()) {
                bob_online = name == "online";
            }
        }
    }
    assert!(
        bob_online,
        "after Redis came back empty, bob is online again for ann\n{}\n{}",
        cluster.nodes[0].stderr(),
        cluster.nodes[1].stderr()
    );

    drop(bob);
    assert_eq!(ann.next_watchlist_events().await, vec![watch_event("offline", &["bob"])]);
}

/// An app's `max_connections` counts every node's connections: with 2 on one node and 1 on the
/// other, a fourth is refused (4004) on either; a connection closing, or a node killed with
/// `kill -9`, gives its share back to the others.
#[tokio::test]
async fn max_connections_is_cluster_wide() {
    let mut cluster = TestCluster::start_with_app_settings(2, "max_connections = 3").await;
    let (a1, _a2) = (cluster.client(0).await, cluster.client(0).await);
    let _b1 = cluster.client(1).await;
    cluster.eventually_refused(1, "node 1 to count node 0's connections").await;
    cluster.eventually_refused(0, "node 0 to count node 1's connection").await;

    drop(a1);
    let _b2 = eventually("node 1 to see a connection of node 0 close", || {
        let url = cluster.nodes[1].ws_url();
        async move {
            let mut client = WsClient::connect(&url).await;
            (client.recv().await["event"] == "pusher:connection_established").then_some(client)
        }
    })
    .await;
    cluster.eventually_refused(1, "the app to be full again").await;

    cluster.nodes[0].kill_9();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut client = WsClient::connect(&cluster.nodes[1].ws_url()).await;
        if client.recv().await["event"] == "pusher:connection_established" {
            break;
        }
        assert!(Instant::now() < deadline, "a dead node's connections still count after 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `presence_max_members` caps the cluster's roster, not each node's: with one member on each
/// node and a limit of 2, a third user is refused (`LimitReached`, 403) on either node, while
/// another socket of a user already present still joins.
#[tokio::test]
async fn presence_max_members_is_cluster_wide() {
    let cluster = TestCluster::start_with_app_settings(2, "presence_max_members = 2").await;
    let mut ann = cluster.client(0).await;
    ann.subscribe_presence("presence-room", "ann", json!({})).await;
    let mut bob = cluster.client(1).await;
    bob.subscribe_presence("presence-room", "bob", json!({})).await;
    for node in [0, 1] {
        let mut carol = cluster.client(node).await;
        carol.send_presence_subscribe("presence-room", "carol", json!({}), None).await;
        let refused = carol.expect_event("pusher:subscription_error").await;
        assert_eq!(data_of(&refused)["type"], "LimitReached", "{refused}");
        assert_eq!(data_of(&refused)["status"], 403, "{refused}");
    }
    let mut bob_tab = cluster.client(0).await;
    let joined = bob_tab.subscribe_presence("presence-room", "bob", json!({})).await;
    assert_eq!(joined["presence"]["count"], 2, "{joined}");
    ann.expect_event("pusher_internal:member_added").await; // bob, once
    ann.expect_silence(Duration::from_millis(300)).await; // and not carol
}

/// Whispers (client events) and `toOthers` exclusion work across nodes.
#[tokio::test]
async fn client_events_cross_nodes() {
    let cluster = TestCluster::start(2).await;
    let mut alice = cluster.client(0).await;
    alice.subscribe_private("private-chat").await;
    let mut bob = cluster.client(1).await;
    bob.subscribe_private("private-chat").await;
    alice.send_json(json!({"event": "client-typing", "channel": "private-chat", "data": {"who": "alice"}})).await;
    let typing = bob.expect_event("client-typing").await;
    assert_eq!(data_of(&typing)["who"], "alice");
    alice.expect_silence(Duration::from_millis(300)).await;

    // A publish with Bob's socket id (toOthers) skips Bob on his node and reaches Alice on hers.
    let body = json!({"name": "saved", "channel": "private-chat", "data": "x", "socket_id": bob.socket_id});
    let (status, _) = cluster.rest(0).call("POST", &cluster.rest(0).path("/events"), &[], Some(&body)).await;
    assert_eq!(status, 200);
    assert_eq!(alice.expect_event("saved").await["data"], "x");
    let skipped = bob.recv().await;
    assert_eq!(skipped["event"], "pusher_internal:skipped", "Bob is told the id, not the event: {skipped}");
}

/// The HTTP API answers for the whole cluster: occupied channels and their counts, and the app's
/// connections, include every node's, and `terminate_connections` closes the user's sockets
/// everywhere.
#[tokio::test]
async fn the_http_api_answers_for_the_cluster() {
    let cluster = TestCluster::start(2).await;
    let mut a = cluster.client(0).await;
    a.subscribe("news").await;
    let mut b = cluster.client(1).await;
    b.subscribe("news").await;
    let rest = cluster.rest(0);
    let path = rest.path("/channels/news");
    eventually("both subscriptions counted", || {
        let rest = &rest;
        let path = &path;
        async move {
            let (_, info) = rest.call("GET", path, &[("info", "subscription_count")], None).await;
            (info["subscription_count"] == 2).then_some(())
        }
    })
    .await;
    let (_, list) = rest.call("GET", &rest.path("/channels"), &[], None).await;
    assert!(list["channels"]["news"].is_object(), "{list}");
    for node in 0..2 {
        let rest = cluster.rest(node);
        let path = rest.path("/connections");
        eventually("both nodes' connections counted", || {
            let rest = &rest;
            let path = &path;
            async move {
                let (_, body) = rest.call("GET", path, &[], None).await;
                (body == json!({"connections": 2})).then_some(())
            }
        })
        .await;
    }

    let mut mallory_a = cluster.client(0).await;
    mallory_a.subscribe_presence("presence-room", "mallory", json!({})).await;
    let mut mallory_b = cluster.client(1).await;
    mallory_b.subscribe_presence("presence-room", "mallory", json!({})).await;
    let (status, _) =
        rest.call("POST", &rest.path("/users/mallory/terminate_connections"), &[], Some(&json!({}))).await;
    assert_eq!(status, 200);
    assert_eq!(mallory_a.expect_close().await, 4200);
    assert_eq!(mallory_b.expect_close().await, 4200);
}

/// Redis goes away: publishes answer 503 (nothing half-published), `/up` says why, and connected
/// clients stay connected. It comes back empty: publishing works again with ids never reused; a
/// client whose channel lost events is asked to reconnect (4200), and its resume from before the
/// loss is told `recovered:false`, then gets live events.
#[tokio::test]
async fn a_lost_redis_is_survived_and_an_empty_one_is_honest() {
    let mut cluster = TestCluster::start(2).await;
    let mut client = cluster.client(1).await;
    client.subscribe("orders").await;
    let before = cluster.rest(0).trigger_id("orders", "update", "before").await;
    client.next_app_event().await;

    cluster.redis.stop();
    let body = json!({"name": "update", "channel": "orders", "data": "during"});
    let (status, _) = cluster.rest(0).call("POST", &cluster.rest(0).path("/events"), &[], Some(&body)).await;
    assert_eq!(status, 503, "nothing is acknowledged without Redis");
    eventually("the node to say it is unhealthy", || {
        let url = format!("{}/up", cluster.nodes[0].base());
        async move { reqwest::get(url).await.ok().filter(|r| r.status() == 503) }
    })
    .await;
    client.expect_silence(Duration::from_millis(100)).await; // still connected: it answers a ping

    cluster.redis.restart(); // empty: no persistence
    let after = eventually("publishing to work again", || {
        let rest = cluster.rest(0);
        let body = json!({"name": "update", "channel": "orders", "data": "after"});
        async move {
            let (status, response) = rest.call("POST", &rest.path("/events"), &[], Some(&body)).await;
            (status == 200).then(|| response["ids"]["orders"].as_str().unwrap().to_owned())
        }
    })
    .await;
    assert!(event_id(&json!(after)).seq() > event_id(&json!(before)).seq(), "sequences are never reused");
    assert_eq!(client.expect_close().await, 4200, "its channel lost events: reconnect and resume");

    let mut resumed = cluster.client(0).await;
    let replay = resumed.subscribe_since("orders", &before).await;
    assert_eq!(replay["recovered"], false, "what was published before the loss is gone: {replay}");
    let live = cluster.rest(1).trigger_id("orders", "update", "live").await;
    assert_eq!(resumed.next_app_event().await["id"].as_str(), Some(live.as_str()));
    eventually("the node to be healthy again", || {
        let url = format!("{}/up", cluster.nodes[0].base());
        async move { reqwest::get(url).await.ok().filter(|r| r.status() == 200) }
    })
    .await;
}

/// Cluster figures on the metrics listener: each node sees the live nodes, and the node that did
/// not take a publish counts the bus message that brought it.
#[tokio::test]
async fn cluster_metrics_count_nodes_and_bus_messages() {
    let mut cluster = TestCluster::start(0).await;
    let mut ports = Vec::new();
    for _ in 0..2 {
        let port = support::metrics::free_port().await;
        cluster.add_node_with(&["--metrics-port", &port.to_string()]).await;
        ports.push(port);
    }
    let mut subscriber = cluster.client(1).await;
    subscriber.subscribe("orders").await;
    cluster.rest(0).trigger_id("orders", "update", "shipped").await;
    assert_eq!(subscriber.next_app_event().await["data"], "shipped");
    let (samples, text) = support::metrics::scrape(ports[1]).await;
    let events = samples.get("reprise_cluster_bus_messages_total{kind=\"event\"}").copied().unwrap_or(0.0);
    assert!(events >= 1.0, "node 1 heard the event on the bus:\n{text}");
    for port in ports {
        eventually("both nodes in reprise_cluster_nodes", || async move {
            let (samples, _) = support::metrics::scrape(port).await;
            (samples.get("reprise_cluster_nodes") == Some(&2.0)).then_some(())
        })
        .await;
    }
}

/// Chores like retention run on one node per round, not on every node: the first node to claim
/// a round's turn gets it, the others are refused until the turn expires.
#[tokio::test]
async fn one_node_per_round_gets_a_chores_turn() {
    let redis = RedisServer::start();
    let config = reprise::config::ClusterConfig {
        enabled: true,
        redis_url: redis.url(),
        ..reprise::config::ClusterConfig::default()
    };
    let health = std::sync::Arc::new(reprise::health::Health::default());
    let a = reprise::cluster::Cluster::connect(&config, health.clone()).await.unwrap();
    let b = reprise::cluster::Cluster::connect(&config, health).await.unwrap();
    let round = Duration::from_millis(300);
    assert!(a.claim_turn("retention", round).await.unwrap(), "the first claim gets the turn");
    assert!(!b.claim_turn("retention", round).await.unwrap(), "a second node in the same round does not");
    assert!(!a.claim_turn("retention", round).await.unwrap(), "nor the same node twice");
    assert!(b.claim_turn("other-chore", round).await.unwrap(), "chores are independent");
    tokio::time::sleep(round + Duration::from_millis(200)).await;
    assert!(b.claim_turn("retention", round).await.unwrap(), "the next round goes to whoever asks first");
}

/// An event stream (SSE) on one node counts in every node's HTTP API answers, as a WebSocket
/// does, and stops counting when it ends (streams once told only their own node).
#[tokio::test]
async fn an_event_stream_counts_on_every_node() {
    let cluster = TestCluster::start(2).await;
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", cluster.nodes[1].port).parse().unwrap();
    let path = format!("/app/{}/stream?channel=feed", support::APP_KEY);
    let stream = support::sse::SseClient::connect(addr, &path, &[]).await;
    assert_eq!(stream.status, 200);
    let rest = cluster.rest(0);
    let counted = |expected: u64| {
        let rest = &rest;
        async move {
            let (_, info) =
                rest.call("GET", &rest.path("/channels/feed"), &[("info", "subscription_count")], None).await;
            (info["subscription_count"].as_u64() == Some(expected)).then_some(())
        }
    };
    eventually("node 0 counts node 1's stream", || counted(1)).await;
    drop(stream);
    eventually("the ended stream no longer counts", || counted(0)).await;
}

/// One webhook target for the test app (TOML lines after its `[[apps]]` entry), for every node.
fn webhook_config(receiver: &Receiver) -> String {
    format!(
        "[[apps.webhooks]]\nurl = \"{}\"\n\
         event_types = [\"channel_occupied\", \"channel_vacated\", \"member_added\", \"member_removed\", \"cache_miss\", \
         \"subscription_count\"]\n",
        receiver.url()
    )
}

/// Counts each event among the distinct webhooks received (by id).
fn count(receiver: &Receiver, event: &WebhookEvent) -> usize {
    receiver.unique_events().iter().filter(|e| *e == event).count()
}

/// Webhooks describe the whole cluster and are sent once: a channel with subscribers on two
/// nodes is occupied once and vacated once (when the last one anywhere leaves), a user with
/// sockets on two nodes is added once and removed once, whichever node they leave from last, and
/// subscription counts are the cluster's (3 here, when no node has more than 2).
#[tokio::test]
async fn webhooks_describe_the_cluster_and_are_sent_once() {
    let receiver = Receiver::start().await;
    let cluster = TestCluster::start_with_app_settings(2, &webhook_config(&receiver)).await;
    let room = "presence-room";
    let mut ann = cluster.client(0).await;
    ann.subscribe_presence(room, "ann", json!({})).await;
    let mut ann_tab = cluster.client(1).await;
    ann_tab.subscribe_presence(room, "ann", json!({})).await;
    let mut bob = cluster.client(1).await;
    bob.subscribe_presence(room, "bob", json!({})).await;
    let occupied = WebhookEvent::ChannelOccupied { channel: room.into() };
    let added = |user: &str| WebhookEvent::MemberAdded { channel: room.into(), user_id: user.into() };
    receiver.wait_for_events(&[occupied.clone(), added("ann"), added("bob")]).await;

    // Ann leaves node 0 (still present on node 1); then everybody leaves node 1.
    drop(ann);
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(ann_tab);
    drop(bob);
    let removed = |user: &str| WebhookEvent::MemberRemoved { channel: room.into(), user_id: user.into() };
    let vacated = WebhookEvent::ChannelVacated { channel: room.into() };
    let departures = [removed("ann"), removed("bob"), vacated.clone()];
    receiver.wait_for_events_within(&departures, Duration::from_secs(20)).await;

    // A marker, queued after anything either node could still have held (3 s): duplicates, if
    // any, are in by the time it arrives.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut marker = cluster.client(0).await;
    marker.subscribe("cache-marker").await;
    let marked = WebhookEvent::CacheMiss { channel: "cache-marker".into() };
    receiver.wait_for_events_within(&[marked], Duration::from_secs(20)).await;
    for event in [occupied, added("ann"), added("bob"), removed("ann"), removed("bob"), vacated] {
        assert_eq!(count(&receiver, &event), 1, "{event:?} once, in {:#?}", receiver.unique_events());
    }
    let counts: Vec<u64> = receiver
        .unique_events()
        .into_iter()
        .filter_map(|event| match event {
            WebhookEvent::SubscriptionCount { channel, subscription_count } if channel == room => {
                Some(subscription_count)
            }
            _ => None,
        })
        .collect();
    assert!(counts.contains(&3) && counts.last() == Some(&0), "{counts:?}");
}

/// A node killed with webhooks owed: the survivors report its departures (member_removed,
/// channel_vacated) once it is presumed dead, and deliver from the shared queue.
#[tokio::test]
async fn a_killed_nodes_departures_are_reported_by_the_survivors() {
    let receiver = Receiver::start().await;
    let mut cluster = TestCluster::start_with_app_settings(2, &webhook_config(&receiver)).await;
    let mut doomed = cluster.client(0).await;
    doomed.subscribe_presence("presence-lost", "doomed", json!({})).await;
    let added = WebhookEvent::MemberAdded { channel: "presence-lost".into(), user_id: "doomed".into() };
    receiver.wait_for_events(&[added]).await;
    cluster.nodes[0].kill_9();
    let removed = WebhookEvent::MemberRemoved { channel: "presence-lost".into(), user_id: "doomed".into() };
    let vacated = WebhookEvent::ChannelVacated { channel: "presence-lost".into() };
    // Presumed dead after 6 s, swept within 2 s more, held 3 s, and the lease of a dead holder
    // expires after 15 s.
    receiver.wait_for_events_within(&[removed.clone(), vacated.clone()], Duration::from_secs(40)).await;
    assert_eq!((count(&receiver, &removed), count(&receiver, &vacated)), (1, 1));
}

/// The node delivering a target is killed with webhooks pending: another node takes its lease
/// over (within 15 s) and delivers them, each once by id.
#[tokio::test]
async fn pending_webhooks_survive_the_death_of_the_node_delivering_them() {
    let receiver = Receiver::start().await;
    receiver.always(503);
    // Node 0 alone first, so it is the one that takes the target's lease.
    let mut cluster = TestCluster::start_with_app_settings(1, &webhook_config(&receiver)).await;
    let mut client = cluster.client(0).await;
    let channels: Vec<String> = (0..3).map(|n| format!("cache-p{n}")).collect();
    for channel in &channels {
        client.subscribe(channel).await;
        client.expect_event("pusher:cache_miss").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    receiver.wait_for(Duration::from_secs(10), "a first attempt", |requests| !requests.is_empty()).await;
    cluster.add_node().await;
    cluster.nodes[0].kill_9();
    drop(client);
    receiver.always(0);
    let misses: Vec<WebhookEvent> =
        channels.iter().map(|channel| WebhookEvent::CacheMiss { channel: channel.clone() }).collect();
    receiver.wait_for_events_within(&misses, Duration::from_secs(40)).await;
    let delivered: Vec<WebhookEvent> =
        receiver.unique_events().into_iter().filter(|event| matches!(event, WebhookEvent::CacheMiss { .. })).collect();
    assert_eq!(delivered, misses, "each once by id, in order");
}

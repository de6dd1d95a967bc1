//! Metrics: `/metrics` on its own listener, in the Prometheus text format, with the figures an
//! operator reads (publishes by outcome, connections, fan-out, resumes), and nothing served when
//! `metrics_port` is not set.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use reprise::webhooks::config::WebhookConfig;
use support::metrics::{free_port, scrape};
use support::webhooks::Receiver;
use support::{APP_ID, TestServer};

fn value(samples: &HashMap<String, f64>, text: &str, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

/// Publishing, subscribing and resuming show up with the right values, per app.
#[tokio::test]
async fn metrics_count_publishes_connections_fan_out_and_resumes() {
    let port = free_port().await;
    let server = TestServer::start_with(|config| config.server.metrics_port = Some(port)).await;
    let rest = server.rest();
    let mut live = server.client().await;
    live.subscribe("news").await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(rest.trigger_id("news", "story", &format!("s{i}")).await);
    }
    for _ in 0..3 {
        live.next_app_event().await;
    }
    let mut resuming = server.client().await;
    let replay = resuming.subscribe_since("news", &ids[0]).await;
    assert_eq!(replay["recovered"], true, "{replay}");

    let (samples, text) = scrape(port).await;
    let app = format!("app=\"{APP_ID}\"");
    let at = |series: &str| value(&samples, &text, series);
    assert_eq!(at(&format!("reprise_publishes_total{{{app},outcome=\"acknowledged\"}}")), 3.0);
    assert_eq!(at(&format!("reprise_publishes_total{{{app},outcome=\"refused\"}}")), 0.0);
    assert_eq!(at(&format!("reprise_connections_accepted_total{{{app}}}")), 2.0);
    assert_eq!(at(&format!("reprise_connections_open{{{app}}}")), 2.0);
    assert_eq!(at(&format!("reprise_channels{{{app}}}")), 1.0);
    assert_eq!(at(&format!("reprise_subscriptions{{{app}}}")), 2.0);
    assert_eq!(at(&format!("reprise_fan_out_frames_total{{{app}}}")), 3.0);
    assert_eq!(at(&format!("reprise_resumes_total{{{app},outcome=\"recovered\"}}")), 1.0);
    assert_eq!(at(&format!("reprise_resumes_total{{{app},outcome=\"not_recovered\"}}")), 0.0);
    assert_eq!(at(&format!("reprise_events_replayed_total{{{app}}}")), 2.0);
    // Two subscribes and nothing else sent by the clients.
    assert_eq!(at(&format!("reprise_messages_received_total{{{app}}}")), 2.0);
    // Three publishes, each its own group (they were sent one after the other).
    assert_eq!(at("reprise_commit_publishes_count"), 3.0);
    assert_eq!(at("reprise_commit_duration_seconds_count"), 3.0);
    // Sync durability (the default): one fsync per group.
    assert_eq!(at("reprise_flush_duration_seconds_count"), 3.0);
    assert_eq!(at(&format!("reprise_slow_consumers_total{{{app}}}")), 0.0);
}

/// Presence members are counted per user and channel: two sockets of one user are one member.
#[tokio::test]
async fn metrics_count_presence_members() {
    let port = free_port().await;
    let server = TestServer::start_with(|config| config.server.metrics_port = Some(port)).await;
    let mut clients = Vec::new();
    for user in ["ann", "ann", "bob"] {
        let mut client = server.client().await;
        client.subscribe_presence("presence-room", user, serde_json::json!({})).await;
        clients.push(client);
    }
    let (samples, text) = scrape(port).await;
    assert_eq!(value(&samples, &text, &format!("reprise_presence_members{{app=\"{APP_ID}\"}}")), 2.0);
    assert_eq!(value(&samples, &text, &format!("reprise_subscriptions{{app=\"{APP_ID}\"}}")), 3.0);
}

/// A compaction through the API is counted with the events it removed.
#[tokio::test]
async fn metrics_count_compactions_and_events_removed() {
    let port = free_port().await;
    let server = TestServer::start_with(|config| config.server.metrics_port = Some(port)).await;
    let rest = server.rest();
    rest.publish_n("news", "story", "s", 5).await;
    let (status, body) = rest.compact(serde_json::json!({"channel": "news", "keep_last": 2})).await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(3)), "{body}");
    let (samples, text) = scrape(port).await;
    let labels = format!("{{app=\"{APP_ID}\",trigger=\"api\"}}");
    assert_eq!(value(&samples, &text, &format!("reprise_compactions_total{labels}")), 1.0);
    assert_eq!(value(&samples, &text, &format!("reprise_compacted_events_total{labels}")), 3.0);
}

/// A connection that ends is counted as closed, by who closed it, and no longer as open.
#[tokio::test]
async fn metrics_count_closed_connections() {
    let port = free_port().await;
    let server = TestServer::start_with(|config| config.server.metrics_port = Some(port)).await;
    let client = server.client().await;
    // Dropped without a close frame: the socket just ends.
    drop(client);
    let closed = format!("reprise_connections_closed_total{{app=\"{APP_ID}\",reason=\"transport\"}}");
    let open = format!("reprise_connections_open{{app=\"{APP_ID}\"}}");
    // The server notices the hang-up on its own time: poll until it has.
    for _ in 0..200 {
        let (samples, _) = scrape(port).await;
        if samples.get(&closed) == Some(&1.0) {
            assert_eq!(samples.get(&open), Some(&0.0));
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let (_, text) = scrape(port).await;
    panic!("the closed connection was never counted:\n{text}");
}

/// The status page is served beside `/metrics`, and its JSON has each app's live figures.
#[tokio::test]
async fn the_status_page_and_its_json_show_live_figures() {
    let port = free_port().await;
    let server = TestServer::start_with(|config| config.server.metrics_port = Some(port)).await;
    let mut client = server.client().await;
    client.subscribe("news").await;
    server.rest().trigger_id("news", "story", "s").await;
    let page = reqwest::get(format!("http://127.0.0.1:{port}/")).await.expect("page");
    assert_eq!(page.status(), 200);
    assert!(page.text().await.expect("body").contains("status.json"));
    let status: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{port}/status.json")).await.expect("status").json().await.expect("JSON");
    let app = &status["apps"][0];
    assert_eq!(app["id"], APP_ID, "{status}");
    assert_eq!(
        (&app["connections"], &app["channels"], &app["subscriptions"], &app["publishes_acknowledged"]),
        (&serde_json::json!(1), &serde_json::json!(1), &serde_json::json!(1), &serde_json::json!(1)),
        "{status}"
    );
}

/// The log's own figures (events held, channels, size) reach the gauges and the status page,
/// and follow a compaction. They are read every few seconds, so the test polls.
#[tokio::test]
async fn log_figures_follow_appends_and_compaction() {
    let port = free_port().await;
    let server = TestServer::start_with(|config| config.server.metrics_port = Some(port)).await;
    let rest = server.rest();
    for i in 0..5 {
        rest.trigger_id("news", "story", &format!("s{i}")).await;
    }
    rest.trigger_id("weather", "report", "sunny").await;
    let (status, body) = rest.compact(serde_json::json!({"channel": "news", "keep_last": 2})).await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(3)), "{body}");

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (samples, text) = scrape(port).await;
        let figures = ["reprise_log_events", "reprise_log_channels"].map(|name| samples.get(name).copied());
        if figures == [Some(3.0), Some(2.0)] {
            assert!(value(&samples, &text, "reprise_log_size_bytes") > 0.0, "{text}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the log figures never became 3 events, 2 channels:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let status: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{port}/status.json")).await.expect("status").json().await.expect("JSON");
    assert_eq!((&status["log"]["events"], &status["log"]["channels"]), (&serde_json::json!(3), &serde_json::json!(2)));
    assert_eq!(status["log"]["backend"], "embedded", "{status}");
}

/// The status page's JSON names the version, the health and each app's busiest channels with
/// what the log holds for them.
#[tokio::test]
async fn the_status_json_lists_the_busiest_channels_with_their_log() {
    let port = free_port().await;
    let server = TestServer::start_with(|config| config.server.metrics_port = Some(port)).await;
    let rest = server.rest();
    let mut watchers = Vec::new();
    for channel in ["busy", "busy", "quiet"] {
        let mut client = server.client().await;
        client.subscribe(channel).await;
        watchers.push(client);
    }
    let mut last = String::new();
    for i in 0..4 {
        last = rest.trigger_id("busy", "tick", &format!("t{i}")).await;
    }
    let status: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{port}/status.json")).await.expect("status").json().await.expect("JSON");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["health"]["ok"], true, "{status}");
    assert_eq!(status["apps"][0]["webhooks"], serde_json::Value::Null, "no targets, no webhook figures");
    let busiest = status["apps"][0]["busiest"].as_array().expect("busiest channels");
    let names: Vec<&str> = busiest.iter().map(|channel| channel["name"].as_str().expect("name")).collect();
    assert_eq!(names, ["busy", "quiet"], "by subscribers: {status}");
    assert_eq!(
        (&busiest[0]["subscriptions"], &busiest[0]["events_held"]),
        (&serde_json::json!(2), &serde_json::json!(4))
    );
    assert_eq!(busiest[0]["head"], last.as_str(), "{status}");
    assert_eq!((&busiest[1]["events_held"], &busiest[1]["head"]), (&serde_json::json!(0), &serde_json::Value::Null));
}

/// A metrics port already taken stops the start-up with an error that names it.
#[tokio::test]
async fn a_taken_metrics_port_is_a_clear_start_up_error() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let mut config = reprise::config::Config::default();
    config.server.metrics_port = Some(port);
    config.apps = vec![support::test_app()];
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let log = std::sync::Arc::new(reprise_storage::SledLog::open_temporary().expect("a temporary log"));
    let served = reprise::serve(listener, std::sync::Arc::new(config), log, Default::default()).await;
    let error = served.expect_err("the metrics port is taken").to_string();
    assert!(error.contains(&format!("metrics on 127.0.0.1:{port}")), "{error}");
}

/// `reprise start --metrics-port` turns the listener on, on loopback.
#[tokio::test]
async fn the_metrics_port_flag_serves_metrics_from_the_binary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port().await;
    let flag = port.to_string();
    let server = support::process::ServerProcess::start(
        &dir.path().join("log"),
        dir.path().join("stderr"),
        &["--metrics-port", &flag],
    )
    .await;
    let (samples, text) = scrape(port).await;
    assert_eq!(value(&samples, &text, &format!("reprise_connections_open{{app=\"{APP_ID}\"}}")), 0.0);
    drop(server);
}

/// Without `metrics_port` nothing serves metrics: not the main listener either.
#[tokio::test]
async fn metrics_are_off_by_default() {
    let server = TestServer::start().await;
    assert_eq!(server.config.server.metrics_port, None);
    let response = reqwest::get(server.url("/metrics")).await.expect("request");
    assert_eq!(response.status(), 404);
}

/// Every metric the Grafana dashboard queries is one the server exports (a renamed metric would
/// leave a panel silently empty).
#[tokio::test]
async fn the_dashboard_queries_only_exported_metrics() {
    let port = free_port().await;
    let server = TestServer::start_with(|config| config.server.metrics_port = Some(port)).await;
    server.rest().trigger_id("news", "story", "s").await;
    // A family shows up once it has a sample: compact once, end one connection.
    let (status, body) = server.rest().compact(serde_json::json!({"keep_last": 1})).await;
    assert_eq!(status, 200, "{body}");
    drop(server.client().await);
    let mut text = String::new();
    for _ in 0..200 {
        text = scrape(port).await.1;
        if text.contains("reprise_connections_closed_total") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    // From the declared families, so a counter with no sample yet counts as exported.
    let exported: std::collections::HashSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|line| line.split_once(' '))
        .flat_map(|(name, kind)| match kind {
            "counter" => vec![format!("{name}_total")],
            "histogram" => ["_bucket", "_sum", "_count"].iter().map(|suffix| format!("{name}{suffix}")).collect(),
            _ => vec![name.to_owned()],
        })
        .collect();
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-dashboard.json"))
        .expect("docs/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for (at, _) in expr.match_indices("reprise_") {
                let name: String = expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                assert!(exported.contains(&name), "panel {} queries {name}, not exported:\n{text}", panel["title"]);
                queried += 1;
            }
        }
    }
    assert!(queried > 10, "the dashboard queries {queried} metrics");
}

/// Webhooks: a failed attempt is counted, then the delivery, and nothing is left pending.
#[tokio::test]
async fn metrics_count_webhooks_sent_failed_and_pending() {
    let receiver = Receiver::start().await;
    receiver.fail_first(1, 500);
    let port = free_port().await;
    let url = receiver.url();
    let server = TestServer::start_with(|config| {
        config.server.metrics_port = Some(port);
        config.apps[0].webhooks = vec![WebhookConfig::for_url(url)];
    })
    .await;
    let mut client = server.client().await;
    client.subscribe("cache-m").await;
    let series = |name: &str| format!("reprise_{name}{{app=\"{APP_ID}\"}}");
    let delivered = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (samples, text) = scrape(port).await;
            if samples.get(&series("webhooks_sent_total")).is_some_and(|sent| *sent >= 1.0) {
                return (samples, text);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (samples, text) = delivered.expect("a webhook delivered within 20 s");
    assert_eq!(value(&samples, &text, &series("webhook_attempts_failed_total")), 1.0);
    assert_eq!(value(&samples, &text, &series("webhooks_pending")), 0.0);
    let full = format!("reprise_webhooks_dropped_total{{app=\"{APP_ID}\",reason=\"full\"}}");
    assert_eq!(value(&samples, &text, &full), 0.0);
    // The status page shows the same.
    let status: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{port}/status.json")).await.expect("status").json().await.expect("JSON");
    let webhooks = &status["apps"][0]["webhooks"];
    assert_eq!(
        (
            &webhooks["targets"],
            &webhooks["sent"],
            &webhooks["failed_attempts"],
            &webhooks["pending"],
            &webhooks["dropped"]
        ),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(0),
            &serde_json::json!(0)
        ),
        "{status}"
    );
}

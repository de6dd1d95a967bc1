//! Idle and half-open connections must not exhaust the server (issue 11): HTTP connections that
//! never finish a request head are closed after `http_header_timeout_secs`, a keep-alive
//! connection left idle is closed the same way, a WebSocket that never speaks is closed with 4201,
//! and past `max_open_connections` new clients are answered (4100, 503) instead of taking the
//! descriptors `/up`, the HTTP API and the log need.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{TestServer, WsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header timeout these tests configure: short, so a test takes seconds.
const HEADER_TIMEOUT_SECS: u64 = 1;
/// How long after the timeout the server may take to close (timer and scheduling slack).
const CLOSE_SLACK: Duration = Duration::from_secs(4);

/// What each idle connection of the recipe sends before going silent: nothing, half a
/// request line, or a request line and half the headers.
const PARTIAL_REQUESTS: [&[u8]; 3] = [b"", b"GET /up HT", b"GET /up HTTP/1.1\r\nHost: x\r\nX-Slow: "];

/// Reads until the server closes the connection (EOF or reset); fails at `deadline`.
async fn expect_closed_by(stream: &mut TcpStream, deadline: tokio::time::Instant) {
    let mut buffer = [0_u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => continue, // a 408 or similar before the close is fine
            Err(_) => panic!("the server kept an idle connection open past the header timeout"),
        }
    }
}

/// The recipe: 2,000 connections that send nothing, half a request line or half the
/// headers were held forever. Each must be closed once the header timeout has passed, and the
/// server must still answer `/up` afterwards.
#[tokio::test]
async fn connections_that_never_finish_a_request_head_are_closed() {
    let server = TestServer::start_with(|config| config.server.http_header_timeout_secs = HEADER_TIMEOUT_SECS).await;
    let mut idle = Vec::with_capacity(2000);
    for index in 0..2000 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream.write_all(PARTIAL_REQUESTS[index % PARTIAL_REQUESTS.len()]).await.expect("send the partial request");
        idle.push(stream);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(HEADER_TIMEOUT_SECS) + CLOSE_SLACK;
    for stream in &mut idle {
        expect_closed_by(stream, deadline).await;
    }
    let status = reqwest::get(server.url("/up")).await.expect("/up").status();
    assert_eq!(status, 200);
}

/// A keep-alive connection that made one request and then went quiet is closed after the same
/// timeout: waiting for the next request head is waiting for a head.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let server = TestServer::start_with(|config| config.server.http_header_timeout_secs = HEADER_TIMEOUT_SECS).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
    let mut buffer = [0_u8; 1024];
    let read = tokio::time::timeout(support::READ_TIMEOUT, stream.read(&mut buffer)).await.expect("answer").unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&buffer[..read]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(HEADER_TIMEOUT_SECS) + CLOSE_SLACK;
    expect_closed_by(&mut stream, deadline).await;
}

/// A WebSocket that upgrades and then never sends anything (no subscribe, no ping, no pong) is
/// closed with 4201 within two activity timeouts, however long the ping interval: a Pusher
/// client is told `activity_timeout` and pings by itself within it.
#[tokio::test]
async fn a_websocket_that_never_speaks_is_closed_with_4201() {
    let server = TestServer::start_with(|config| {
        config.apps[0].activity_timeout_secs = 1;
        config.apps[0].ping_interval_secs = 120;
    })
    .await;
    let started = Instant::now();
    let mut silent = server.client().await;
    assert_eq!(silent.expect_close().await, 4201);
    assert!(started.elapsed() < Duration::from_secs(5), "closed only after {:?}", started.elapsed());
}

/// Once a client has spoken, the ping interval applies as before: a socket heard from is not
/// pinged after one activity timeout.
#[tokio::test]
async fn a_websocket_that_spoke_is_pinged_after_the_ping_interval() {
    let server = TestServer::start_with(|config| {
        config.apps[0].activity_timeout_secs = 1;
        config.apps[0].ping_interval_secs = 120;
    })
    .await;
    let mut client = server.client().await;
    client.subscribe("news").await;
    client.expect_silence(Duration::from_secs(3)).await;
}

/// How many connections the cap tests allow.
const CAP: usize = 20;

/// Opens `count` connections that send nothing, and waits until the server has accepted them.
async fn hold_idle(server: &TestServer, count: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        idle.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // The accept loop runs beside this test: let it take every queued connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    idle
}

/// At the cap, a new WebSocket is closed with 4100 ("over capacity": back off, reconnect) and an
/// HTTP API call gets 503, while `/up` still answers 200. Both work again once the idle
/// connections are gone.
#[tokio::test]
async fn over_the_cap_websockets_get_4100_and_http_503_until_connections_go() {
    let server = TestServer::start_with(|config| {
        config.server.http_header_timeout_secs = 30;
        config.server.max_open_connections = Some(CAP);
    })
    .await;
    let idle = hold_idle(&server, CAP).await;

    let mut refused = WsClient::connect(&server.ws_url(support::APP_KEY)).await;
    assert_eq!(refused.expect_close().await, 4100);
    let (status, body) = server.rest().call("GET", &server.rest().path("/channels"), &[], None).await;
    assert_eq!(status, 503, "{body}");
    // A publish too, though within the cap it skips the router (`routes::front`).
    let event = serde_json::json!({"name": "e", "channel": "news", "data": "x"});
    let (status, body) = server.rest().call("POST", &server.rest().path("/events"), &[], Some(&event)).await;
    assert_eq!(status, 503, "{body}");
    // `/up` answers, and closes the connection: an over-capacity connection is not kept alive.
    let mut up = TcpStream::connect(server.addr).await.expect("connect");
    up.write_all(b"GET /up HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(support::READ_TIMEOUT, up.read_to_end(&mut answer)).await.expect("closed").expect("read");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200") && answer.contains("connection: close"), "{answer}");

    drop(idle);
    // The server notices the closes on its next read of each socket: retry for a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut client = loop {
        let mut client = WsClient::connect(&server.ws_url(support::APP_KEY)).await;
        match client.next().await {
            Ok(frame) if frame["event"] == "pusher:connection_established" => break client,
            other => assert!(Instant::now() < deadline, "still refused after the idle sockets left: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    client.send_json(json!({"event":"pusher:ping","data":{}})).await;
    assert_eq!(client.recv().await["event"], "pusher:pong");
    let (status, body) = server.rest().call("GET", &server.rest().path("/channels"), &[], None).await;
    assert_eq!(status, 200, "{body}");
}

/// Below the cap everything works while idle connections are held: `/up`, the HTTP API and a
/// WebSocket each get a connection of their own.
#[tokio::test]
async fn below_the_cap_idle_connections_take_nothing_from_others() {
    let server = TestServer::start_with(|config| {
        config.server.http_header_timeout_secs = 30;
        config.server.max_open_connections = Some(CAP);
    })
    .await;
    let _idle = hold_idle(&server, CAP - 3).await;
    let status = reqwest::get(server.url("/up")).await.expect("/up").status();
    assert_eq!(status, 200);
    let (status, body) = server.rest().call("GET", &server.rest().path("/channels"), &[], None).await;
    assert_eq!(status, 200, "{body}");
    let mut client = server.client().await;
    client.subscribe("news").await;
}

/// The server process, killed when dropped so a failing test leaves nothing behind.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) the process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which is in parentheses and may hold spaces): utime and
    // stime are the 12th and 13th.
    let after_name = &stat[stat.rfind(')').expect("command name") + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_secs_f64(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Out of file descriptors, `accept` fails at once for as long as the shortage lasts. The
/// listener must neither spin on it (burning a core) nor stall (axum paused a second per error
/// and logged each one), and must log it once, not per attempt. The binary runs with 64 open
/// files and a cap set above that, so the idle connections below exhaust the descriptors.
#[tokio::test]
async fn out_of_descriptors_the_listener_neither_spins_nor_floods_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log_path = dir.path().join("reprise.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut command = Command::new("sh");
    command
        .args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\"", env!("CARGO_BIN_EXE_reprise"), "start"])
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--data-dir", "data"])
        .args(["--http-header-timeout-secs", "2", "--max-open-connections", "1000"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REVERB_") {
            command.env_remove(&name);
        }
    }
    let process = Process(command.spawn().expect("spawn reprise"));
    let pid = process.0.id();
    let up = format!("http://127.0.0.1:{port}/up");
    let started = Instant::now();
    while reqwest::get(&up).await.map(|response| response.status() != 200).unwrap_or(true) {
        assert!(started.elapsed() < Duration::from_secs(20), "reprise did not come up: {}", read_log(&log_path));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.expect("connect (queued by the kernel)"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (cpu_before, wall_before) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (cpu, wall) = (cpu_time(pid) - cpu_before, wall_before.elapsed());
    assert!(cpu < wall / 4, "the listener spun: {cpu:?} of CPU in {wall:?} out of descriptors");

    // The idle connections time out and give their descriptors back; queued clients get in.
    let status = tokio::time::timeout(support::READ_TIMEOUT, reqwest::get(&up)).await.expect("/up in time");
    assert_eq!(status.expect("/up").status(), 200);
    let output = read_log(&log_path);
    let warnings = output.matches("accept failed").count();
    assert_eq!(warnings, 1, "expected one accept warning (the run hit EMFILE once per minute):\n{output}");
    drop(idle);
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

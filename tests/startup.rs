//! The `reprise` binary as an operator meets it: `--help`, Reverb's environment variables,
//! refusing to start without an app on a public address, refusing unknown config keys, the
//! loopback demo app, and a clean exit on SIGTERM.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{RestClient, WsClient, data_of};

/// How long the binary may take to come up, or to exit after being told to.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(20);

/// The binary with no `REVERB_*` variable (nor `RUST_LOG`) from the test's own environment.
fn reprise(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reprise"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REVERB_") {
            command.env_remove(&name);
        }
    }
    command.env_remove("RUST_LOG").current_dir(dir);
    command
}

/// Runs a command to completion (it is expected to exit by itself).
fn run(mut command: Command) -> Output {
    command.stdin(Stdio::null()).output().expect("run reprise")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running server process, killed when dropped so a failing test leaves nothing behind.
struct Running {
    child: Child,
    log: PathBuf,
}

impl Running {
    fn spawn(mut command: Command, dir: &Path) -> Running {
        let log = dir.join("reprise.log");
        let file = std::fs::File::create(&log).unwrap();
        command.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        Running { child: command.spawn().expect("spawn reprise"), log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `GET /up` until it answers 200; fails if the process exits or time runs out.
    async fn wait_until_up(&mut self, port: u16) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("reprise exited with {status} before serving:\n{}", self.output());
            }
            if let Ok(response) = client.get(format!("http://127.0.0.1:{port}/up")).send().await {
                assert_eq!(response.status(), 200, "/up answered {}", response.status());
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("reprise did not come up:\n{}", self.output());
    }

    /// Sends SIGTERM and waits for the process to exit.
    async fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + PROCESS_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("reprise did not exit after SIGTERM:\n{}", self.output());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Connects to `/app/{key}` and returns the first frame.
async fn first_frame(port: u16, key: &str) -> Value {
    let mut client = WsClient::connect(&format!("ws://127.0.0.1:{port}/app/{key}?protocol=7")).await;
    client.recv().await
}

/// `--help` works, and `start --help` documents every flag an operator needs.
#[test]
fn help_documents_the_start_flags() {
    let dir = tempfile::tempdir().unwrap();
    let mut top = reprise(dir.path());
    top.arg("--help");
    let output = run(top);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("start"), "{}", text(&output));

    let mut start = reprise(dir.path());
    start.args(["start", "--help"]);
    let output = run(start);
    assert!(output.status.success(), "{}", text(&output));
    let help = text(&output);
    for flag in ["--host", "--port", "--config", "--data-dir"] {
        assert!(help.contains(flag), "start --help does not mention {flag}:\n{help}");
    }
}

/// With no app configured on a public address the server refuses to start (it would otherwise
/// serve a demo app with a published secret) and says how to configure one.
#[test]
fn no_app_on_a_public_host_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = reprise(dir.path());
    command.args(["start", "--host", "0.0.0.0", "--port", &free_port().to_string()]);
    let output = run(command);
    assert!(!output.status.success(), "started without an app:\n{}", text(&output));
    assert!(text(&output).contains("REVERB_APP_KEY"), "the error does not say what to set:\n{}", text(&output));
}

/// A config file with a misspelt key is refused, naming the key, instead of silently running
/// with the default.
#[test]
fn config_file_with_an_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("reprise.toml");
    let toml = "[[apps]]\nid = \"a\"\nkey = \"k\"\nsecret = \"s\"\nmax_mesage_size_bytes = 5000\n";
    std::fs::write(&config, toml).unwrap();
    let mut command = reprise(dir.path());
    command.args(["start", "--host", "127.0.0.1", "--port", &free_port().to_string()]).arg("--config").arg(&config);
    let output = run(command);
    assert!(!output.status.success(), "started with a misspelt key:\n{}", text(&output));
    assert!(text(&output).contains("max_mesage_size_bytes"), "the unknown key is not named:\n{}", text(&output));
}

/// On loopback with no app, the server starts with a demo app, prints its key in a warning, serves
/// it, and exits 0 on SIGTERM (what systemd and Docker send).
#[tokio::test]
async fn loopback_without_app_serves_a_demo_app_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = reprise(dir.path());
    command
        .args(["start", "--host", "127.0.0.1", "--port", &port.to_string(), "--data-dir"])
        .arg(dir.path().join("log"));
    let mut server = Running::spawn(command, dir.path());
    server.wait_until_up(port).await;

    let output = server.output();
    let warning = output.lines().find(|line| line.contains("reprise-demo-key"));
    let warning = warning.unwrap_or_else(|| panic!("the demo key is not printed:\n{output}"));
    assert!(warning.contains("WARN"), "the demo app is not announced as a warning: {warning}");

    let hello = first_frame(port, "reprise-demo-key").await;
    assert_eq!(hello["event"], "pusher:connection_established", "{hello}");

    let status = server.terminate().await;
    assert!(status.success(), "exit status {status} after SIGTERM:\n{}", server.output());
}

/// Reverb's variables are enough to run: REVERB_APP_ID/KEY/SECRET define the app,
/// REVERB_SERVER_PORT the port and REVERB_MAX_REQUEST_SIZE the largest API request; no demo app
/// is added next to a real one.
#[tokio::test]
async fn reverb_environment_variables_configure_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = reprise(dir.path());
    command
        .arg("start")
        .env("REVERB_APP_ID", "env-app")
        .env("REVERB_APP_KEY", "env-key")
        .env("REVERB_APP_SECRET", "env-secret")
        .env("REVERB_SERVER_PORT", port.to_string())
        .env("REVERB_MAX_REQUEST_SIZE", "2000")
        .env("RUST_LOG", "debug"); // the most the server ever logs: still never the secret
    let mut server = Running::spawn(command, dir.path());
    server.wait_until_up(port).await;

    let hello = first_frame(port, "env-key").await;
    assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
    let refused = first_frame(port, "reprise-demo-key").await;
    assert_eq!(refused["event"], "pusher:error", "{refused}");
    assert_eq!(data_of(&refused)["code"], 4001, "{refused}");

    let rest = RestClient {
        base: format!("http://127.0.0.1:{port}"),
        app_id: "env-app".into(),
        key: "env-key".into(),
        secret: "env-secret".into(),
    };
    let response = rest.trigger("news", "e", "x").await;
    assert!(response["ids"]["news"].is_string(), "{response}");
    // 3,000 bytes: within the default 10,000, over the variable's 2,000.
    let large = serde_json::json!({"name": "e", "channel": "news", "data": "x".repeat(3000)});
    let (status, body) = rest.call("POST", &rest.path("/events"), &[], Some(&large)).await;
    assert_eq!(status, 413, "{body}");

    let status = server.terminate().await;
    assert!(status.success(), "exit status {status} after SIGTERM:\n{}", server.output());
    assert!(!server.output().contains("env-secret"), "the secret reached the log:\n{}", server.output());
}

/// A port already in use is a start-up error naming the address, not a hang or a panic.
#[test]
fn port_in_use_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut command = reprise(dir.path());
    command.args(["start", "--host", "127.0.0.1", "--port", &port, "--data-dir"]).arg(dir.path().join("log"));
    let output = run(command);
    assert!(!output.status.success(), "started on a taken port:\n{}", text(&output));
    assert!(text(&output).contains(&port), "the error does not name the port:\n{}", text(&output));
}

/// Starts `command` with stdout and stderr in separate files under `dir`; returns the server and
/// the paths of both.
fn spawn_split(mut command: Command, dir: &Path) -> (Running, PathBuf) {
    let stdout = dir.join("stdout.txt");
    command.stdout(std::fs::File::create(&stdout).unwrap());
    let log = dir.join("reprise.log");
    command.stdin(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    (Running { child: command.spawn().expect("spawn reprise"), log }, stdout)
}

/// A server with one app from the config file and one from Reverb's variables (both with their
/// own secret), on `port`.
fn two_app_server(dir: &Path, port: u16) -> Command {
    let config = dir.join("reprise.toml");
    std::fs::write(&config, "[[apps]]\nid = \"file-app\"\nkey = \"file-key\"\nsecret = \"file-secret-value\"\n")
        .unwrap();
    let mut command = reprise(dir);
    command
        .args(["start", "--host", "127.0.0.1", "--port", &port.to_string(), "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.join("log"))
        .env("REVERB_APP_ID", "env-app")
        .env("REVERB_APP_KEY", "env-key")
        .env("REVERB_APP_SECRET", "env-secret-value")
        .env_remove("NO_COLOR");
    command
}

/// Logs go to stderr (stdout stays empty, for `reprise log export`), without ANSI colour when
/// stderr is not a terminal, and the start-up names every app with its key and where its
/// settings came from, never its secret.
#[tokio::test]
async fn logs_go_to_stderr_without_colour_and_name_each_app() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut server, stdout) = spawn_split(two_app_server(dir.path(), port), dir.path());
    server.wait_until_up(port).await;
    server.terminate().await;

    let log = server.output();
    assert_eq!(std::fs::read_to_string(&stdout).unwrap(), "", "something was logged to stdout");
    assert!(log.contains("reprise listening"), "the log is not on stderr:\n{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a log that is not a terminal:\n{log}");
    let line_of = |key: &str| {
        let line = log.lines().find(|line| line.contains("app configured") && line.contains(key));
        line.unwrap_or_else(|| panic!("no start-up line for {key}:\n{log}")).to_owned()
    };
    let file_line = line_of("key=file-key");
    assert!(file_line.contains("app_id=file-app") && file_line.contains("source=config file"), "{file_line}");
    let env_line = line_of("key=env-key");
    assert!(env_line.contains("app_id=env-app") && env_line.contains("source=REVERB_* variables"), "{env_line}");
    assert!(!log.contains("secret-value"), "a secret reached the log:\n{log}");
}

/// `--log-format json`: every stderr line is one JSON object with the level, a constant message
/// and the fields, for log shippers; the app lines carry id, key and source, never the secret.
#[tokio::test]
async fn json_log_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = two_app_server(dir.path(), port);
    command.arg("--log-format").arg("json");
    let (mut server, _stdout) = spawn_split(command, dir.path());
    server.wait_until_up(port).await;
    server.terminate().await;

    let log = server.output();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect();
    assert!(lines.iter().all(|line| line["level"].is_string() && line["message"].is_string()), "{log}");
    let apps: Vec<&Value> = lines.iter().filter(|line| line["message"] == "app configured").collect();
    assert_eq!(apps.len(), 2, "{log}");
    assert!(
        apps.iter()
            .any(|app| app["app_id"] == "env-app" && app["key"] == "env-key" && app["source"] == "REVERB_* variables"),
        "{log}"
    );
    assert!(lines.iter().any(|line| line["message"] == "reprise listening"), "{log}");
    assert!(!log.contains("secret-value"), "a secret reached the log:\n{log}");
}

/// A second server on a data directory another one uses fails at once, prints the cause once
/// (not again as a "caused by"), and says what is probably going on.
#[tokio::test]
async fn a_locked_data_directory_is_reported_once_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut first = reprise(dir.path());
    first.args(["start", "--host", "127.0.0.1", "--port", &port.to_string(), "--data-dir"]).arg(dir.path().join("log"));
    let mut server = Running::spawn(first, dir.path());
    server.wait_until_up(port).await;

    let mut second = reprise(dir.path());
    second
        .args(["start", "--host", "127.0.0.1", "--port", &free_port().to_string(), "--data-dir"])
        .arg(dir.path().join("log"));
    let output = run(second);
    assert!(!output.status.success(), "a second server started on a locked directory:\n{}", text(&output));
    let errors = String::from_utf8_lossy(&output.stderr);
    assert_eq!(errors.matches("could not acquire lock").count(), 1, "the cause is not printed exactly once:\n{errors}");
    assert!(errors.contains("another reprise is probably running with this data directory"), "no hint:\n{errors}");
    server.terminate().await;
}

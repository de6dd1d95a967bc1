//! The `reprise` binary as a child process, for what only a real process shows: `kill -9`, and a
//! start-up that must fail with a message. The apps are the harness's test app.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{APP_ID, APP_KEY, APP_SECRET, RestClient};

/// How long a start-up may take, to come up or to fail.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `reprise start`; killed (SIGKILL) and reaped on drop, so a failing test leaves no
/// server behind.
pub struct ServerProcess {
    child: Child,
    pub port: u16,
    stderr_path: PathBuf,
}

/// `reprise start` on loopback port `port` with the data directory `data_dir`, the test app, and
/// `args` added; its stdout and its log and errors (stderr) both go to `output`.
fn command(data_dir: &Path, port: u16, args: &[&str], output: File) -> Command {
    command_logging(data_dir, port, args, output, "warn")
}

/// [`command`] with `log_filter` as its `RUST_LOG`.
fn command_logging(data_dir: &Path, port: u16, args: &[&str], output: File, log_filter: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reprise"));
    command
        .args(["start", "--host", "127.0.0.1", "--port", &port.to_string(), "--data-dir"])
        .arg(data_dir)
        .args(args)
        .env_remove("REVERB_SERVER_HOST")
        .env_remove("REVERB_SERVER_PORT")
        .env("REVERB_APP_ID", APP_ID)
        .env("REVERB_APP_KEY", APP_KEY)
        .env("REVERB_APP_SECRET", APP_SECRET)
        .env("RUST_LOG", log_filter)
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("clone the output file"))
        .stderr(output);
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl ServerProcess {
    /// Starts `reprise start` (with `args` added) on a free loopback port with the data directory
    /// `data_dir`, and waits until `/up` answers.
    pub async fn start(data_dir: &Path, stderr_path: PathBuf, args: &[&str]) -> ServerProcess {
        Self::start_logging(data_dir, stderr_path, args, "warn").await
    }

    /// [`ServerProcess::start`] with `log_filter` as its `RUST_LOG` (`warn` there).
    pub async fn start_logging(
        data_dir: &Path,
        stderr_path: PathBuf,
        args: &[&str],
        log_filter: &str,
    ) -> ServerProcess {
        let port = free_port();
        let stderr = File::create(&stderr_path).unwrap();
        let child =
            command_logging(data_dir, port, args, stderr, log_filter).spawn().expect("spawn the reprise binary");
        let mut server = ServerProcess { child, port, stderr_path };
        server.wait_until_up().await;
        server
    }

    /// Runs `reprise start` (with `args` added) on `data_dir`, expecting it to exit on its own
    /// without ever serving; returns how it exited and its stderr.
    pub async fn start_expecting_exit(data_dir: &Path, stderr_path: PathBuf, args: &[&str]) -> (ExitStatus, String) {
        let port = free_port();
        let stderr = File::create(&stderr_path).unwrap();
        let child = command(data_dir, port, args, stderr).spawn().expect("spawn the reprise binary");
        let mut server = ServerProcess { child, port, stderr_path };
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = server.child.try_wait().unwrap() {
                return (status, server.stderr());
            }
            if reqwest::get(format!("{}/up", server.base())).await.is_ok_and(|r| r.status() == 200) {
                panic!("reprise started serving instead of exiting:\n{}", server.stderr());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("reprise neither exited nor came up:\n{}", server.stderr());
    }

    async fn wait_until_up(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("reprise exited with {status} before it was up:\n{}", self.stderr());
            }
            if let Ok(response) = client.get(format!("{}/up", self.base())).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("reprise did not come up on port {}:\n{}", self.port, self.stderr());
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/app/{APP_KEY}?protocol=7&client=js&version=8.4.0", self.port)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn rest(&self) -> RestClient {
        RestClient { base: self.base(), app_id: APP_ID.into(), key: APP_KEY.into(), secret: APP_SECRET.into() }
    }

    /// Waits (at most `timeout`) for the server to exit by itself; returns how, and its stderr.
    pub async fn exited(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("reprise did not exit within {timeout:?}:\n{}", self.stderr());
    }

    /// `kill -9`: no shutdown path runs, no final flush.
    pub fn kill_9(&mut self) {
        self.child.kill().expect("SIGKILL the server");
        let status = self.child.wait().expect("reap the server");
        assert!(!status.success(), "the server should have died from SIGKILL, got {status}");
    }

    /// SIGTERM, then waits for a clean exit (the log flushed and closed).
    pub fn stop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM the server");
        let status = self.child.wait().expect("reap the server");
        assert!(status.success(), "the server should stop cleanly, got {status}:\n{}", self.stderr());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! `PrivateRedis`: a `redis-server` of one's own on a free loopback port, for tests and benches of
//! the Redis backend (never the machine's shared one on 6379, which other builds use). It keeps
//! nothing on disk, so a restart comes back empty, as a Redis without persistence does. Killed and
//! reaped on drop.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`PrivateRedis::start`] waits for the server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const START_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// A `redis-server` child process; see the module docs.
pub struct PrivateRedis {
    port: u16,
    /// None while stopped.
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts `redis-server` (from `PATH`) on a free port of 127.0.0.1 and waits until it accepts
    /// connections.
    pub fn start() -> io::Result<Self> {
        // The port is free now; redis-server binds it a moment later (a race other processes on
        // this machine would have to win).
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        let mut redis = PrivateRedis { port, child: None };
        redis.restart()?;
        Ok(redis)
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (as a crash would) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Already gone is fine: the wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts an empty one on the same port.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        let port = self.port.to_string();
        let mut child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| {
                io::Error::new(error.kind(), format!("cannot run redis-server (is it installed?): {error}"))
            })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                self.child = Some(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!("redis-server on port {port} exited at start: {status}")));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis-server on port {port} never listened"),
                ));
            }
            std::thread::sleep(START_POLL_INTERVAL);
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

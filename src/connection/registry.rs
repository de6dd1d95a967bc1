//! Every open connection's socket, for what reaches all of them: their ping deadlines and
//! shutdown.
//!
//! Why one sweeper rather than a timer and a shutdown future in each connection's task: an idle
//! socket's memory is mostly its task, and a tokio `Sleep` (112 bytes) and a cancellation
//! future (72) were a fifth of it, held by every socket for its whole life to fire once every
//! ping interval. Here a socket keeps a 4-byte deadline in its `Socket`, and one task looks at
//! all of them every tick: at 15,000 sockets, 60,000 atomic loads a second.

use std::sync::{Arc, Mutex};

use slab::Slab;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::hub::{Socket, TICK, Tick, lock};

#[derive(Default)]
pub struct Registry {
    sockets: Mutex<Sockets>,
    /// Notified when the last socket leaves: shutdown waits for it. (The registry tracks the
    /// sockets for shutdown, so their tasks need no `TaskTracker`, whose token would take room
    /// in every socket's task.)
    emptied: Notify,
}

#[derive(Default)]
struct Sockets {
    open: Slab<Arc<Socket>>,
    /// Set (under the lock) when every socket was asked to close for shutdown: a socket
    /// registered afterwards is asked at once.
    closed_with: Option<u16>,
}

/// A socket's place in the registry, given back in `Drop`.
pub struct Registered {
    registry: Arc<Registry>,
    key: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut sockets = lock(&self.registry.sockets);
        sockets.open.remove(self.key);
        if sockets.open.is_empty() {
            self.registry.emptied.notify_waiters();
        }
    }
}

impl Registry {
    pub fn register(self: &Arc<Self>, socket: &Arc<Socket>) -> Registered {
        let mut sockets = lock(&self.sockets);
        let key = sockets.open.insert(Arc::clone(socket));
        if let Some(code) = sockets.closed_with {
            socket.close(code);
        }
        Registered { registry: Arc::clone(self), key }
    }

    /// How many sockets are open.
    pub fn open(&self) -> usize {
        lock(&self.sockets).open.len()
    }

    /// Completes once no socket is open.
    pub async fn all_closed(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered before looking: a last socket leaving in between is not missed.
            emptied.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            emptied.await;
        }
    }

    /// Wakes every socket whose deadline passed at `now`.
    fn sweep(&self, now: Tick) {
        let sockets = lock(&self.sockets);
        for (_, socket) in &sockets.open {
            if socket.deadline().take_if_passed(now) {
                socket.wake_for_deadline();
            }
        }
    }

    /// Asks every socket, and any registered from now on, to close with `code`.
    fn close_all(&self, code: u16) {
        let mut sockets = lock(&self.sockets);
        sockets.closed_with = Some(code);
        for (_, socket) in &sockets.open {
            socket.close(code);
        }
    }
}

/// Sweeps deadlines every tick until `shutdown` fires; then asks every socket to close with
/// `shutdown_code`.
pub async fn run(registry: Arc<Registry>, shutdown: CancellationToken, shutdown_code: u16) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticks.tick() => registry.sweep(Tick::now()),
        }
    }
    registry.close_all(shutdown_code);
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn all_closed_completes_when_the_last_socket_leaves() {
        let registry = Arc::new(Registry::default());
        registry.all_closed().await; // none open
        let socket = Socket::new(SocketId::random(), 10);
        let registered = registry.register(&socket);
        let waiting = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.all_closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one socket is open");
        drop(registered);
        waiting.await.expect("completes once the socket left");
    }

    use std::time::Duration;

    use super::*;
    use crate::hub::SocketId;

    #[test]
    fn a_sweep_wakes_the_sockets_whose_deadline_passed() {
        let registry = Arc::new(Registry::default());
        let (due, later) = (Socket::new(SocketId::random(), 10), Socket::new(SocketId::random(), 10));
        let _registered = (registry.register(&due), registry.register(&later));
        let now = Tick::now();
        due.deadline().set(now);
        later.deadline().set(now.after(Duration::from_secs(60)));
        registry.sweep(now);
        assert!(due.take_deadline_wake());
        assert!(!later.take_deadline_wake());
    }

    #[test]
    fn shutdown_closes_every_socket_and_any_registered_after() {
        let registry = Arc::new(Registry::default());
        let before = Socket::new(SocketId::random(), 10);
        let registered = registry.register(&before);
        registry.close_all(4200);
        assert_eq!(before.close_code(), 4200);
        let after = Socket::new(SocketId::random(), 10);
        let _late = registry.register(&after);
        assert_eq!(after.close_code(), 4200);
        drop(registered);
        assert_eq!(registry.open(), 1, "a dropped registration leaves");
    }
}

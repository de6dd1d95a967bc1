//! Which sockets signed in (`pusher:signin`) as which user, for `terminate_connections`, and
//! the watchlists: which sockets are told when which users come online or go offline
//! (`pusher_internal:watchlist_events`).
//!
//! A user is online while at least one socket is signed in as them. On a single node the
//! transitions happen here, and this node tells the watchers at once, under the same lock that
//! records them: a watcher's first frame (its snapshot) and every later change come in the order
//! they happened. In cluster mode a user is online while signed in on any node: the transitions
//! happen in Redis and come back over the bus, each with a version (a counter in Redis bumped by
//! each one). A watcher then waits for its snapshot (read in Redis with the version it reflects),
//! keeping the changes that arrive meanwhile, and takes only changes newer than its snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use reprise_api::frames;

use super::lock;
use super::{Frame, Socket};

/// By user id, then by socket id; and the watchlists.
pub(super) struct SignIns {
    /// Held for one sign-in, sign-out, change or lookup, never across an await (see the
    /// poisoning policy in `hub`). Frames are queued under it, so their order is the order of
    /// the changes.
    state: Mutex<State>,
    /// Whether this node decides who is online (a single node). In cluster mode the cluster
    /// does, and tells every node on the bus.
    local_transitions: bool,
}

#[derive(Default)]
struct State {
    users: HashMap<String, HashMap<String, Arc<Socket>>>,
    /// Watched user id -> the serials of the sockets watching them.
    watchers: HashMap<String, Vec<u64>>,
    /// Socket serial -> what it watches.
    watching: HashMap<u64, Watching>,
}

struct Watching {
    socket: Arc<Socket>,
    watchlist: Vec<String>,
    view: View,
}

/// Where a watcher stands in cluster mode.
enum View {
    /// Its snapshot is being read: the changes heard meanwhile, in order (user, online, version).
    Pending(Vec<(String, bool, u64)>),
    /// It has been told every change up to this version (its snapshot's, or the last change
    /// sent since): only later ones are news.
    Since(u64),
}

impl SignIns {
    pub fn new(local_transitions: bool) -> Self {
        SignIns { state: Mutex::new(State::default()), local_transitions }
    }

    /// Records that `socket` signed in as `user_id` watching `watchlist`, replacing its earlier
    /// sign-in as `previous`. On a single node it is sent its watchlist's status at once and the
    /// user's watchers are told if the user just came online; in cluster mode its watchlist
    /// waits for [`SignIns::snapshot`].
    pub fn sign_in(&self, user_id: &str, socket: &Arc<Socket>, previous: Option<&str>, watchlist: Vec<String>) {
        let mut state = lock(&self.state);
        if let Some(previous) = previous
            && state.remove_socket(previous, &socket.id)
            && self.local_transitions
        {
            state.tell_watchers(previous, false, None);
        }
        state.stop_watching(socket.serial);
        let sockets = state.users.entry(user_id.to_owned()).or_default();
        let first = sockets.is_empty();
        sockets.insert(socket.id.to_string(), Arc::clone(socket));
        if first && self.local_transitions {
            state.tell_watchers(user_id, true, None);
        }
        if watchlist.is_empty() {
            return;
        }
        for watched in &watchlist {
            state.watchers.entry(watched.clone()).or_default().push(socket.serial);
        }
        if self.local_transitions {
            let online: Vec<&str> =
                watchlist.iter().map(String::as_str).filter(|id| state.users.contains_key(*id)).collect();
            let offline: Vec<&str> =
                watchlist.iter().map(String::as_str).filter(|id| !state.users.contains_key(*id)).collect();
            socket.send(&Frame::plain(frames::watchlist_events(&online, &offline)));
        }
        let view = if self.local_transitions { View::Since(0) } else { View::Pending(Vec::new()) };
        state.watching.insert(socket.serial, Watching { socket: Arc::clone(socket), watchlist, view });
    }

    /// Forgets a sign-in when its socket goes away (telling the user's watchers if it was their
    /// last socket, on a single node).
    pub fn sign_out(&self, user_id: &str, socket: &Socket) {
        let mut state = lock(&self.state);
        if state.remove_socket(user_id, &socket.id) && self.local_transitions {
            state.tell_watchers(user_id, false, None);
        }
        state.stop_watching(socket.serial);
    }

    /// The sockets signed in as `user_id`, by socket id.
    pub fn sockets_of(&self, user_id: &str) -> HashMap<String, Arc<Socket>> {
        lock(&self.state).users.get(user_id).cloned().unwrap_or_default()
    }

    /// Every socket signed in here, with its user (to record them again in a Redis that lost them).
    pub fn signed_in(&self) -> Vec<(String, Arc<Socket>)> {
        let state = lock(&self.state);
        let sockets = state.users.iter().flat_map(|(user, sockets)| sockets.values().map(move |s| (user, s)));
        sockets.map(|(user, socket)| (user.clone(), Arc::clone(socket))).collect()
    }

    /// The union of every watchlist here, and the sockets watching (cluster mode, after the bus
    /// reconnected: their snapshots are read again, since changes may have been missed). Marks
    /// every watcher pending, so what is heard until the new snapshot is kept.
    pub fn resync_watchers(&self) -> (Vec<String>, Vec<Arc<Socket>>) {
        let mut state = lock(&self.state);
        let watched = state.watchers.keys().cloned().collect();
        let mut sockets = Vec::new();
        for watching in state.watching.values_mut() {
            if let View::Since(_) = watching.view {
                watching.view = View::Pending(Vec::new());
            }
            sockets.push(Arc::clone(&watching.socket));
        }
        (watched, sockets)
    }

    /// Cluster mode: `socket`'s watchlist status as of `version`, read in Redis (`online` holds
    /// the watched users online then). Sends the snapshot, then the changes heard meanwhile that
    /// are newer. A snapshot older than what the socket already has is ignored.
    pub fn snapshot(&self, socket: &Socket, version: u64, online: &HashSet<String>) {
        let mut state = lock(&self.state);
        let Some(watching) = state.watching.get_mut(&socket.serial) else { return };
        let heard = match &mut watching.view {
            View::Since(since) if *since >= version => return,
            View::Since(_) => Vec::new(),
            View::Pending(heard) => std::mem::take(heard),
        };
        let (online, offline): (Vec<&str>, Vec<&str>) =
            watching.watchlist.iter().map(String::as_str).partition(|id| online.contains(*id));
        watching.socket.send(&Frame::plain(frames::watchlist_events(&online, &offline)));
        let mut since = version;
        for (user_id, is_online, changed_at) in heard.into_iter().filter(|(_, _, changed_at)| *changed_at > version) {
            send_change(&watching.socket, &user_id, is_online);
            since = since.max(changed_at);
        }
        watching.view = View::Since(since);
    }

    /// Cluster mode: the snapshots of pending watchers could not be read (Redis failed after
    /// [`SignIns::resync_watchers`]). They keep the status they were last sent and get the
    /// changes heard meanwhile and from now on, rather than hold them until a later reconnect.
    pub fn release_pending(&self) {
        let mut state = lock(&self.state);
        for watching in state.watching.values_mut() {
            let View::Pending(heard) = &mut watching.view else { continue };
            let mut since = 0;
            for (user_id, online, changed_at) in std::mem::take(heard) {
                send_change(&watching.socket, &user_id, online);
                since = since.max(changed_at);
            }
            watching.view = View::Since(since);
        }
    }

    /// Cluster mode: `user_id` came online (or went offline) anywhere, as change `version`.
    pub fn changed(&self, user_id: &str, online: bool, version: u64) {
        lock(&self.state).tell_watchers(user_id, online, Some(version));
    }
}

impl State {
    /// Removes one socket's sign-in; returns whether that was the user's last socket here.
    fn remove_socket(&mut self, user_id: &str, socket_id: &str) -> bool {
        let Some(sockets) = self.users.get_mut(user_id) else { return false };
        if sockets.remove(socket_id).is_none() {
            return false;
        }
        if sockets.is_empty() {
            self.users.remove(user_id);
            return true;
        }
        false
    }

    fn stop_watching(&mut self, serial: u64) {
        let Some(watching) = self.watching.remove(&serial) else { return };
        for watched in &watching.watchlist {
            if let Some(serials) = self.watchers.get_mut(watched) {
                serials.retain(|s| *s != serial);
                if serials.is_empty() {
                    self.watchers.remove(watched);
                }
            }
        }
    }

    /// Tells every socket watching `user_id` that they came online or went offline. `version`
    /// is the change's in cluster mode: a watcher whose snapshot is newer already knows.
    fn tell_watchers(&mut self, user_id: &str, online: bool, version: Option<u64>) {
        let Some(serials) = self.watchers.get(user_id) else { return };
        for serial in serials {
            let Some(watching) = self.watching.get_mut(serial) else { continue };
            match (&mut watching.view, version) {
                (View::Pending(heard), Some(version)) => heard.push((user_id.to_owned(), online, version)),
                (View::Since(since), Some(version)) if version <= *since => {}
                (View::Since(since), Some(version)) => {
                    *since = version;
                    send_change(&watching.socket, user_id, online);
                }
                (_, None) => send_change(&watching.socket, user_id, online),
            }
        }
    }
}

fn send_change(socket: &Socket, user_id: &str, online: bool) {
    let (online, offline): (&[&str], &[&str]) = if online { (&[user_id], &[]) } else { (&[], &[user_id]) };
    socket.send(&Frame::plain(frames::watchlist_events(online, offline)));
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::hub::SocketId;

    fn socket(id: &str) -> Arc<Socket> {
        Socket::new(SocketId::fixed(id), 16)
    }

    /// The watchlist events queued for `socket`, as (name, user ids) pairs.
    fn events(socket: &Socket) -> Vec<(String, Vec<String>)> {
        let mut found = Vec::new();
        while let Some(frame) = socket.pop_frame() {
            let frame: Value = serde_json::from_str(&frame.text).unwrap();
            assert_eq!(frame["event"], "pusher_internal:watchlist_events");
            let data: Value = serde_json::from_str(frame["data"].as_str().unwrap()).unwrap();
            for event in data["events"].as_array().unwrap() {
                let ids = event["user_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned());
                found.push((event["name"].as_str().unwrap().to_owned(), ids.collect()));
            }
        }
        found
    }

    fn event(name: &str, ids: &[&str]) -> (String, Vec<String>) {
        (name.to_owned(), ids.iter().map(|id| (*id).to_owned()).collect())
    }

    /// On one node: the snapshot first, then online when a watched user's first socket signs in,
    /// nothing for their second, offline when their last goes; a watcher that left hears nothing.
    #[test]
    fn a_watcher_hears_first_sign_ins_and_last_sign_outs() {
        let sign_ins = SignIns::new(true);
        let (watcher, b1, b2) = (socket("1.1"), socket("2.1"), socket("2.2"));
        let carol = socket("3.1");
        sign_ins.sign_in("carol", &carol, None, Vec::new());
        sign_ins.sign_in("ann", &watcher, None, vec!["bob".into(), "carol".into()]);
        assert_eq!(events(&watcher), vec![event("online", &["carol"]), event("offline", &["bob"])]);
        sign_ins.sign_in("bob", &b1, None, Vec::new());
        sign_ins.sign_in("bob", &b2, None, Vec::new());
        assert_eq!(events(&watcher), vec![event("online", &["bob"])], "once, for the first socket");
        sign_ins.sign_out("bob", &b1);
        assert_eq!(events(&watcher), vec![]);
        sign_ins.sign_out("bob", &b2);
        assert_eq!(events(&watcher), vec![event("offline", &["bob"])]);
        sign_ins.sign_out("ann", &watcher);
        sign_ins.sign_out("carol", &carol);
        assert_eq!(events(&watcher), vec![]);
        let state = lock(&sign_ins.state);
        assert!(state.users.is_empty() && state.watchers.is_empty() && state.watching.is_empty());
    }

    /// Signing in again as another user makes the earlier one offline (if it was their last
    /// socket) and replaces the watchlist.
    #[test]
    fn signing_in_again_replaces_the_user_and_the_watchlist() {
        let sign_ins = SignIns::new(true);
        let (watcher, socket) = (socket("1.1"), socket("2.1"));
        sign_ins.sign_in("w", &watcher, None, vec!["x".into(), "y".into()]);
        sign_ins.sign_in("x", &socket, None, vec!["w".into()]);
        assert_eq!(events(&socket), vec![event("online", &["w"])]);
        sign_ins.sign_in("y", &socket, Some("x"), Vec::new());
        assert_eq!(
            events(&watcher),
            vec![
                event("offline", &["x", "y"]),
                event("online", &["x"]),
                event("offline", &["x"]),
                event("online", &["y"])
            ]
        );
        sign_ins.sign_in("w2", &watcher, Some("w"), Vec::new());
        sign_ins.sign_out("y", &socket);
        assert_eq!(events(&watcher), vec![], "no longer watching");
    }

    /// In cluster mode a watcher waits for its snapshot: changes heard meanwhile are kept and
    /// sent after it if they are newer; later changes at or below the snapshot's version (a
    /// bus message that lagged behind the snapshot's read) are dropped.
    #[test]
    fn a_clustered_watcher_orders_changes_by_version() {
        let sign_ins = SignIns::new(false);
        let watcher = socket("1.1");
        sign_ins.sign_in("w", &watcher, None, vec!["b".into(), "c".into()]);
        sign_ins.changed("b", true, 10); // reflected in the snapshot below
        sign_ins.changed("c", true, 12); // after it
        assert_eq!(events(&watcher), vec![], "nothing before the snapshot");
        sign_ins.snapshot(&watcher, 11, &HashSet::from(["b".to_owned()]));
        assert_eq!(events(&watcher), vec![event("online", &["b"]), event("offline", &["c"]), event("online", &["c"])]);
        sign_ins.changed("b", false, 11); // lagged: the snapshot already had it
        sign_ins.changed("b", false, 13);
        assert_eq!(events(&watcher), vec![event("offline", &["b"])]);
        sign_ins.snapshot(&watcher, 12, &HashSet::new());
        assert_eq!(events(&watcher), vec![], "an older snapshot is ignored");
        sign_ins.changed("w", true, 14);
        assert_eq!(events(&watcher), vec![], "a clustered node does not decide who is online");
    }

    /// A resync whose snapshot cannot be read releases the watchers it held: the changes heard
    /// meanwhile are sent, and later ones too.
    #[test]
    fn a_failed_resync_releases_what_it_held() {
        let sign_ins = SignIns::new(false);
        let watcher = socket("1.1");
        sign_ins.sign_in("w", &watcher, None, vec!["b".into()]);
        sign_ins.snapshot(&watcher, 5, &HashSet::new());
        let (watched, sockets) = sign_ins.resync_watchers();
        assert_eq!((watched, sockets.len()), (vec!["b".to_owned()], 1));
        events(&watcher);
        sign_ins.changed("b", true, 6);
        assert_eq!(events(&watcher), vec![], "held for the snapshot");
        sign_ins.release_pending();
        sign_ins.changed("b", false, 7);
        assert_eq!(events(&watcher), vec![event("online", &["b"]), event("offline", &["b"])]);
    }
}

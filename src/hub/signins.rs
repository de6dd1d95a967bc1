//! Which sockets signed in (`pusher:signin`) as which user, for `terminate_connections`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::lock;
use super::socket::Socket;

/// By user id, then by socket id.
#[derive(Default)]
pub(super) struct SignIns {
    /// Held for one insert, remove or lookup (see the poisoning policy in `hub`).
    users: Mutex<HashMap<String, HashMap<String, Arc<Socket>>>>,
}

impl SignIns {
    /// Records that `socket` signed in as `user_id`, replacing its earlier sign-in as `previous`.
    pub fn sign_in(&self, user_id: &str, socket: &Arc<Socket>, previous: Option<&str>) {
        let mut users = lock(&self.users);
        if let Some(previous) = previous {
            remove(&mut users, previous, &socket.id);
        }
        users.entry(user_id.to_owned()).or_default().insert(socket.id.to_string(), Arc::clone(socket));
    }

    /// Forgets a sign-in when its socket goes away.
    pub fn sign_out(&self, user_id: &str, socket_id: &str) {
        remove(&mut lock(&self.users), user_id, socket_id);
    }

    /// The sockets signed in as `user_id`, by socket id.
    pub fn sockets_of(&self, user_id: &str) -> HashMap<String, Arc<Socket>> {
        lock(&self.users).get(user_id).cloned().unwrap_or_default()
    }
}

fn remove(users: &mut HashMap<String, HashMap<String, Arc<Socket>>>, user_id: &str, socket_id: &str) {
    if let Some(sockets) = users.get_mut(user_id) {
        sockets.remove(socket_id);
        if sockets.is_empty() {
            users.remove(user_id);
        }
    }
}

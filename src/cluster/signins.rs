//! Who is signed in (`pusher:signin`) anywhere in the cluster, for watchlists: a user is online
//! while at least one socket on any node is signed in as them. Per app:
//!
//! - `{p}:signins:{app}:node:{node}`: socket serial -> user id, the sign-ins of one node;
//! - `{p}:signins:{app}:users`: user id -> how many sockets are signed in as them, anywhere;
//! - `{p}:signins:{app}:nodes`: the nodes with sign-ins, for the sweep;
//! - `{p}:signins:{app}:version`: bumped by every online/offline change.
//!
//! Signing in and out are Lua scripts that also publish the change on the bus (`user`, online
//! or not, with its version), so changes are counted once and reach every node in the order they
//! happened. The sign-ins of a node that stopped sending heartbeats are signed out by whichever
//! node sweeps first (`census`), with `off` for users who had no other socket.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use super::{Cluster, ClusterError};
use crate::ServerState;
use crate::apps::App;
use crate::hub::Socket;

/// Lua shared by the scripts: `announce(online, user)` bumps the version (seeded from Redis's
/// clock in microseconds when the key is missing, so a Redis that restarted empty never goes
/// back to versions watchers have already seen) and publishes the change. ARGV[1] is the bus
/// channel, ARGV[2] the app; KEYS[2] the users hash, KEYS[3] the version.
const ANNOUNCE: &str = r"
local function announce(online, user)
    if redis.call('EXISTS', KEYS[3]) == 0 then
        local t = redis.call('TIME')
        redis.call('SET', KEYS[3], t[1] .. string.format('%06d', tonumber(t[2])))
    end
    local version = redis.call('INCR', KEYS[3])
    redis.call('PUBLISH', ARGV[1], cjson.encode({k = 'user', a = ARGV[2], u = user, o = online, v = string.format('%.0f', version)}))
end
local function sign_out(node, serial)
    local user = redis.call('HGET', node, serial)
    if not user then return 0 end
    redis.call('HDEL', node, serial)
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
        redis.call('HDEL', KEYS[2], user)
        announce(false, user)
        return 1
    end
    return 0
end
";

/// KEYS: node's sign-ins, users, version, nodes. ARGV: bus channel, app, node id, socket serial,
/// user id, then the watchlist. Records the sign-in (replacing the socket's earlier one) and
/// returns the version and the watched users online, as of after it.
static SIGN_IN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{ANNOUNCE}
        if redis.call('HGET', KEYS[1], ARGV[4]) ~= ARGV[5] then
            sign_out(KEYS[1], ARGV[4])
            redis.call('HSET', KEYS[1], ARGV[4], ARGV[5])
            redis.call('SADD', KEYS[4], ARGV[3])
            if redis.call('HINCRBY', KEYS[2], ARGV[5], 1) == 1 then
                announce(true, ARGV[5])
            end
        end
        local online = {{}}
        for i = 6, #ARGV do
            if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
                table.insert(online, ARGV[i])
            end
        end
        return {{redis.call('GET', KEYS[3]) or '0', online}}
        "
    ))
});

/// KEYS: node's sign-ins, users, version, nodes. ARGV: bus channel, app, node id, then socket
/// serials. Signs those sockets out; forgets the node when it has no sign-in left. Returns how
/// many users went offline.
static SIGN_OUT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{ANNOUNCE}
        local offline = 0
        for i = 4, #ARGV do
            offline = offline + sign_out(KEYS[1], ARGV[i])
        end
        if redis.call('EXISTS', KEYS[1]) == 0 then
            redis.call('SREM', KEYS[4], ARGV[3])
        end
        return offline
        "
    ))
});

/// KEYS: users, version. ARGV: user ids. The version, and which of the users are online.
static SNAPSHOT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local online = {}
        for i = 1, #ARGV do
            if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
                table.insert(online, ARGV[i])
            end
        end
        return {redis.call('GET', KEYS[2]) or '0', online}
        ",
    )
});

/// Sockets signed out per script call when a dead node is swept: one call must not hold Redis
/// up for long.
const SWEEP_BATCH: usize = 500;

/// What a watcher is told first: the watched users online as of change `version`.
pub struct Snapshot {
    pub version: u64,
    pub online: Vec<String>,
}

impl Cluster {
    fn signins_key(&self, app: &str, part: &str) -> String {
        self.key(&["signins", app, part])
    }

    fn node_signins_key(&self, app: &str, node: &str) -> String {
        self.key(&["signins", app, "node", node])
    }

    /// Records that `socket` (of this node) signed in as `user_id`, replacing its earlier
    /// sign-in; announces the user online if it is their first socket anywhere. Returns the
    /// status of `watchlist` as of after the sign-in.
    pub async fn sign_in(
        &self,
        app: &str,
        socket: &Socket,
        user_id: &str,
        watchlist: &[String],
    ) -> Result<Snapshot, ClusterError> {
        let mut redis = self.connection();
        let mut invocation = SIGN_IN.prepare_invoke();
        invocation
            .key(self.node_signins_key(app, &self.node_id))
            .key(self.signins_key(app, "users"))
            .key(self.signins_key(app, "version"))
            .key(self.signins_key(app, "nodes"))
            .arg(self.bus_channel())
            .arg(app)
            .arg(&self.node_id)
            .arg(socket.serial())
            .arg(user_id)
            .arg(watchlist);
        let result: Result<(u64, Vec<String>), _> = invocation.invoke_async(&mut redis).await;
        let (version, online) = self.observe(result)?;
        Ok(Snapshot { version, online })
    }

    /// Signs sockets of `node` out (by serial), announcing users offline whose last socket
    /// anywhere that was. Returns how many users went offline.
    pub async fn sign_out(&self, app: &str, node: &str, serials: &[String]) -> Result<usize, ClusterError> {
        let mut redis = self.connection();
        let mut invocation = SIGN_OUT.prepare_invoke();
        invocation
            .key(self.node_signins_key(app, node))
            .key(self.signins_key(app, "users"))
            .key(self.signins_key(app, "version"))
            .key(self.signins_key(app, "nodes"))
            .arg(self.bus_channel())
            .arg(app)
            .arg(node)
            .arg(serials);
        let result: Result<usize, _> = invocation.invoke_async(&mut redis).await;
        self.observe(result)
    }

    /// Which of `users` are signed in anywhere, as of which change.
    pub async fn online_snapshot(&self, app: &str, users: &[String]) -> Result<Snapshot, ClusterError> {
        let mut redis = self.connection();
        let result: Result<(u64, Vec<String>), _> = SNAPSHOT
            .key(self.signins_key(app, "users"))
            .key(self.signins_key(app, "version"))
            .arg(users)
            .invoke_async(&mut redis)
            .await;
        let (version, online) = self.observe(result)?;
        Ok(Snapshot { version, online })
    }

    /// This node's sign-ins as Redis has them (serial -> user), to reconcile after a reconnect.
    pub async fn own_sign_ins(&self, app: &str) -> Result<Vec<(String, String)>, ClusterError> {
        let mut redis = self.connection();
        let result = redis::cmd("HGETALL").arg(self.node_signins_key(app, &self.node_id)).query_async(&mut redis).await;
        self.observe(result)
    }

    /// Signs out every socket of a node not in `live_nodes`, with `offline` for users who had
    /// no other socket. Returns how many sockets were signed out.
    pub async fn sweep_sign_ins(&self, app: &str, live_nodes: &[String]) -> Result<usize, ClusterError> {
        let mut redis = self.connection();
        let nodes: Result<Vec<String>, _> =
            redis::cmd("SMEMBERS").arg(self.signins_key(app, "nodes")).query_async(&mut redis).await;
        let mut removed = 0;
        for node in self.observe(nodes)? {
            if live_nodes.contains(&node) {
                continue;
            }
            let serials: Result<Vec<String>, _> =
                redis::cmd("HKEYS").arg(self.node_signins_key(app, &node)).query_async(&mut redis).await;
            let serials = self.observe(serials)?;
            if serials.is_empty() {
                // Nothing left: the script forgets the node.
                self.sign_out(app, &node, &[]).await?;
            }
            for batch in serials.chunks(SWEEP_BATCH) {
                self.sign_out(app, &node, batch).await?;
                removed += batch.len();
            }
        }
        Ok(removed)
    }
}

/// After the bus reconnected (Redis may have restarted empty, and changes may have been
/// missed): makes Redis hold exactly this node's sign-ins, then sends every watcher here a fresh
/// snapshot. Failures are logged; the next reconnect tries again.
pub async fn reconcile(cluster: &Cluster, state: &ServerState) {
    for app in state.apps.iter() {
        let app_id = &app.config.id;
        if let Err(error) = reconcile_sign_ins(cluster, app).await {
            tracing::warn!(%error, app = %app_id, "cannot restore sign-ins after a reconnect; the next reconnect retries");
            continue;
        }
        let (watched, sockets) = app.hub.resync_watchers();
        if sockets.is_empty() {
            continue;
        }
        match cluster.online_snapshot(app_id, &watched).await {
            Ok(Snapshot { version, online }) => {
                let online: HashSet<String> = online.into_iter().collect();
                for socket in sockets {
                    app.hub.watchlist_snapshot(&socket, version, &online);
                }
            }
            Err(error) => {
                tracing::warn!(%error, app = %app_id, "cannot read watchlists after a reconnect; they go on unrefreshed");
                app.hub.release_watchers();
            }
        }
    }
}

async fn reconcile_sign_ins(cluster: &Cluster, app: &App) -> Result<(), ClusterError> {
    let app_id = &app.config.id;
    let local = app.hub.signed_in();
    let recorded: HashMap<String, String> = cluster.own_sign_ins(app_id).await?.into_iter().collect();
    let by_serial: HashMap<String, &str> =
        local.iter().map(|(user, socket)| (socket.serial().to_string(), user.as_str())).collect();
    let stale: Vec<String> = recorded
        .iter()
        .filter(|(serial, user)| by_serial.get(*serial) != Some(&user.as_str()))
        .map(|(serial, _)| serial.clone())
        .collect();
    for batch in stale.chunks(SWEEP_BATCH) {
        cluster.sign_out(app_id, &cluster.node_id, batch).await?;
    }
    for (user, socket) in &local {
        if recorded.get(&socket.serial().to_string()) != Some(user) {
            cluster.sign_in(app_id, socket, user, &[]).await?;
        }
    }
    Ok(())
}

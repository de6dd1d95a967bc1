//! Cluster-wide presence rosters in Redis, per presence channel:
//!
//! - `{p}:presence:{app}:{channel}:sockets`: socket (`{node}:{serial}`) -> user id;
//! - `{p}:presence:{app}:{channel}:users`: user id -> how many of their sockets are in, anywhere;
//! - `{p}:presence:{app}:{channel}:info`: user id -> `user_info` (JSON text);
//! - `{p}:presence_channels:{app}`: the presence channels with members, for the sweep.
//!
//! Joining and leaving are Lua scripts, so counting a user's sockets and announcing
//! `member_added` / `member_removed` on the bus happen together: a user on two nodes is one
//! member, added once and removed once; and the app's `presence_max_members` caps the
//! cluster's roster exactly. The sockets of a node that stopped sending heartbeats are
//! removed by whichever node sweeps first (`census`), with `member_removed` for their users.

use std::sync::LazyLock;

use reprise_api::presence::{PresenceMember, roster};
use reprise_api::webhook::WebhookEvent;
use serde_json::Value;

use super::messages::BusMessage;
use super::{Cluster, ClusterError};
use crate::hub::{RosterFull, Socket};
use crate::webhooks::sink::WebhookSink;

/// KEYS: sockets, users, info, presence channels. ARGV: socket key, user id, user info, bus
/// channel, channel name, added message, most members. Returns whether the user was added (their
/// first socket anywhere: "1" or "0"), then the roster: [added, user, info, user, info...]; or
/// nil (nothing changed) if the user is new and the roster already holds the most members:
/// checked in the script, so concurrent joins on several nodes cannot overshoot.
static JOIN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local added = '0'
        if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
            if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0
                and redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[7]) then
                return false
            end
            redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
            redis.call('SADD', KEYS[4], ARGV[5])
            if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then
                redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
                redis.call('PUBLISH', ARGV[4], ARGV[6])
                added = '1'
            end
        end
        local roster = redis.call('HGETALL', KEYS[3])
        table.insert(roster, 1, added)
        return roster
        ",
    )
});

/// KEYS: sockets, users, info. ARGV: socket key, bus channel, app, channel. Returns the user id
/// if the user left (their last socket), else nil.
static LEAVE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
        local user = redis.call('HGET', KEYS[1], ARGV[1])
        if not user then return false end
        redis.call('HDEL', KEYS[1], ARGV[1])
        if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
            redis.call('HDEL', KEYS[2], user)
            redis.call('HDEL', KEYS[3], user)
            redis.call('PUBLISH', ARGV[2], cjson.encode({k = 'pr', a = ARGV[3], c = ARGV[4], u = user}))
            return user
        end
        return false
        ",
    )
});

impl Cluster {
    fn presence_keys(&self, app: &str, channel: &str) -> [String; 3] {
        ["sockets", "users", "info"].map(|part| self.key(&["presence", app, channel, part]))
    }

    fn presence_channels_key(&self, app: &str) -> String {
        self.key(&["presence_channels", app])
    }

    /// Adds `socket` as `member` to the cluster-wide roster of `channel` (announcing the user if
    /// it is their first socket anywhere) and returns the roster (`{"presence":{...}}`) and
    /// whether the user was added (the one place in the cluster that decides it); a new user is
    /// refused if the roster already holds `max_members`, on all nodes together.
    pub async fn join(
        &self,
        app: &str,
        channel: &str,
        socket: &Socket,
        member: &PresenceMember,
        max_members: usize,
    ) -> Result<Result<(Value, bool), RosterFull>, ClusterError> {
        let user_info = member.user_info.to_string();
        let added = BusMessage::MemberAdded {
            app: app.to_owned(),
            channel: channel.to_owned(),
            user_id: member.user_id.clone(),
            user_info: user_info.clone(),
            except_socket: socket.id.to_string(),
        };
        let [sockets, users, info] = self.presence_keys(app, channel);
        let mut redis = self.connection();
        let result: Result<Option<Vec<String>>, _> = JOIN
            .key(sockets)
            .key(users)
            .key(info)
            .key(self.presence_channels_key(app))
            .arg(self.socket_key(socket))
            .arg(&member.user_id)
            .arg(user_info)
            .arg(self.bus_channel())
            .arg(channel)
            .arg(added.to_json())
            .arg(max_members)
            .invoke_async(&mut redis)
            .await;
        let Some(flat) = self.observe(result)? else { return Ok(Err(RosterFull)) };
        let added = flat.first().is_some_and(|flag| flag == "1");
        let members: Vec<(String, Value)> = flat
            .get(1..)
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), serde_json::from_str(&pair[1]).unwrap_or(Value::Null)))
            .collect();
        Ok(Ok((roster(members.iter().map(|(id, info)| (id.as_str(), info))), added)))
    }

    /// Removes one socket (by its cluster key) from `channel`'s roster, announcing the user's
    /// departure if it was their last socket anywhere. Returns the user if they left.
    pub async fn leave(&self, app: &str, channel: &str, socket_key: &str) -> Result<Option<String>, ClusterError> {
        let [sockets, users, info] = self.presence_keys(app, channel);
        let mut redis = self.connection();
        let result: Result<Option<String>, _> = LEAVE
            .key(sockets)
            .key(users)
            .key(info)
            .arg(socket_key)
            .arg(self.bus_channel())
            .arg(app)
            .arg(channel)
            .invoke_async(&mut redis)
            .await;
        self.observe(result)
    }

    /// Whether `user_id` is present on `channel` on any node now.
    pub async fn is_present(&self, app: &str, channel: &str, user_id: &str) -> Result<bool, ClusterError> {
        let [_, users, _] = self.presence_keys(app, channel);
        let mut redis = self.connection();
        let result = redis::cmd("HEXISTS").arg(users).arg(user_id).query_async(&mut redis).await;
        self.observe(result)
    }

    /// The user ids present on `channel`, on every node.
    pub async fn users(&self, app: &str, channel: &str) -> Result<Vec<String>, ClusterError> {
        let [_, users, _] = self.presence_keys(app, channel);
        let mut redis = self.connection();
        let result = redis::cmd("HKEYS").arg(users).query_async(&mut redis).await;
        self.observe(result)
    }

    /// How many distinct users are present on `channel`, on every node.
    pub async fn user_count(&self, app: &str, channel: &str) -> Result<usize, ClusterError> {
        let [_, users, _] = self.presence_keys(app, channel);
        let mut redis = self.connection();
        let result = redis::cmd("HLEN").arg(users).query_async(&mut redis).await;
        self.observe(result)
    }

    /// Removes every presence socket of a node not in `live_nodes` (a node killed, or cut off
    /// long enough to be presumed dead), with `member_removed` for users who had no other socket
    /// (also told to `webhooks`). Returns how many sockets were removed.
    pub async fn sweep_presence(
        &self,
        app: &str,
        live_nodes: &[String],
        webhooks: Option<&WebhookSink>,
    ) -> Result<usize, ClusterError> {
        let mut redis = self.connection();
        let channels: Result<Vec<String>, _> =
            redis::cmd("SMEMBERS").arg(self.presence_channels_key(app)).query_async(&mut redis).await;
        let mut removed = 0;
        for channel in self.observe(channels)? {
            let [sockets, _, _] = self.presence_keys(app, &channel);
            let keys: Result<Vec<String>, _> = redis::cmd("HKEYS").arg(&sockets).query_async(&mut redis).await;
            let keys = self.observe(keys)?;
            if keys.is_empty() {
                // Nobody left: forget the channel (a join re-adds it; SREM of a re-added one is
                // harmless, the next join or sweep sees it again).
                let forgot: Result<(), _> =
                    redis::cmd("SREM").arg(self.presence_channels_key(app)).arg(&channel).query_async(&mut redis).await;
                self.observe(forgot)?;
                continue;
            }
            for key in keys {
                let node = key.split(':').next().unwrap_or_default();
                if !live_nodes.iter().any(|live| live == node) {
                    if let (Some(user_id), Some(webhooks)) = (self.leave(app, &channel, &key).await?, webhooks) {
                        webhooks.emit(WebhookEvent::MemberRemoved { channel: channel.clone(), user_id });
                    }
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

//! The Reprise wire contract: what crosses a socket or an HTTP request, and nothing that does IO.
//!
//! Pusher protocol v7 frames, the Pusher HTTP API payloads and signatures, channel-name rules, and
//! Reprise's replay extension (event ids, `since`, the replay block of `subscription_succeeded`), and
//! the Server-Sent Events stream (framing, composite cursor, grant), and webhooks (body, signature),
//! and the WebSocket frames a client sends (a reader that holds no memory while idle).

pub mod backup;
pub mod channel;
pub mod codes;
pub mod event_id;
pub mod frames;
pub mod history;
pub mod http;
pub mod presence;
pub mod signature;
pub mod sse;
pub mod user;
pub mod webhook;
pub mod websocket;

pub use channel::{ChannelKind, ChannelName, ChannelNameError};
pub use codes::ErrorCode;
pub use event_id::EventId;

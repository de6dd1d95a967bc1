//! Pusher's error and close codes. The range tells a client what to do: 4000-4099 do not reconnect,
//! 4100-4199 reconnect after backing off, 4200-4299 reconnect now, 4300-4399 other errors.

/// A Pusher protocol code, sent in `pusher:error` frames and as WebSocket close codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The key in `/app/{key}` names no app.
    ApplicationDoesNotExist = 4001,
    /// The app is over its `max_connections`.
    OverConnectionQuota = 4004,
    /// Not allowed: an `Origin` outside `allowed_origins` (then closed), or a client event the
    /// socket may not send (the socket stays open).
    Unauthorized = 4009,
    /// The client could not keep up with its messages (its outbox filled up): back off, then
    /// reconnect and resume from the log.
    OverCapacity = 4100,
    /// Generic "reconnect now": sent to every socket on shutdown and on `terminate_connections`.
    Reconnect = 4200,
    /// The client did not answer a ping in time.
    PongNotReceived = 4201,
    /// The client sent client events faster than the app allows.
    ClientEventRateLimit = 4301,
}

impl ErrorCode {
    pub fn as_u16(self) -> u16 {
        self as u16
    }
}

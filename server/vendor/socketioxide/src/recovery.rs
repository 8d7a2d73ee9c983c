//! # Connection state recovery (socket.io protocol 5, socket.io 4.6+)
//!
//! Enabled with [`SocketIoBuilder::with_connection_state_recovery`](crate::SocketIoBuilder::with_connection_state_recovery).
//! Then, as the official server does:
//! * the CONNECT reply carries a private session id: `{"sid": ..., "pid": ...}`. The client
//!   keeps it, and keeps the last argument of every received event that is a string as its
//!   *offset*;
//! * a client that reconnects sends `{"pid": ..., "offset": ..., ...auth}` in its CONNECT packet.
//!   The namespace asks the [`SessionStore`] to restore that session; when it does, the socket
//!   gets the **old socket id** and the same pid, [`Socket::recovered`](crate::socket::Socket::recovered)
//!   is `true`, and the client sees `socket.recovered === true`. Otherwise the socket is a new
//!   one, with a new pid.
//!
//! What a restored session contains besides its id (rooms, data, missed packets) is up to the
//! application: the store returns it as [`RestoredSession::data`], the connect handler reads
//! it with [`Socket::restored`](crate::socket::Socket::restored), joins the rooms and replays
//! the missed packets (each with its offset as its last argument) in the order and at the time
//! its own delivery requires. Persisting sessions is up to the application too: a disconnect
//! handler gets the reason, and [`DisconnectReason::is_recoverable`](crate::socket::DisconnectReason::is_recoverable)
//! tells which reasons socket.io persists a session for.
//!
//! Middlewares run for a restored socket as for a new one (socket.io's `skipMiddlewares`
//! default skips them; running them keeps authentication checks in force).
use std::{any::Any, fmt, future::Future, pin::Pin, sync::Arc};

use socketioxide_core::{Sid, Value};

/// A future returned by a [`SessionStore`].
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A session found by a [`SessionStore`].
pub struct RestoredSession {
    /// The socket id the session had; the restored socket takes it.
    pub sid: Sid,
    /// Anything the application needs to finish the restore (rooms, data, offset),
    /// read back with [`Socket::restored`](crate::socket::Socket::restored).
    pub data: Box<dyn Any + Send + Sync>,
}

impl fmt::Debug for RestoredSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoredSession")
            .field("sid", &self.sid)
            .finish_non_exhaustive()
    }
}

/// Where sessions are kept between a disconnection and a reconnection.
pub trait SessionStore: Send + Sync + 'static {
    /// A new private session id, for a socket that is not restored. It is a secret shared
    /// with the client only: whoever presents it gets the session.
    fn new_pid(&self) -> String {
        random_pid()
    }

    /// The session claimed by `req`, if it can be restored. `None` gives the client a new
    /// session. Called on the CONNECT packet, before the middlewares.
    fn restore(&self, req: RestoreRequest<'_>) -> BoxFuture<Option<RestoredSession>>;
}

/// A client's claim to a previous session (from its CONNECT packet).
#[derive(Debug, Clone, Copy)]
pub struct RestoreRequest<'a> {
    /// The namespace.
    pub ns: &'a str,
    /// The private session id the client presents.
    pub pid: &'a str,
    /// The last offset the client received (`None` if it received none).
    pub offset: Option<&'a str>,
    /// The whole CONNECT data (the client's `auth` plus `pid` and `offset`), so that a store
    /// can check that the session belongs to whoever authenticates now.
    pub auth: Option<&'a Value>,
}

#[derive(Clone)]
pub(crate) struct Recovery(pub(crate) Arc<dyn SessionStore>);

impl fmt::Debug for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recovery")
    }
}

/// What a socket knows of its session.
#[derive(Default)]
pub(crate) struct SessionState {
    pub(crate) pid: Option<String>,
    pub(crate) restored: Option<Box<dyn Any + Send + Sync>>,
}

/// The recovery fields of a CONNECT packet's data.
#[derive(serde::Deserialize, Default)]
pub(crate) struct RecoveryClaim {
    #[serde(default, deserialize_with = "lenient_string")]
    pub(crate) pid: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub(crate) offset: Option<String>,
}

/// A field that is not a string (a forged packet) counts as absent instead of failing the
/// whole CONNECT data.
fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any {
        S(String),
        #[allow(dead_code)]
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<Any>::deserialize(d)? {
        Some(Any::S(s)) => Some(s),
        _ => None,
    })
}

/// 192 random bits (two engine.io session ids, from the thread-local CSPRNG), URL-safe
/// base64: 32 characters. socket.io's `base64id` has 120 bits.
pub fn random_pid() -> String {
    format!("{}{}", Sid::new(), Sid::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_192_bit_and_distinct() {
        let a = random_pid();
        let b = random_pid();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn claims_read_strings_and_ignore_anything_else() {
        let c: RecoveryClaim =
            serde_json::from_str(r#"{"pid":"p","offset":"1-0","token":"t"}"#).unwrap();
        assert_eq!(c.pid.as_deref(), Some("p"));
        assert_eq!(c.offset.as_deref(), Some("1-0"));
        let c: RecoveryClaim = serde_json::from_str(r#"{"pid":{"$ne":1},"offset":7}"#).unwrap();
        assert!(c.pid.is_none() && c.offset.is_none());
        let c: RecoveryClaim = serde_json::from_str(r#"{}"#).unwrap();
        assert!(c.pid.is_none());
    }
}

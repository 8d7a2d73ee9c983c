//! The client contract as pure functions: a raw socket.io event frame in, a typed
//! [`Command`] or an [`InputError`] out.
//!
//! Payloads are read straight from the frame text without building a JSON tree: the `data`
//! of `publish`/`send` stays a borrowed [`RawValue`] and is written out verbatim, so relaying a
//! message costs one copy of its bytes, whatever its shape.

use std::borrow::Cow;

use serde::{
    Deserialize, Deserializer,
    de::{self, IgnoredAny, SeqAccess, Visitor},
};
use serde_json::value::RawValue;

/// Longest accepted room name, in bytes (UTF-8). Room names are kept in memory per member on
/// every node and travel in every cross-node request, so they are bounded.
pub const MAX_ROOM_BYTES: usize = 128;
/// Longest accepted event name, in bytes.
pub const MAX_EVENT_BYTES: usize = 128;
/// Longest accepted `to` (socket id) or `user` value, in bytes.
pub const MAX_TARGET_BYTES: usize = 256;

/// Event names socket.io reserves: a client cannot receive them as ordinary events.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Why an event was refused. The message is sent back in `{ok:false, error}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("{0} must be a non-empty string")]
    NotAString(&'static str),
    #[error("{what} must be at most {max} bytes")]
    TooLong { what: &'static str, max: usize },
    #[error("{0} must be an object")]
    NotAnObject(&'static str),
    #[error("event \"{0}\" is reserved")]
    ReservedEvent(String),
    #[error("data is required (null is allowed)")]
    MissingData,
    #[error("send needs exactly one of `to` (socket id) or `user`")]
    SendTarget,
    #[error("send to a user needs auth, which is not enabled on this server")]
    UserWithoutAuth,
    #[error("unknown event \"{0}\"")]
    UnknownEvent(String),
    #[error("binary attachments are not supported")]
    Binary,
    #[error("malformed event packet")]
    Malformed,
}

/// Who a `send` goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// One socket, by its socket.io id.
    Socket(Cow<'a, str>),
    /// Every socket of one user (the JWT `sub`).
    User(Cow<'a, str>),
}

/// A valid client request.
#[derive(Debug, Clone)]
pub enum Command<'a> {
    Join(Cow<'a, str>),
    Leave(Cow<'a, str>),
    Publish(Publish<'a>),
    Send {
        target: Target<'a>,
        event: Cow<'a, str>,
        data: &'a RawValue,
    },
    Presence(Cow<'a, str>),
}

/// A `publish` (from a socket or from the HTTP API).
#[derive(Debug, Clone)]
pub struct Publish<'a> {
    /// `None`: every socket.
    pub room: Option<Cow<'a, str>>,
    pub event: Cow<'a, str>,
    pub data: &'a RawValue,
}

/// The kind of a client event, for metrics labels (bounded: unknown names fold into `Unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Join,
    Leave,
    Publish,
    Send,
    Presence,
    Unknown,
}

impl EventKind {
    pub fn of(event: &str) -> Self {
        match event {
            "join" => Self::Join,
            "leave" => Self::Leave,
            "publish" => Self::Publish,
            "send" => Self::Send,
            "presence" => Self::Presence,
            _ => Self::Unknown,
        }
    }
    pub const ALL: [EventKind; 6] = [
        Self::Join,
        Self::Leave,
        Self::Publish,
        Self::Send,
        Self::Presence,
        Self::Unknown,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Publish => "publish",
            Self::Send => "send",
            Self::Presence => "presence",
            Self::Unknown => "unknown",
        }
    }
}

/// Splits a socket.io event frame (`["event", arg0, ...]`) into the event name and its first
/// argument. Later arguments are ignored, like the reference server does.
pub fn split_frame(frame: &str) -> Result<(Cow<'_, str>, Option<&RawValue>), InputError> {
    struct FrameVisitor;
    impl<'de> Visitor<'de> for FrameVisitor {
        type Value = (Cow<'de, str>, Option<&'de RawValue>);
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an event array")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let event: &RawValue = seq
                .next_element()?
                .ok_or_else(|| de::Error::custom("missing event"))?;
            let event = json_str(event).ok_or_else(|| de::Error::custom("event name"))?;
            let arg: Option<&RawValue> = seq.next_element()?;
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok((event, arg))
        }
    }
    let mut de = serde_json::Deserializer::from_str(frame);
    let parts = de
        .deserialize_seq(FrameVisitor)
        .map_err(|_| InputError::Malformed)?;
    de.end().map_err(|_| InputError::Malformed)?;
    Ok(parts)
}

/// Reads a client event into a [`Command`]. `auth_enabled` allows `send {user}`.
pub fn parse_command<'a>(
    event: &str,
    arg: Option<&'a RawValue>,
    auth_enabled: bool,
) -> Result<Command<'a>, InputError> {
    match event {
        "join" => room_arg(arg).map(Command::Join),
        "leave" => room_arg(arg).map(Command::Leave),
        "publish" => parse_publish(arg, "publish payload").map(Command::Publish),
        "send" => {
            let f = fields(arg, "send payload")?;
            let target = match (f.to, f.user) {
                (Some(to), None) => Target::Socket(bounded_str(to, "to", MAX_TARGET_BYTES)?),
                (None, Some(user)) if auth_enabled => {
                    Target::User(bounded_str(user, "user", MAX_TARGET_BYTES)?)
                }
                (None, Some(_)) => return Err(InputError::UserWithoutAuth),
                _ => return Err(InputError::SendTarget),
            };
            Ok(Command::Send {
                target,
                event: event_name(f.event)?,
                data: f.data.ok_or(InputError::MissingData)?,
            })
        }
        "presence" => {
            let f = fields(arg, "presence payload")?;
            Ok(Command::Presence(room(f.room)?))
        }
        other => Err(InputError::UnknownEvent(truncate(other, MAX_EVENT_BYTES))),
    }
}

/// Reads a `publish` payload (`{room?, event, data}`); shared by the socket event and the
/// HTTP API. `what` names the payload in errors.
pub fn parse_publish<'a>(
    arg: Option<&'a RawValue>,
    what: &'static str,
) -> Result<Publish<'a>, InputError> {
    let f = fields(arg, what)?;
    let room = match f.room {
        // Only an absent `room` means every socket: `room: null` is a mistake.
        None => None,
        Some(r) => Some(room(Some(r))?),
    };
    Ok(Publish {
        room,
        event: event_name(f.event)?,
        data: f.data.ok_or(InputError::MissingData)?,
    })
}

/// The known fields of a payload object, each kept raw. A field that is present (even as
/// `null`) is `Some`, so `null` can be told apart from absent.
#[derive(Deserialize, Default)]
struct Fields<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    to: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    user: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn fields<'a>(arg: Option<&'a RawValue>, what: &'static str) -> Result<Fields<'a>, InputError> {
    let arg = arg.ok_or(InputError::NotAnObject(what))?;
    // serde would also accept a JSON array for a struct: only an object is valid here.
    if !arg.get().trim_start().starts_with('{') {
        return Err(InputError::NotAnObject(what));
    }
    serde_json::from_str(arg.get()).map_err(|_| InputError::NotAnObject(what))
}

fn room_arg(arg: Option<&RawValue>) -> Result<Cow<'_, str>, InputError> {
    room(arg)
}

fn room(v: Option<&RawValue>) -> Result<Cow<'_, str>, InputError> {
    bounded_str(
        v.ok_or(InputError::NotAString("room"))?,
        "room",
        MAX_ROOM_BYTES,
    )
}

fn event_name(v: Option<&RawValue>) -> Result<Cow<'_, str>, InputError> {
    let ev = bounded_str(
        v.ok_or(InputError::NotAString("event"))?,
        "event",
        MAX_EVENT_BYTES,
    )?;
    if RESERVED_EVENTS.contains(&ev.as_ref()) {
        return Err(InputError::ReservedEvent(ev.into_owned()));
    }
    Ok(ev)
}

fn bounded_str<'a>(
    v: &'a RawValue,
    what: &'static str,
    max: usize,
) -> Result<Cow<'a, str>, InputError> {
    let s = json_str(v).ok_or(InputError::NotAString(what))?;
    if s.is_empty() {
        return Err(InputError::NotAString(what));
    }
    if s.len() > max {
        return Err(InputError::TooLong { what, max });
    }
    Ok(s)
}

/// A JSON string value, borrowed from the frame when it has no escapes.
pub fn json_str(v: &RawValue) -> Option<Cow<'_, str>> {
    let text = v.get().trim();
    if !text.starts_with('"') {
        return None;
    }
    if !text.contains('\\') {
        // Valid JSON (RawValue guarantees it) without escapes: the content is the text
        // between the quotes.
        return Some(Cow::Borrowed(&text[1..text.len() - 1]));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a whole frame the way the socket handler does.
    fn cmd(frame: &str) -> Result<Command<'_>, InputError> {
        let (event, arg) = split_frame(frame)?;
        parse_command(&event, arg, false)
    }
    fn cmd_auth(frame: &str) -> Result<Command<'_>, InputError> {
        let (event, arg) = split_frame(frame)?;
        parse_command(&event, arg, true)
    }
    fn err(frame: &str) -> String {
        cmd(frame).unwrap_err().to_string()
    }

    #[test]
    fn frames_split_into_event_and_first_argument() {
        let (ev, arg) = split_frame(r#"["join","a",{"x":1},3]"#).unwrap();
        assert_eq!(ev, "join");
        assert_eq!(arg.unwrap().get(), r#""a""#);
        let (ev, arg) = split_frame(r#"["presence"]"#).unwrap();
        assert_eq!(ev, "presence");
        assert!(arg.is_none());
        let (ev, _) = split_frame(r#"["caf\u00e9",1]"#).unwrap();
        assert_eq!(ev, "café");
        for bad in ["", "[]", "{}", "[1]", r#"["a""#, r#"["a"] x"#, "null"] {
            assert_eq!(
                split_frame(bad).unwrap_err(),
                InputError::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn join_and_leave_take_a_room_string() {
        assert!(matches!(cmd(r#"["join","lobby"]"#), Ok(Command::Join(r)) if r == "lobby"));
        assert!(matches!(cmd(r#"["leave","lobby",{}]"#), Ok(Command::Leave(r)) if r == "lobby"));
        assert_eq!(err(r#"["join"]"#), "room must be a non-empty string");
        assert_eq!(err(r#"["join",""]"#), "room must be a non-empty string");
        assert_eq!(err(r#"["join",null]"#), "room must be a non-empty string");
        assert_eq!(err(r#"["join",42]"#), "room must be a non-empty string");
        assert_eq!(err(r#"["join",["a"]]"#), "room must be a non-empty string");
        assert_eq!(
            err(r#"["leave",{"room":"a"}]"#),
            "room must be a non-empty string"
        );
    }

    #[test]
    fn room_names_are_bounded_in_bytes() {
        let ok = format!(r#"["join","{}"]"#, "r".repeat(MAX_ROOM_BYTES));
        assert!(cmd(&ok).is_ok());
        let long = format!(r#"["join","{}"]"#, "r".repeat(MAX_ROOM_BYTES + 1));
        assert_eq!(err(&long), "room must be at most 128 bytes");
        // 43 three-byte characters = 129 bytes, though only 43 characters
        let wide = format!(r#"["join","{}"]"#, "€".repeat(43));
        assert_eq!(err(&wide), "room must be at most 128 bytes");
    }

    #[test]
    fn escaped_strings_are_decoded() {
        match cmd(r#"["join","a\"b\u00e9"]"#).unwrap() {
            Command::Join(r) => assert_eq!(r, "a\"bé"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publish_validates_room_event_and_data() {
        match cmd(r#"["publish",{"room":"r1","event":"chat","data":{"t":1,"p":"x"}}]"#).unwrap() {
            Command::Publish(p) => {
                assert_eq!(p.room.as_deref(), Some("r1"));
                assert_eq!(p.event, "chat");
                assert_eq!(p.data.get(), r#"{"t":1,"p":"x"}"#);
            }
            other => panic!("{other:?}"),
        }
        match cmd(r#"["publish",{"event":"e","data":null}]"#).unwrap() {
            Command::Publish(p) => {
                assert!(p.room.is_none(), "absent room = every socket");
                assert_eq!(p.data.get(), "null", "null data is allowed");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err(r#"["publish",{"room":null,"event":"e","data":1}]"#),
            "room must be a non-empty string"
        );
        assert_eq!(
            err(r#"["publish",{"event":"e"}]"#),
            "data is required (null is allowed)"
        );
        assert_eq!(
            err(r#"["publish",{"data":1}]"#),
            "event must be a non-empty string"
        );
        assert_eq!(
            err(r#"["publish",{"event":7,"data":1}]"#),
            "event must be a non-empty string"
        );
        assert_eq!(
            err(r#"["publish",{"event":"","data":1}]"#),
            "event must be a non-empty string"
        );
        assert_eq!(err(r#"["publish"]"#), "publish payload must be an object");
        assert_eq!(
            err(r#"["publish",null]"#),
            "publish payload must be an object"
        );
        assert_eq!(
            err(r#"["publish",["e",1]]"#),
            "publish payload must be an object"
        );
        assert_eq!(
            err(r#"["publish","e"]"#),
            "publish payload must be an object"
        );
        assert_eq!(
            err(r#"["publish",{"event":"e","data":1,"data":2}]"#),
            "publish payload must be an object",
            "duplicate keys are refused rather than guessed"
        );
        let long_event = format!(r#"["publish",{{"event":"{}","data":1}}]"#, "e".repeat(129));
        assert_eq!(err(&long_event), "event must be at most 128 bytes");
    }

    #[test]
    fn reserved_event_names_are_refused() {
        for name in RESERVED_EVENTS {
            let frame = format!(r#"["publish",{{"event":"{name}","data":1}}]"#);
            assert_eq!(err(&frame), format!("event \"{name}\" is reserved"));
            let frame = format!(r#"["send",{{"to":"x","event":"{name}","data":1}}]"#);
            assert_eq!(err(&frame), format!("event \"{name}\" is reserved"));
        }
        // only exact names are reserved
        assert!(cmd(r#"["publish",{"event":"connected","data":1}]"#).is_ok());
    }

    #[test]
    fn send_to_a_socket_or_a_user() {
        match cmd(r#"["send",{"to":"AbC-12_xyz","event":"dm","data":[1,2]}]"#).unwrap() {
            Command::Send {
                target,
                event,
                data,
            } => {
                assert_eq!(target, Target::Socket("AbC-12_xyz".into()));
                assert_eq!(event, "dm");
                assert_eq!(data.get(), "[1,2]");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err(r#"["send",{"user":"u1","event":"dm","data":1}]"#),
            "send to a user needs auth, which is not enabled on this server"
        );
        match cmd_auth(r#"["send",{"user":"u1","event":"dm","data":1}]"#).unwrap() {
            Command::Send { target, .. } => assert_eq!(target, Target::User("u1".into())),
            other => panic!("{other:?}"),
        }
        let both = r#"["send",{"to":"a","user":"u1","event":"dm","data":1}]"#;
        assert_eq!(cmd_auth(both).unwrap_err(), InputError::SendTarget);
        assert_eq!(
            err(r#"["send",{"event":"dm","data":1}]"#),
            InputError::SendTarget.to_string()
        );
        assert_eq!(
            err(r#"["send",{"to":"","event":"dm","data":1}]"#),
            "to must be a non-empty string"
        );
        assert_eq!(
            err(r#"["send",{"to":5,"event":"dm","data":1}]"#),
            "to must be a non-empty string"
        );
        assert_eq!(
            err(r#"["send",{"to":"a","event":"dm"}]"#),
            "data is required (null is allowed)"
        );
        assert_eq!(err(r#"["send","a"]"#), "send payload must be an object");
    }

    #[test]
    fn presence_takes_a_room() {
        assert!(
            matches!(cmd(r#"["presence",{"room":"r"}]"#), Ok(Command::Presence(r)) if r == "r")
        );
        assert_eq!(err(r#"["presence",{}]"#), "room must be a non-empty string");
        assert_eq!(
            err(r#"["presence","r"]"#),
            "presence payload must be an object"
        );
    }

    #[test]
    fn unknown_events_are_named_in_the_error() {
        assert_eq!(err(r#"["bench",{"x":1}]"#), "unknown event \"bench\"");
        let long = format!(r#"["{}",1]"#, "é".repeat(100));
        let msg = err(&long);
        assert!(msg.len() < 150, "the echoed name is truncated: {msg}");
    }

    #[test]
    fn event_kinds_are_bounded() {
        assert_eq!(EventKind::of("publish"), EventKind::Publish);
        assert_eq!(EventKind::of("anything-else"), EventKind::Unknown);
        for k in EventKind::ALL {
            if k != EventKind::Unknown {
                assert_eq!(EventKind::of(k.as_str()), k);
            }
        }
    }

    #[test]
    fn http_publish_payload_uses_the_same_rules() {
        let body: Box<RawValue> =
            serde_json::from_str(r#"{"room":"r","event":"e","data":{"a":1}}"#).unwrap();
        let p = parse_publish(Some(&body), "body").unwrap();
        assert_eq!(p.room.as_deref(), Some("r"));
        assert_eq!(p.data.get(), r#"{"a":1}"#);
        let body: Box<RawValue> = serde_json::from_str(r#"[1]"#).unwrap();
        assert_eq!(
            parse_publish(Some(&body), "body").unwrap_err().to_string(),
            "body must be an object"
        );
    }
}

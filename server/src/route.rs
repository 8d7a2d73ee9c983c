//! Private-message routing: a `send {to}` to a socket on another node goes to that node only.
//!
//! Without routing, a private message is a broadcast to the socket's room `sid:<id>`: every
//! node receives it from Redis, decodes it and finds the room empty but one. With N nodes that
//! is N - 1 Redis deliveries and N - 1 nodes' work per message, for one receiver.
//!
//! The socket id names its node. Each node picks a random [`TAG_LEN`]-character tag at start;
//! the patched engineioxide starts every engine.io session id with it (`sid_prefix`), and a
//! socket's id is its session's id. The node's adapter id ([`socketioxide_core::Uid`], which
//! names its own request channel in socketioxide-redis, `realtime-request#/#<uid>#`) is the
//! tag followed by a fixed filler ([`uid_of_tag`]). So any node reads the target node's
//! adapter id off the socket id, with no directory and no lookup, and publishes the message on
//! that node's channel (socketioxide's `BroadcastOperators::on_server`, patched in). The
//! message still names the room `sid:<id>`, so the receiving node delivers it exactly as a
//! broadcast would. On a Redis Cluster the node's request channel is a sharded channel like
//! the others (SPUBLISH to its slot's master).
//!
//! When the named node's channel has no subscriber (PUBLISH answers 0: the node is gone, or
//! the id was made by a node that runs without routing, e.g. an older version during a
//! rolling upgrade), the sender falls back to the broadcast, so a message never gets lost
//! where it would have been delivered before. A tag that names the sender itself means the
//! socket is gone (ids never move between nodes without recovery): nothing is sent.
//!
//! Ids are only stable on their node without connection state recovery: a restored socket
//! keeps its old id on a new node. With recovery on, every message goes through the recovery
//! log (one ordered stream that every node follows, `recovery.rs`), and routing is not used.
//!
//! Cost: the socket id keeps 16 - [`TAG_LEN`] = 10 random characters (60 bits); two nodes
//! share a tag with probability about n² / 2^37 (n nodes; 5e-10 for 8 nodes). Each node starts
//! with a new tag, so a collision would last until one of the two restarts.

use std::str::FromStr;

use socketioxide_core::{Sid, Uid};

/// Characters of a socket id that name its node.
pub const TAG_LEN: usize = 6;
/// What follows the tag in a node's adapter id (16 characters in all).
const UID_FILL: &str = "0000000000";

/// A new random node tag (base64url).
pub fn new_tag() -> String {
    Sid::new().as_str()[..TAG_LEN].to_string()
}

/// The adapter id of the node with `tag`.
pub fn uid_of_tag(tag: &str) -> Option<Uid> {
    if tag.len() != TAG_LEN {
        return None;
    }
    Uid::from_str(&format!("{tag}{UID_FILL}")).ok()
}

/// The adapter id of the node that made socket id `id`; `None` for anything that is not a
/// socket id.
pub fn node_of(id: &str) -> Option<Uid> {
    let sid = Sid::from_str(id).ok()?;
    uid_of_tag(&sid.as_str()[..TAG_LEN])
}

/// Whether `chan` is one node's own request channel of socketioxide-redis
/// (`<prefix>-request#<ns>#<uid>#`), as opposed to the shared one (`<prefix>-request#<ns>#`)
/// or a response channel. A namespace cannot contain `#`.
pub fn is_node_request_channel(prefix: &str, chan: &str) -> bool {
    chan.strip_prefix(prefix)
        .and_then(|c| c.strip_prefix("-request#"))
        // `<ns>#<uid>#`, without allocating: this runs for every PUBLISH.
        .and_then(|rest| rest.strip_suffix('#'))
        .and_then(|rest| rest.split_once('#'))
        .is_some_and(|(_ns, uid)| !uid.is_empty() && !uid.contains('#'))
}

/// The shared request channel of a node's own request channel (`<prefix>-request#<ns>#` of
/// `<prefix>-request#<ns>#<uid>#`).
pub fn shared_request_channel(prefix: &str, chan: &str) -> Option<String> {
    if !is_node_request_channel(prefix, chan) {
        return None;
    }
    let body = chan.strip_suffix('#')?;
    let cut = body.rfind('#')?;
    Some(chan[..=cut].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_id_names_the_node_whose_tag_it_starts_with() {
        let tag = new_tag();
        assert_eq!(tag.len(), TAG_LEN);
        let uid = uid_of_tag(&tag).unwrap();
        assert!(uid.to_string().starts_with(&tag));
        let id = format!("{tag}aBcD_-9876");
        assert_eq!(node_of(&id), Some(uid));
        let other = format!("{}aBcD_-9876", new_tag());
        assert_ne!(node_of(&other), Some(uid));
        // two tags are different nodes
        assert_ne!(uid_of_tag("AAAAAA"), uid_of_tag("AAAAAB"));
    }

    #[test]
    fn anything_but_a_socket_id_names_no_node() {
        for bad in [
            "",
            "short",
            "AAAAAAAAAAAAAAAAA",
            "AAAAAA/AAAAAAAAA",
            "AAAAAA AAAAAAAAA",
        ] {
            assert_eq!(node_of(bad), None, "{bad:?}");
        }
        assert_eq!(uid_of_tag("AAAAA"), None);
        assert_eq!(uid_of_tag("AA/AAA"), None);
    }

    #[test]
    fn tags_are_random() {
        let tags: std::collections::HashSet<String> = (0..100).map(|_| new_tag()).collect();
        assert!(tags.len() > 95);
    }

    #[test]
    fn only_a_nodes_own_request_channel_counts() {
        let uid = uid_of_tag("AbCdEf").unwrap();
        assert!(is_node_request_channel(
            "realtime",
            &format!("realtime-request#/#{uid}#")
        ));
        assert!(!is_node_request_channel("realtime", "realtime-request#/#"));
        assert!(!is_node_request_channel(
            "realtime",
            &format!("realtime-response#/#{uid}#")
        ));
        assert!(!is_node_request_channel(
            "other",
            &format!("realtime-request#/#{uid}#")
        ));
        assert!(!is_node_request_channel(
            "realtime",
            "realtime-request#/#x#y#"
        ));
    }
}

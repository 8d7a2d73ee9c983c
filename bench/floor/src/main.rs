//! rt-floor: a deliberately minimal Socket.IO broadcaster, the "floor" realtime-server is measured
//! against (`bench/floor.sh`, issue 16). It speaks exactly what rtbench (the kit's load generator)
//! needs and nothing more:
//!
//! * HTTP/1.1 upgrade on `/socket.io/?EIO=4&transport=websocket` (no polling, no TLS, no deflate);
//! * Engine.IO v4 open packet `0{"sid":..}`, server pings `2` every 25 s (pongs `3` are ignored,
//!   there is no ping timeout), close `1`;
//! * Socket.IO v5 on `/` only: `40` → `40{"sid":ID}` then `42["hello",{"node":NAME,"id":ID}]`;
//!   `42["publish",{"event":E,"data":D}]` (optionally with an ack id, answered `43N[{"ok":true}]`)
//!   → every connected socket on every node, sender included, gets `42[E,D]`; `41` disconnects.
//!   Everything else is ignored (malformed packets are answered with an error ack when they carry
//!   an ack id). No rooms, no `send`, no `presence`.
//!
//! The cost model is the point: one broadcast is encoded ONCE into a complete WebSocket frame
//! (header + `42[E,D]`, the event and data copied verbatim from the publisher's packet) and that
//! same buffer is written to every receiver: one `write()` per receiver when its socket takes it,
//! otherwise the rest goes to a per-connection queue that a flush task writes with `writev` when
//! the socket is writable again. Frames that queue up for a shard while it writes are written
//! together, one `writev` per receiver for up to `BATCH` frames (so under load one syscall carries
//! many frames, as in any server; at a low rate every frame is one `write()`).
//! Sockets are kept in `SHARDS` shards, each served by its own task, so a broadcast's writes are
//! spread over the runtime's worker threads (tokio's default: one per core) and stay in order.
//!
//! Several nodes (env `REDIS_URL` set): the node that receives a `publish` PUBLISHes the encoded
//! Socket.IO packet once to the Redis channel `rt-floor` (one pipelined connection), then writes
//! the frame to its own sockets; every node SUBSCRIBEs to the channel, skips its own messages and
//! writes the frame to its sockets. That is the same topology as realtime-server's Redis adapter
//! (publish, subscribe, skip own), with the cheapest possible encoding.
//!
//! Environment (as `run-anchor.sh` sets it): `PORT` (default 3000), `NAME` (default `floor`),
//! `REDIS_URL` (`redis://HOST:PORT`, optional), `BIND` (default 127.0.0.1).

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SHARDS: usize = 8;
const PING_INTERVAL: Duration = Duration::from_secs(25);
const MAX_HANDSHAKE: usize = 8 * 1024;
const MAX_FRAME: usize = 1_000_000;
const CHANNEL: &str = "rt-floor";

type Frame = Arc<[u8]>;

// ---------------------------------------------------------------- pure protocol helpers

/// SHA-1 (FIPS 180-1), only for the WebSocket accept key.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, c) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn accept_key(key: &str) -> String {
    base64(&sha1(
        format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
    ))
}

/// The `Sec-WebSocket-Key` of a complete upgrade request, if the request line asks for the
/// Engine.IO websocket transport.
fn parse_upgrade(req: &str) -> Result<String, &'static str> {
    let mut lines = req.split("\r\n");
    let first = lines.next().unwrap_or("");
    let path = first
        .strip_prefix("GET ")
        .and_then(|r| r.split(' ').next())
        .ok_or("not a GET")?;
    if !path.starts_with("/socket.io/")
        || !path.contains("EIO=4")
        || !path.contains("transport=websocket")
    {
        return Err("only /socket.io/?EIO=4&transport=websocket");
    }
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("sec-websocket-key") {
                return Ok(v.trim().to_string());
            }
        }
    }
    Err("no Sec-WebSocket-Key")
}

/// A complete server → client WebSocket frame (FIN, unmasked) around `payload`.
fn ws_frame(opcode: u8, payload: &[u8]) -> Frame {
    let n = payload.len();
    let mut f = Vec::with_capacity(n + 10);
    f.push(0x80 | opcode);
    if n < 126 {
        f.push(n as u8);
    } else if n < 65536 {
        f.push(126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    f.into()
}

#[derive(Debug, PartialEq)]
enum WsIn {
    /// opcode and unmasked payload of one complete frame
    Frame(u8, Vec<u8>),
    /// more bytes needed
    Partial,
    Bad(&'static str),
}

/// Parses one client → server frame from the start of `buf`; returns it and the bytes it used.
fn parse_ws(buf: &[u8]) -> (WsIn, usize) {
    if buf.len() < 2 {
        return (WsIn::Partial, 0);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x80 == 0 || b0 & 0x0f == 0 {
        return (WsIn::Bad("fragmented frames are not supported"), 0);
    }
    if b1 & 0x80 == 0 {
        return (WsIn::Bad("client frames must be masked"), 0);
    }
    let (len, mut at) = match b1 & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (
            u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return (WsIn::Partial, 0),
        n => (n as usize, 2),
    };
    if len > MAX_FRAME {
        return (WsIn::Bad("frame too large"), 0);
    }
    if buf.len() < at + 4 + len {
        return (WsIn::Partial, 0);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let payload = buf[at..at + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i & 3])
        .collect();
    (WsIn::Frame(b0 & 0x0f, payload), at + len)
}

#[derive(Debug, PartialEq)]
enum SioIn {
    Pong,
    Close,
    Connect,
    Disconnect,
    /// `42[...]`: ack id and the Socket.IO packet to broadcast (`42[E,D]`), or why it was refused
    Publish(Option<u64>, Result<String, &'static str>),
    Other(Option<u64>),
}

/// One Engine.IO / Socket.IO packet from a client (text frame payload).
fn parse_sio(p: &str) -> SioIn {
    match p.as_bytes().first() {
        Some(b'3') => SioIn::Pong,
        Some(b'1') => SioIn::Close,
        Some(b'4') => match p.as_bytes().get(1) {
            Some(b'0') if p.len() == 2 || p.as_bytes()[2] == b'{' => SioIn::Connect,
            Some(b'1') if p.len() == 2 => SioIn::Disconnect,
            Some(b'2') => {
                let rest = &p[2..];
                let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                let ack = rest[..digits].parse().ok();
                let body = &rest[digits..];
                match serde_json::from_str::<Vec<&RawValue>>(body) {
                    Ok(a) if a.first().map(|e| e.get()) == Some("\"publish\"") => {
                        SioIn::Publish(ack, publish_packet(a.get(1).copied()))
                    }
                    Ok(_) => SioIn::Other(ack),
                    Err(_) => SioIn::Publish(ack, Err("malformed packet")),
                }
            }
            _ => SioIn::Other(None),
        },
        _ => SioIn::Other(None),
    }
}

const RESERVED: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// `{"event": E, "data": D}` (no room) → `42[E,D]`, E and D copied verbatim.
fn publish_packet(arg: Option<&RawValue>) -> Result<String, &'static str> {
    let arg = arg.ok_or("publish needs a payload")?;
    let obj: HashMap<String, &RawValue> =
        serde_json::from_str(arg.get()).map_err(|_| "payload must be an object")?;
    if obj.contains_key("room") {
        return Err("rooms are not supported by the floor");
    }
    let ev = obj.get("event").ok_or("event missing")?;
    let name: String = serde_json::from_str(ev.get()).map_err(|_| "event must be a string")?;
    if name.is_empty() || RESERVED.contains(&name.as_str()) {
        return Err("event must be a non-empty, unreserved name");
    }
    let data = obj.get("data").ok_or("data missing")?;
    Ok(format!("42[{},{}]", ev.get(), data.get()))
}

/// RESP values a subscriber connection receives (only what Redis pushes here); the contents of
/// integers, status lines and nils are parsed only to be skipped.
#[allow(dead_code)]
#[derive(Debug, PartialEq)]
enum Resp {
    Bulk(Vec<u8>),
    Int(i64),
    Simple(String),
    Array(Vec<Resp>),
    Nil,
}

/// Parses one RESP2 value from the start of `buf`: Some((value, bytes used)), None if incomplete.
fn parse_resp(buf: &[u8]) -> Result<Option<(Resp, usize)>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..eol]).map_err(|e| e.to_string())?;
    let at = eol + 2;
    match buf.first() {
        Some(b'+') => Ok(Some((Resp::Simple(line.into()), at))),
        Some(b'-') => Err(format!("redis error: {line}")),
        Some(b':') => Ok(Some((Resp::Int(line.parse().map_err(|_| "bad int")?), at))),
        Some(b'$') => {
            let n: i64 = line.parse().map_err(|_| "bad bulk length")?;
            if n < 0 {
                return Ok(Some((Resp::Nil, at)));
            }
            let n = n as usize;
            if buf.len() < at + n + 2 {
                return Ok(None);
            }
            Ok(Some((Resp::Bulk(buf[at..at + n].to_vec()), at + n + 2)))
        }
        Some(b'*') => {
            let n: i64 = line.parse().map_err(|_| "bad array length")?;
            let mut items = Vec::new();
            let mut used = at;
            for _ in 0..n.max(0) {
                match parse_resp(&buf[used..])? {
                    Some((v, u)) => {
                        items.push(v);
                        used += u;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::Array(items), used)))
        }
        _ => Err(format!("unexpected RESP byte {:?}", buf[0] as char)),
    }
}

fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

// ---------------------------------------------------------------- connections and broadcast

struct Out {
    /// frames (and how much of the first one is written) waiting for the socket
    queue: VecDeque<(Frame, usize)>,
    flushing: bool,
    closed: bool,
}

struct Conn {
    id: u64,
    stream: TcpStream,
    out: Mutex<Out>,
}

impl Conn {
    /// Writes `frames` (their `slices`, `total` bytes) with one `writev` if nothing is queued and
    /// the socket takes them; otherwise queues what is left.
    fn send_batch(self: &Arc<Self>, frames: &[Frame], slices: &[IoSlice], total: usize) {
        let mut o = self.out.lock().unwrap();
        if o.closed {
            return;
        }
        if o.flushing {
            o.queue.extend(frames.iter().map(|f| (f.clone(), 0)));
            return;
        }
        let mut written = match self.stream.try_write_vectored(slices) {
            Ok(n) if n == total => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                o.closed = true;
                return;
            }
        };
        for f in frames {
            if written >= f.len() {
                written -= f.len();
            } else {
                o.queue.push_back((f.clone(), written));
                written = 0;
            }
        }
        o.flushing = true;
        tokio::spawn(flush(self.clone()));
    }

    /// Writes `f` now if nothing is queued and the socket takes it; otherwise queues (the rest).
    fn send(self: &Arc<Self>, f: &Frame) {
        let mut o = self.out.lock().unwrap();
        if o.closed {
            return;
        }
        if o.flushing {
            o.queue.push_back((f.clone(), 0));
            return;
        }
        let written = match self.stream.try_write(f) {
            Ok(n) if n == f.len() => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                o.closed = true;
                return;
            }
        };
        o.queue.push_back((f.clone(), written));
        o.flushing = true;
        tokio::spawn(flush(self.clone()));
    }
}

async fn flush(c: Arc<Conn>) {
    loop {
        if c.stream.writable().await.is_err() {
            break;
        }
        let mut o = c.out.lock().unwrap();
        loop {
            let slices: Vec<IoSlice> = o
                .queue
                .iter()
                .take(64)
                .map(|(f, off)| IoSlice::new(&f[*off..]))
                .collect();
            if slices.is_empty() {
                o.flushing = false;
                return;
            }
            match c.stream.try_write_vectored(&slices) {
                Ok(mut n) => {
                    while n > 0 {
                        let (f, off) = o.queue.front_mut().unwrap();
                        let left = f.len() - *off;
                        if n >= left {
                            n -= left;
                            o.queue.pop_front();
                        } else {
                            *off += n;
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    o.closed = true;
                    o.queue.clear();
                    o.flushing = false;
                    return;
                }
            }
        }
    }
    let mut o = c.out.lock().unwrap();
    o.closed = true;
    o.queue.clear();
    o.flushing = false;
}

struct Node {
    name: String,
    shards: Vec<Mutex<HashMap<u64, Arc<Conn>>>>,
    shard_tx: Vec<mpsc::UnboundedSender<Frame>>,
    redis_tx: Option<mpsc::UnboundedSender<Vec<u8>>>,
    next_id: AtomicU64,
}

impl Node {
    fn shard(&self, id: u64) -> &Mutex<HashMap<u64, Arc<Conn>>> {
        &self.shards[id as usize % SHARDS]
    }

    /// The frame goes to every shard task; each writes it to its sockets.
    fn broadcast_local(&self, f: Frame) {
        for tx in &self.shard_tx {
            let _ = tx.send(f.clone());
        }
    }
}

/// Most frames one shard writes to a socket with one `writev` (frames that queued up meanwhile).
const BATCH: usize = 64;

async fn shard_task(node: Arc<Node>, k: usize, mut rx: mpsc::UnboundedReceiver<Frame>) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(f) = rx.recv().await {
        batch.clear();
        batch.push(f);
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let slices: Vec<IoSlice> = batch.iter().map(|f| IoSlice::new(f)).collect();
        let total = batch.iter().map(|f| f.len()).sum();
        let conns = node.shards[k].lock().unwrap();
        for c in conns.values() {
            c.send_batch(&batch, &slices, total);
        }
    }
}

async fn ping_task(node: Arc<Node>) {
    let ping = ws_frame(1, b"2");
    let mut t = tokio::time::interval(PING_INTERVAL);
    t.tick().await;
    loop {
        t.tick().await;
        node.broadcast_local(ping.clone());
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
}

/// Reads what the socket has into `acc` (no await: the scratch buffer is not part of the task).
fn read_some(s: &TcpStream, acc: &mut Vec<u8>) -> io::Result<usize> {
    SCRATCH.with(|b| {
        let mut b = b.borrow_mut();
        let n = s.try_read(&mut b)?;
        acc.extend_from_slice(&b[..n]);
        Ok(n)
    })
}

async fn handshake(s: &mut TcpStream) -> Result<(), String> {
    let mut req = Vec::with_capacity(512);
    loop {
        let n = s.read_buf(&mut req).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("eof in handshake".into());
        }
        if req.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if req.len() > MAX_HANDSHAKE {
            return Err("request too large".into());
        }
    }
    let req = String::from_utf8_lossy(&req);
    match parse_upgrade(&req) {
        Ok(key) => {
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_key(&key)
            );
            s.write_all(resp.as_bytes())
                .await
                .map_err(|e| e.to_string())
        }
        Err(why) => {
            let _ = s
                .write_all(format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}", why.len()).as_bytes())
                .await;
            Err(why.into())
        }
    }
}

async fn connection(node: Arc<Node>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    if handshake(&mut stream).await.is_err() {
        return;
    }
    let id = node.next_id.fetch_add(1, Relaxed);
    let sid = format!("{}-{id:x}", node.name);
    let c = Arc::new(Conn {
        id,
        stream,
        out: Mutex::new(Out {
            queue: VecDeque::new(),
            flushing: false,
            closed: false,
        }),
    });
    let open = format!(
        "0{{\"sid\":\"e{sid}\",\"upgrades\":[],\"pingInterval\":{},\"pingTimeout\":20000,\"maxPayload\":{MAX_FRAME}}}",
        PING_INTERVAL.as_millis()
    );
    c.send(&ws_frame(1, open.as_bytes()));
    let mut registered = false;
    let mut acc = Vec::new();
    'conn: loop {
        if c.stream.readable().await.is_err() {
            break;
        }
        match read_some(&c.stream, &mut acc) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => break,
        }
        let mut used = 0;
        loop {
            let (frame, n) = parse_ws(&acc[used..]);
            used += n;
            match frame {
                WsIn::Partial => break,
                WsIn::Bad(_) => break 'conn,
                WsIn::Frame(8, _) => {
                    c.send(&ws_frame(8, b""));
                    break 'conn;
                }
                WsIn::Frame(9, p) => c.send(&ws_frame(10, &p)),
                WsIn::Frame(1, p) => {
                    let Ok(p) = std::str::from_utf8(&p) else {
                        break 'conn;
                    };
                    match parse_sio(p) {
                        SioIn::Pong => {}
                        SioIn::Close | SioIn::Disconnect => break 'conn,
                        SioIn::Connect if !registered => {
                            c.send(&ws_frame(1, format!("40{{\"sid\":\"{sid}\"}}").as_bytes()));
                            let hello = format!(
                                "42[\"hello\",{{\"node\":{:?},\"id\":\"{sid}\"}}]",
                                node.name
                            );
                            c.send(&ws_frame(1, hello.as_bytes()));
                            node.shard(id).lock().unwrap().insert(id, c.clone());
                            registered = true;
                        }
                        SioIn::Connect => {}
                        SioIn::Publish(ack, Ok(packet)) if registered => {
                            if let Some(tx) = &node.redis_tx {
                                let mut m = Vec::with_capacity(node.name.len() + 1 + packet.len());
                                m.extend_from_slice(node.name.as_bytes());
                                m.push(b'\n');
                                m.extend_from_slice(packet.as_bytes());
                                let _ =
                                    tx.send(resp_command(&[b"PUBLISH", CHANNEL.as_bytes(), &m]));
                            }
                            node.broadcast_local(ws_frame(1, packet.as_bytes()));
                            if let Some(a) = ack {
                                c.send(&ws_frame(1, format!("43{a}[{{\"ok\":true}}]").as_bytes()));
                            }
                        }
                        SioIn::Publish(Some(a), Err(e)) => {
                            c.send(&ws_frame(
                                1,
                                format!("43{a}[{{\"ok\":false,\"error\":{e:?}}}]").as_bytes(),
                            ));
                        }
                        SioIn::Other(Some(a)) => {
                            c.send(&ws_frame(1, format!("43{a}[{{\"ok\":false,\"error\":\"not supported by the floor\"}}]").as_bytes()));
                        }
                        _ => {}
                    }
                }
                WsIn::Frame(..) => {}
            }
        }
        acc.drain(..used);
        if acc.is_empty() && acc.capacity() > 4096 {
            acc = Vec::new();
        }
    }
    if registered {
        node.shard(id).lock().unwrap().remove(&c.id);
    }
    let mut o = c.out.lock().unwrap();
    o.closed = true;
    o.queue.clear();
}

// ---------------------------------------------------------------- Redis

fn redis_addr(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or("REDIS_URL must be redis://HOST:PORT")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    Ok(if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:6379")
    })
}

/// One connection for PUBLISH, pipelined: queued commands are written together, replies discarded.
async fn redis_publisher(addr: String, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let s = TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("redis {addr}: {e}"));
    let _ = s.set_nodelay(true);
    let (mut r, mut w) = s.into_split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        eprintln!("rt-floor: redis publisher connection closed");
        std::process::exit(1);
    });
    let mut batch = Vec::new();
    while let Some(cmd) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&cmd);
        while let Ok(more) = rx.try_recv() {
            batch.extend_from_slice(&more);
        }
        if w.write_all(&batch).await.is_err() {
            break;
        }
    }
}

async fn redis_subscriber(node: Arc<Node>, addr: String, ready: tokio::sync::oneshot::Sender<()>) {
    let mut s = TcpStream::connect(&addr)
        .await
        .unwrap_or_else(|e| panic!("redis {addr}: {e}"));
    s.write_all(&resp_command(&[b"SUBSCRIBE", CHANNEL.as_bytes()]))
        .await
        .expect("subscribe");
    let mut ready = Some(ready);
    let mut acc: Vec<u8> = Vec::new();
    loop {
        match s.read_buf(&mut acc).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut used = 0;
        loop {
            match parse_resp(&acc[used..]) {
                Ok(Some((v, n))) => {
                    used += n;
                    if let Resp::Array(items) = v {
                        match items.as_slice() {
                            [Resp::Bulk(kind), _, Resp::Bulk(payload)] if kind == b"message" => {
                                // `ORIGIN\nPACKET`: our own messages were delivered locally already
                                if let Some(i) = payload.iter().position(|b| *b == b'\n') {
                                    if payload[..i] != *node.name.as_bytes() {
                                        node.broadcast_local(ws_frame(1, &payload[i + 1..]));
                                    }
                                }
                            }
                            [Resp::Bulk(kind), ..] if kind == b"subscribe" => {
                                if let Some(r) = ready.take() {
                                    let _ = r.send(());
                                }
                            }
                            _ => {}
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    eprintln!("rt-floor: {e}");
                    std::process::exit(1);
                }
            }
        }
        acc.drain(..used);
    }
    eprintln!("rt-floor: redis subscriber connection closed");
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let name = std::env::var("NAME").unwrap_or_else(|_| "floor".into());
    let bind = std::env::var("BIND").unwrap_or_else(|_| "127.0.0.1".into());
    let redis = std::env::var("REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .map(|u| redis_addr(&u).unwrap_or_else(|e| panic!("{e}")));
    let redis_tx = redis.as_ref().map(|addr| {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(redis_publisher(addr.clone(), rx));
        tx
    });
    let mut shard_rx = Vec::new();
    let mut shard_tx = Vec::new();
    for _ in 0..SHARDS {
        let (tx, rx) = mpsc::unbounded_channel();
        shard_tx.push(tx);
        shard_rx.push(rx);
    }
    let node = Arc::new(Node {
        name: name.clone(),
        shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        shard_tx,
        redis_tx,
        next_id: AtomicU64::new(1),
    });
    for (k, rx) in shard_rx.into_iter().enumerate() {
        tokio::spawn(shard_task(node.clone(), k, rx));
    }
    if let Some(addr) = redis {
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(redis_subscriber(node.clone(), addr, tx));
        rx.await.expect("redis subscription");
    }
    tokio::spawn(ping_task(node.clone()));
    let listener = TcpListener::bind((bind.as_str(), port))
        .await
        .unwrap_or_else(|e| panic!("bind {bind}:{port}: {e}"));
    eprintln!(
        "rt-floor {name} listening on {bind}:{port} ({} shards, redis: {})",
        SHARDS,
        node.redis_tx.is_some()
    );
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(connection(node.clone(), s));
            }
            Err(e) => {
                // e.g. EMFILE at the open-files limit: report, back off, keep serving the others
                eprintln!("rt-floor: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_rfc6455() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
        let h: String = sha1(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(h, "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn upgrade_request() {
        let r = "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nsec-websocket-key: abc==\r\n\r\n";
        assert_eq!(parse_upgrade(r), Ok("abc==".into()));
        assert!(parse_upgrade("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n\r\n").is_err());
        assert!(
            parse_upgrade("GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n\r\n").is_err()
        );
    }

    fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut f = ws_frame(opcode, payload).to_vec();
        let hdr = f.len() - payload.len();
        f[1] |= 0x80;
        let body: Vec<u8> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        f.truncate(hdr);
        f.extend_from_slice(&mask);
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn frames_round_trip() {
        for n in [0usize, 5, 125, 126, 300, 70_000] {
            let p = vec![b'x'; n];
            let f = masked(1, &p);
            assert_eq!(parse_ws(&f), (WsIn::Frame(1, p.clone()), f.len()));
            assert_eq!(parse_ws(&f[..f.len() - 1]).0, WsIn::Partial);
        }
        assert_eq!(&ws_frame(1, b"2")[..], &[0x81, 1, b'2']);
        assert!(
            matches!(parse_ws(&ws_frame(1, b"2")).0, WsIn::Bad(_)),
            "unmasked client frame"
        );
    }

    #[test]
    fn sio_packets() {
        assert_eq!(parse_sio("40"), SioIn::Connect);
        assert_eq!(parse_sio("3"), SioIn::Pong);
        assert_eq!(parse_sio("41"), SioIn::Disconnect);
        let p = r#"42["publish",{"event":"bench","data":{"t":5,"i":7,"p":"xx"}}]"#;
        assert_eq!(
            parse_sio(p),
            SioIn::Publish(None, Ok(r#"42["bench",{"t":5,"i":7,"p":"xx"}]"#.into()))
        );
        let p = r#"4212["publish",{"data":null,"event":"e"}]"#;
        assert_eq!(
            parse_sio(p),
            SioIn::Publish(Some(12), Ok(r#"42["e",null]"#.into()))
        );
        assert!(matches!(
            parse_sio(r#"42["publish",{"event":"e"}]"#),
            SioIn::Publish(None, Err(_))
        ));
        assert!(matches!(
            parse_sio(r#"42["publish",{"event":"connect","data":1}]"#),
            SioIn::Publish(None, Err(_))
        ));
        assert!(matches!(
            parse_sio(r#"42["publish",{"room":"r","event":"e","data":1}]"#),
            SioIn::Publish(None, Err(_))
        ));
        assert_eq!(parse_sio(r#"423["join","r"]"#), SioIn::Other(Some(3)));
    }

    /// Far more than the socket buffers take while the peer does not read: the writes go partial,
    /// then to the queue and the flush task; the peer must get every byte, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_survive_partial_writes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (mut client, server) = (client.unwrap(), server.unwrap().0);
        let c = Arc::new(Conn {
            id: 1,
            stream: server,
            out: Mutex::new(Out {
                queue: VecDeque::new(),
                flushing: false,
                closed: false,
            }),
        });
        let mut want = Vec::new();
        for b in 0..300u32 {
            let frames: Vec<Frame> = (0..16u32)
                .map(|i| ws_frame(1, format!("{b}-{i}-{}", "x".repeat(1000)).as_bytes()))
                .collect();
            for f in &frames {
                want.extend_from_slice(f);
            }
            if b % 7 == 0 {
                c.send(&frames[0]);
                for f in &frames[1..] {
                    c.send(f);
                }
            } else {
                let slices: Vec<IoSlice> = frames.iter().map(|f| IoSlice::new(f)).collect();
                c.send_batch(&frames, &slices, frames.iter().map(|f| f.len()).sum());
            }
        }
        assert!(
            c.out.lock().unwrap().flushing,
            "the socket buffers should have filled up"
        );
        let mut got = vec![0u8; want.len()];
        client.read_exact(&mut got).await.unwrap();
        assert!(got == want, "bytes differ or are out of order");
    }

    #[test]
    fn resp() {
        let m = b"*3\r\n$7\r\nmessage\r\n$8\r\nrt-floor\r\n$5\r\nn1\n42\r\n:1\r\n";
        let (v, n) = parse_resp(m).unwrap().unwrap();
        assert_eq!(n, m.len() - 4);
        assert_eq!(
            v,
            Resp::Array(vec![
                Resp::Bulk(b"message".to_vec()),
                Resp::Bulk(b"rt-floor".to_vec()),
                Resp::Bulk(b"n1\n42".to_vec())
            ])
        );
        assert_eq!(parse_resp(&m[..20]).unwrap(), None);
        assert_eq!(parse_resp(b":12\r\n").unwrap(), Some((Resp::Int(12), 5)));
        assert!(parse_resp(b"-ERR x\r\n").is_err());
        assert_eq!(
            resp_command(&[b"PUBLISH", b"c", b"ab"]),
            b"*3\r\n$7\r\nPUBLISH\r\n$1\r\nc\r\n$2\r\nab\r\n"
        );
        assert_eq!(
            redis_addr("redis://127.0.0.1:6379").unwrap(),
            "127.0.0.1:6379"
        );
    }
}

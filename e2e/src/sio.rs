//! The official `socket.io-client` (npm, pinned in `e2e/client/package-lock.json`), driven from
//! Rust through a small Node process (`e2e/client/driver.js`) that speaks line-delimited JSON on
//! stdin/stdout. One [`Driver`] hosts many [`Client`]s; every event a client receives is kept, with
//! the client-side receive time, in that client's log, which the `wait_*` methods search.
//!
//! The API knows nothing about where the server runs: scenarios written against it run against
//! the local nginx of [`crate::data_plane`] or any other endpoint URL.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use realtime_e2e::sio::{ConnectOptions, Driver};
//! use std::time::Duration;
//! let driver = Driver::start(&realtime_e2e::sio::find_driver().unwrap()).await?;
//! let a = driver.connect("http://127.0.0.1:8080", ConnectOptions::default()).await?;
//! let hello = a.hello(Duration::from_secs(5)).await?;
//! a.join("lobby").await?;
//! a.publish(Some("lobby"), "chat", serde_json::json!("hi")).await?;
//! let got = a.wait_events("chat", 1, Duration::from_secs(5)).await?;
//! # let _ = (hello, got); Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, watch};

use crate::data_plane::die_with_parent;

/// Default bound for an ack.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the driver needs: `node` and the installed client package.
#[derive(Debug, Clone)]
pub struct DriverPaths {
    pub node: PathBuf,
    pub script: PathBuf,
}

/// Finds `node` and `e2e/client/driver.js` with its `node_modules/socket.io-client`, for
/// [`crate::require`]: `None` when either is missing (run `scripts/deps.sh`).
pub fn find_driver() -> Option<DriverPaths> {
    let node = crate::require::find_program("node", &[])?;
    let dir = crate::require::workspace_root().join("e2e/client");
    dir.join("node_modules/socket.io-client/package.json")
        .is_file()
        .then(|| DriverPaths {
            node,
            script: dir.join("driver.js"),
        })
}

/// How to obtain the driver, for skip/fail messages.
pub const DRIVER_HOW_TO: &str =
    "install Node.js 18+ and run scripts/deps.sh (npm ci in e2e/client)";

/// The time base of receive times: milliseconds since the Unix epoch, fractional. The driver
/// stamps with the same clock (CLOCK_REALTIME), so Rust-side send times compare with it.
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// A transport of Engine.IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    Websocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::Websocket => "websocket",
        }
    }
}

/// Options of one client; anything not covered goes through [`ConnectOptions::extra`] to
/// `io(url, opts)` unchanged.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `transports` (default: socket.io's own, polling then upgrade to websocket).
    pub transports: Option<Vec<Transport>>,
    /// `auth` sent in the CONNECT packet (`{token}` for realtime-server with AUTH_SECRET).
    pub auth: Option<Value>,
    /// Source address of every request of this client (nginx `ip_hash` keys on it).
    pub local_address: Option<String>,
    /// `withCredentials`: in Node, engine.io-client then keeps a cookie jar (affinity cookies).
    pub with_credentials: bool,
    /// `extraHeaders` (e.g. a `cookie` header set by hand).
    pub extra_headers: Vec<(String, String)>,
    /// `reconnection` (socket.io default: true).
    pub reconnection: Option<bool>,
    /// `reconnectionDelay` / `reconnectionDelayMax` in ms (socket.io defaults 1000 / 5000).
    pub reconnection_delay_ms: Option<(u64, u64)>,
    /// `timeout` of the connection attempt in ms (socket.io default 20000).
    pub timeout_ms: Option<u64>,
    /// Further `io()` options, merged last.
    pub extra: serde_json::Map<String, Value>,
}

impl ConnectOptions {
    pub fn transports(mut self, t: &[Transport]) -> Self {
        self.transports = Some(t.to_vec());
        self
    }
    pub fn auth(mut self, auth: Value) -> Self {
        self.auth = Some(auth);
        self
    }
    /// `auth: {token}`.
    pub fn token(self, token: &str) -> Self {
        self.auth(json!({ "token": token }))
    }
    pub fn local_address(mut self, addr: impl Into<String>) -> Self {
        self.local_address = Some(addr.into());
        self
    }
    pub fn with_credentials(mut self, on: bool) -> Self {
        self.with_credentials = on;
        self
    }
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.extra_headers.push((name.into(), value.into()));
        self
    }
    pub fn reconnection(mut self, on: bool) -> Self {
        self.reconnection = Some(on);
        self
    }
    pub fn reconnection_delay_ms(mut self, min: u64, max: u64) -> Self {
        self.reconnection_delay_ms = Some((min, max));
        self
    }
    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }
    pub fn option(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }

    /// The `opts` object given to `io()` (pure; `local_address` travels separately).
    pub fn to_io_opts(&self) -> Value {
        let mut o = serde_json::Map::new();
        if let Some(t) = &self.transports {
            o.insert(
                "transports".into(),
                t.iter().map(|t| t.as_str()).collect::<Vec<_>>().into(),
            );
        }
        if let Some(a) = &self.auth {
            o.insert("auth".into(), a.clone());
        }
        if self.with_credentials {
            o.insert("withCredentials".into(), true.into());
        }
        if !self.extra_headers.is_empty() {
            let h: serde_json::Map<_, _> = self
                .extra_headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect();
            o.insert("extraHeaders".into(), h.into());
        }
        if let Some(r) = self.reconnection {
            o.insert("reconnection".into(), r.into());
        }
        if let Some((min, max)) = self.reconnection_delay_ms {
            o.insert("reconnectionDelay".into(), min.into());
            o.insert("reconnectionDelayMax".into(), max.into());
        }
        if let Some(t) = self.timeout_ms {
            o.insert("timeout".into(), t.into());
        }
        for (k, v) in &self.extra {
            o.insert(k.clone(), v.clone());
        }
        Value::Object(o)
    }
}

/// One thing a client saw, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// An event emitted by the server (`socket.onAny`).
    Event {
        name: String,
        args: Vec<Value>,
    },
    /// The socket.io CONNECT succeeded; `id` is `socket.id`; `recovered` is
    /// `socket.recovered` (connection state recovery restored the previous session).
    Connect {
        id: String,
        transport: String,
        recovered: bool,
    },
    ConnectError {
        message: String,
        data: Value,
    },
    Disconnect {
        reason: String,
        description: Value,
    },
    ReconnectAttempt {
        attempt: u64,
    },
    Reconnect {
        attempt: u64,
    },
    /// A new Engine.IO connection opened (first connection and each reconnection).
    Open {
        transport: String,
    },
    /// The Engine.IO connection switched transport.
    Upgrade {
        transport: String,
    },
}

/// An [`Incoming`] with its client-side receive time ([`now_ms`] base).
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub t_ms: f64,
    pub what: Incoming,
}

impl Received {
    /// The first argument of an event (what the contract's events carry), `Null` otherwise.
    pub fn data(&self) -> &Value {
        match &self.what {
            Incoming::Event { args, .. } => args.first().unwrap_or(&Value::Null),
            _ => &Value::Null,
        }
    }
    pub fn event_name(&self) -> Option<&str> {
        match &self.what {
            Incoming::Event { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// The server's `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Hello {
    pub node: String,
    pub id: String,
}

/// `state` of a client, as socket.io-client reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct State {
    pub connected: bool,
    pub active: bool,
    pub id: Option<String>,
    pub transport: Option<String>,
    /// `socket.recovered`.
    #[serde(default)]
    pub recovered: bool,
    /// The client's private session id (`socket._pid`), with connection state recovery.
    #[serde(default)]
    pub pid: Option<String>,
    /// The last offset the client received (`socket._lastOffset`).
    #[serde(default, rename = "lastOffset")]
    pub last_offset: Option<String>,
}

/// A presence member.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, PartialOrd, Ord)]
pub struct Member {
    pub id: String,
    pub node: String,
    #[serde(default)]
    pub user: Option<String>,
}

type Reply = std::result::Result<Value, String>;

struct ClientLog {
    entries: Mutex<Vec<Received>>,
    changed: watch::Sender<u64>,
}

struct Shared {
    stdin: tokio::sync::Mutex<ChildStdin>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    clients: Mutex<HashMap<String, Arc<ClientLog>>>,
    next_id: AtomicU64,
    /// Set when the driver's stdout closed: why every later command fails.
    dead: Mutex<Option<String>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// One Node process hosting clients. Dropping it kills the process.
pub struct Driver {
    shared: Arc<Shared>,
    _child: Child,
    next_client: AtomicU64,
}

impl Driver {
    /// Starts `node driver.js`. The process dies with this one (SIGKILL on parent death) and on
    /// drop.
    pub async fn start(paths: &DriverPaths) -> Result<Driver> {
        let mut cmd = Command::new(&paths.node);
        cmd.arg(&paths.script)
            .current_dir(paths.script.parent().unwrap_or(Path::new(".")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        die_with_parent(cmd.as_std_mut(), libc::SIGKILL);
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "starting {} {}",
                paths.node.display(),
                paths.script.display()
            )
        })?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            stdin: tokio::sync::Mutex::new(stdin),
            pending: Mutex::new(HashMap::new()),
            clients: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            dead: Mutex::new(None),
            stderr: stderr.clone(),
        });
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr_pipe).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                stderr.lock().unwrap().push(l);
            }
        });
        let reader = shared.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let why = loop {
                match lines.next_line().await {
                    Ok(Some(l)) => reader.dispatch(&l),
                    Ok(None) => break "driver exited".to_string(),
                    Err(e) => break format!("reading the driver's output: {e}"),
                }
            };
            reader.die(why);
        });
        Ok(Driver {
            shared,
            _child: child,
            next_client: AtomicU64::new(1),
        })
    }

    /// Creates a client and starts connecting; returns at once. Wait with
    /// [`Client::wait_connect`] / [`Client::hello`], or for [`Client::wait_connect_error`].
    pub async fn connect(&self, url: &str, opts: ConnectOptions) -> Result<Client> {
        let name = format!("c{}", self.next_client.fetch_add(1, Ordering::Relaxed));
        self.connect_named(&name, url, opts).await
    }

    /// [`Driver::connect`] with a chosen client name (shown in failure messages).
    pub async fn connect_named(
        &self,
        name: &str,
        url: &str,
        opts: ConnectOptions,
    ) -> Result<Client> {
        let log = Arc::new(ClientLog {
            entries: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
        });
        {
            let mut clients = self.shared.clients.lock().unwrap();
            if clients.contains_key(name) {
                bail!("client {name} exists already");
            }
            clients.insert(name.to_string(), log.clone());
        }
        let mut cmd =
            json!({"cmd": "connect", "client": name, "url": url, "opts": opts.to_io_opts()});
        if let Some(a) = &opts.local_address {
            cmd["localAddress"] = a.clone().into();
        }
        self.shared.request(cmd, ACK_TIMEOUT).await?;
        Ok(Client {
            name: name.to_string(),
            shared: self.shared.clone(),
            log,
        })
    }

    /// Connects and waits for `hello`: the usual start of a scenario.
    pub async fn connect_hello(
        &self,
        url: &str,
        opts: ConnectOptions,
        timeout: Duration,
    ) -> Result<(Client, Hello)> {
        let c = self.connect(url, opts).await?;
        let h = c.hello(timeout).await?;
        Ok((c, h))
    }

    /// What the driver wrote on stderr (shown when a test fails).
    pub fn stderr(&self) -> Vec<String> {
        self.shared.stderr.lock().unwrap().clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let err = self.stderr();
            if !err.is_empty() {
                eprintln!("---- socket.io-client driver stderr ----");
                for l in err.iter().rev().take(100).rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Shared {
    fn dispatch(&self, line: &str) {
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => {
                self.stderr.lock().unwrap().push(format!("(stdout) {line}"));
                return;
            }
        };
        if let Some(id) = v.get("id").and_then(Value::as_u64) {
            let reply = if v["ok"] == Value::Bool(true) {
                Ok(v["result"].clone())
            } else {
                Err(v["error"]
                    .as_str()
                    .unwrap_or("unknown driver error")
                    .to_string())
            };
            if let Some(tx) = self.pending.lock().unwrap().remove(&id) {
                let _ = tx.send(reply);
            }
            return;
        }
        let Some(client) = v["client"].as_str() else {
            self.stderr.lock().unwrap().push(format!("(stdout) {line}"));
            return;
        };
        let Some(received) = parse_incoming(&v) else {
            self.stderr
                .lock()
                .unwrap()
                .push(format!("(unparsed) {line}"));
            return;
        };
        let log = self.clients.lock().unwrap().get(client).cloned();
        if let Some(log) = log {
            log.entries.lock().unwrap().push(received);
            log.changed.send_modify(|n| *n += 1);
        }
    }

    fn die(&self, why: String) {
        *self.dead.lock().unwrap() = Some(why.clone());
        for (_, tx) in self.pending.lock().unwrap().drain() {
            let _ = tx.send(Err(why.clone()));
        }
        for log in self.clients.lock().unwrap().values() {
            log.changed.send_modify(|n| *n += 1);
        }
    }

    fn dead(&self) -> Option<String> {
        self.dead.lock().unwrap().clone()
    }

    async fn request(&self, mut cmd: Value, timeout: Duration) -> Result<Value> {
        if let Some(why) = self.dead() {
            bail!("socket.io-client driver is gone ({why})");
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        cmd["id"] = id.into();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut line = serde_json::to_string(&cmd)?;
        line.push('\n');
        {
            let mut stdin = self.stdin.lock().await;
            stdin
                .write_all(line.as_bytes())
                .await
                .context("writing to the socket.io-client driver")?;
            stdin.flush().await?;
        }
        // The driver bounds acks itself; this bound only catches a stuck driver.
        match tokio::time::timeout(timeout + Duration::from_secs(5), rx).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(anyhow!("{e}")),
            Ok(Err(_)) => Err(anyhow!("socket.io-client driver dropped the request")),
            Err(_) => {
                self.pending.lock().unwrap().remove(&id);
                Err(anyhow!(
                    "socket.io-client driver did not answer {cmd} within {timeout:?}"
                ))
            }
        }
    }
}

/// Parses one event line of the driver (pure).
pub fn parse_incoming(v: &Value) -> Option<Received> {
    let t_ms = v["t"].as_f64()?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let what = match v["ev"].as_str()? {
        "event" => Incoming::Event {
            name: s("name"),
            args: v["args"].as_array().cloned().unwrap_or_default(),
        },
        "connect" => Incoming::Connect {
            id: s("id"),
            transport: s("transport"),
            recovered: v["recovered"].as_bool().unwrap_or(false),
        },
        "connect_error" => Incoming::ConnectError {
            message: s("message"),
            data: v["data"].clone(),
        },
        "disconnect" => Incoming::Disconnect {
            reason: s("reason"),
            description: v["description"].clone(),
        },
        "reconnect_attempt" => Incoming::ReconnectAttempt {
            attempt: v["attempt"].as_u64().unwrap_or(0),
        },
        "reconnect" => Incoming::Reconnect {
            attempt: v["attempt"].as_u64().unwrap_or(0),
        },
        "open" => Incoming::Open {
            transport: s("transport"),
        },
        "upgrade" => Incoming::Upgrade {
            transport: s("transport"),
        },
        _ => return None,
    };
    Some(Received { t_ms, what })
}

/// One socket.io-client `Socket` (with its own Manager: never multiplexed).
pub struct Client {
    name: String,
    shared: Arc<Shared>,
    log: Arc<ClientLog>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("name", &self.name).finish()
    }
}

impl Client {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Emits without an ack id (like rtbench and most apps).
    pub async fn emit(&self, event: &str, data: Value) -> Result<()> {
        self.emit_args(event, vec![data]).await
    }

    /// Emits any argument list without an ack id.
    pub async fn emit_args(&self, event: &str, args: Vec<Value>) -> Result<()> {
        self.request(
            json!({"cmd": "emit", "event": event, "args": args}),
            ACK_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Emits with an ack and returns the ack's first argument.
    pub async fn emit_ack(&self, event: &str, data: Value) -> Result<Value> {
        let mut r = self.emit_ack_args(event, vec![data], ACK_TIMEOUT).await?;
        Ok(if r.is_empty() {
            Value::Null
        } else {
            r.swap_remove(0)
        })
    }

    /// Emits with an ack and returns all the ack's arguments; fails after `timeout` without one.
    pub async fn emit_ack_args(
        &self,
        event: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let r = self
            .request(
                json!({"cmd": "emit", "event": event, "args": args, "ack": true,
                       "timeoutMs": timeout.as_millis() as u64}),
                timeout,
            )
            .await
            .with_context(|| format!("{}: {event}", self.name))?;
        serde_json::from_value(r).context("ack arguments")
    }

    /// Emits `event` once per payload, in order, in one tick of the driver (no round trip per
    /// event); returns the driver's send time ([`now_ms`] base).
    pub async fn emit_many(&self, event: &str, payloads: Vec<Value>) -> Result<f64> {
        let args: Vec<Value> = payloads
            .into_iter()
            .map(|p| Value::Array(vec![p]))
            .collect();
        let r = self
            .request(
                json!({"cmd": "emitMany", "event": event, "args": args}),
                ACK_TIMEOUT,
            )
            .await?;
        r.as_f64().ok_or_else(|| anyhow!("emitMany returned {r}"))
    }

    /// `join` room, expecting `{ok:true}`.
    pub async fn join(&self, room: &str) -> Result<()> {
        expect_ok(
            &self.name,
            "join",
            self.emit_ack("join", json!(room)).await?,
        )
    }

    /// `leave` room, expecting `{ok:true}`.
    pub async fn leave(&self, room: &str) -> Result<()> {
        expect_ok(
            &self.name,
            "leave",
            self.emit_ack("leave", json!(room)).await?,
        )
    }

    /// `publish` `{room?, event, data}`, expecting `{ok:true}`.
    pub async fn publish(&self, room: Option<&str>, event: &str, data: Value) -> Result<()> {
        let mut p = json!({"event": event, "data": data});
        if let Some(r) = room {
            p["room"] = r.into();
        }
        expect_ok(&self.name, "publish", self.emit_ack("publish", p).await?)
    }

    /// `send` `{to, event, data}` to a socket id, expecting `{ok:true}`.
    pub async fn send_to(&self, to: &str, event: &str, data: Value) -> Result<()> {
        let ack = self
            .emit_ack("send", json!({"to": to, "event": event, "data": data}))
            .await?;
        expect_ok(&self.name, "send", ack)
    }

    /// `send` `{user, event, data}` to every socket of a user (servers with auth).
    pub async fn send_to_user(&self, user: &str, event: &str, data: Value) -> Result<()> {
        let ack = self
            .emit_ack("send", json!({"user": user, "event": event, "data": data}))
            .await?;
        expect_ok(&self.name, "send", ack)
    }

    /// `presence` `{room}`: the members, sorted by id.
    pub async fn presence(&self, room: &str) -> Result<Vec<Member>> {
        let ack = self.emit_ack("presence", json!({"room": room})).await?;
        let members = ack
            .get("members")
            .ok_or_else(|| anyhow!("{}: presence acked {ack} (no members)", self.name))?;
        let mut m: Vec<Member> = serde_json::from_value(members.clone())
            .with_context(|| format!("presence members {members}"))?;
        m.sort();
        Ok(m)
    }

    /// Sets `socket.auth` for the next handshakes (reconnections included).
    pub async fn set_auth(&self, auth: Value) -> Result<()> {
        self.request(json!({"cmd": "setAuth", "auth": auth}), ACK_TIMEOUT)
            .await?;
        Ok(())
    }

    /// socket.io-client's view: connected, id, current transport.
    pub async fn state(&self) -> Result<State> {
        let r = self.request(json!({"cmd": "state"}), ACK_TIMEOUT).await?;
        Ok(serde_json::from_value(r)?)
    }

    /// `socket.disconnect()`: a client-side disconnect, without reconnection.
    pub async fn disconnect(&self) -> Result<()> {
        self.request(json!({"cmd": "disconnect"}), ACK_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Overwrites the client's private session id and/or last offset (`Some(Value::Null)`
    /// removes it): the next reconnection presents them.
    pub async fn forge_session(&self, pid: Option<Value>, offset: Option<Value>) -> Result<()> {
        let mut cmd = json!({"cmd": "forgeSession"});
        if let Some(p) = pid {
            cmd["pid"] = p;
        }
        if let Some(o) = offset {
            cmd["offset"] = o;
        }
        self.request(cmd, ACK_TIMEOUT).await?;
        Ok(())
    }

    /// Closes the Engine.IO connection from the client side, as a network loss would: the
    /// client reconnects by itself (the server sees a transport close).
    pub async fn drop_transport(&self) -> Result<()> {
        self.request(json!({"cmd": "dropTransport"}), ACK_TIMEOUT)
            .await?;
        Ok(())
    }

    /// The `n`-th (1-based) connection's id and `socket.recovered`.
    pub async fn wait_connect_recovered_n(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<(String, bool)> {
        self.wait_until(timeout, &format!("connect #{n}"), |log| {
            log.iter()
                .filter_map(|r| match &r.what {
                    Incoming::Connect { id, recovered, .. } => Some((id.clone(), *recovered)),
                    _ => None,
                })
                .nth(n - 1)
        })
        .await
    }

    /// `socket.connect()` again after [`Client::disconnect`].
    pub async fn connect_again(&self) -> Result<()> {
        self.request(json!({"cmd": "connectAgain"}), ACK_TIMEOUT)
            .await?;
        Ok(())
    }

    /// Everything received so far.
    pub fn log(&self) -> Vec<Received> {
        self.log.entries.lock().unwrap().clone()
    }

    /// Number of entries in the log: a mark for [`Client::wait_until`] closures that look only at
    /// what came after it.
    pub fn mark(&self) -> usize {
        self.log.entries.lock().unwrap().len()
    }

    /// The events named `name` received so far.
    pub fn events(&self, name: &str) -> Vec<Received> {
        self.log
            .entries
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.event_name() == Some(name))
            .cloned()
            .collect()
    }

    /// Waits until `f` finds what it looks for in the log (re-run on every new entry), or fails
    /// after `timeout` with `what` and the log's tail.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&[Received]) -> Option<T>,
    ) -> Result<T> {
        let mut rx = self.log.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(t) = f(&self.log.entries.lock().unwrap()) {
                return Ok(t);
            }
            if let Some(why) = self.shared.dead() {
                bail!(
                    "{}: waiting for {what}: socket.io-client driver is gone ({why})",
                    self.name
                );
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                bail!(
                    "{}: no {what} within {timeout:?}; last entries: {}",
                    self.name,
                    self.tail(12)
                );
            }
        }
    }

    /// The `n`-th (1-based) socket.io connection's id: waits for it.
    pub async fn wait_connect_n(&self, n: usize, timeout: Duration) -> Result<String> {
        self.wait_until(timeout, &format!("connect #{n}"), |log| {
            log.iter()
                .filter_map(|r| match &r.what {
                    Incoming::Connect { id, .. } => Some(id.clone()),
                    _ => None,
                })
                .nth(n - 1)
        })
        .await
    }

    /// The first connection's socket id.
    pub async fn wait_connect(&self, timeout: Duration) -> Result<String> {
        self.wait_connect_n(1, timeout).await
    }

    /// The message of the first `connect_error`.
    pub async fn wait_connect_error(&self, timeout: Duration) -> Result<String> {
        self.wait_until(timeout, "connect_error", |log| {
            log.iter().find_map(|r| match &r.what {
                Incoming::ConnectError { message, .. } => Some(message.clone()),
                _ => None,
            })
        })
        .await
    }

    /// The `n`-th (1-based) `hello`.
    pub async fn hello_n(&self, n: usize, timeout: Duration) -> Result<Hello> {
        let ev = self
            .wait_until(timeout, &format!("hello #{n}"), |log| {
                log.iter()
                    .filter(|r| r.event_name() == Some("hello"))
                    .nth(n - 1)
                    .cloned()
            })
            .await?;
        serde_json::from_value(ev.data().clone()).with_context(|| format!("hello {:?}", ev.data()))
    }

    /// The first `hello`.
    pub async fn hello(&self, timeout: Duration) -> Result<Hello> {
        self.hello_n(1, timeout).await
    }

    /// The first event named `name`.
    pub async fn wait_event(&self, name: &str, timeout: Duration) -> Result<Received> {
        let mut v = self.wait_events(name, 1, timeout).await?;
        Ok(v.swap_remove(0))
    }

    /// The first `n` events named `name`; fails after `timeout` telling how many came.
    pub async fn wait_events(
        &self,
        name: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Vec<Received>> {
        let mut seen = 0;
        self.wait_until(timeout, &format!("{n} `{name}` events"), |log| {
            let v: Vec<_> = log
                .iter()
                .filter(|r| r.event_name() == Some(name))
                .take(n)
                .cloned()
                .collect();
            seen = v.len();
            (v.len() == n).then_some(v)
        })
        .await
        .with_context(|| format!("got {seen} of {n}"))
    }

    /// The first event named `name` whose first argument satisfies `f`.
    pub async fn wait_event_where(
        &self,
        name: &str,
        timeout: Duration,
        mut f: impl FnMut(&Value) -> bool,
    ) -> Result<Received> {
        self.wait_until(timeout, &format!("a matching `{name}` event"), |log| {
            log.iter()
                .find(|r| r.event_name() == Some(name) && f(r.data()))
                .cloned()
        })
        .await
    }

    fn tail(&self, n: usize) -> String {
        let log = self.log.entries.lock().unwrap();
        let start = log.len().saturating_sub(n);
        let mut s = String::new();
        for r in &log[start..] {
            let mut line = format!("{:?}", r.what);
            if line.len() > 200 {
                let mut cut = 200;
                while !line.is_char_boundary(cut) {
                    cut -= 1;
                }
                line.truncate(cut);
                line.push('…');
            }
            s.push_str("\n    ");
            s.push_str(&line);
        }
        if s.is_empty() { " (none)".into() } else { s }
    }

    async fn request(&self, mut cmd: Value, timeout: Duration) -> Result<Value> {
        cmd["client"] = self.name.clone().into();
        self.shared.request(cmd, timeout).await
    }
}

impl Drop for Client {
    /// Forgets the client in the driver (disconnecting it), in the background when a tokio
    /// runtime is around; the driver's own exit closes whatever is left.
    fn drop(&mut self) {
        self.shared.clients.lock().unwrap().remove(&self.name);
        if self.shared.dead().is_some() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            let cmd = json!({"cmd": "remove", "client": self.name});
            rt.spawn(async move {
                let _ = shared.request(cmd, ACK_TIMEOUT).await;
            });
        }
    }
}

/// An HS256 JWT for servers with AUTH_SECRET: `sub` = the user id, valid for `ttl_secs` from now
/// (negative: already expired).
pub fn hs256_token(secret: &str, sub: &str, ttl_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let claims = json!({"sub": sub, "iat": now.min(now + ttl_secs), "exp": now + ttl_secs});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing of a JSON object cannot fail")
}

/// Checks an ack is `{ok:true}` (pure).
pub fn expect_ok(client: &str, what: &str, ack: Value) -> Result<()> {
    if ack.get("ok") == Some(&Value::Bool(true)) {
        Ok(())
    } else {
        Err(anyhow!(
            "{client}: {what} acked {ack}, expected {{ok:true}}"
        ))
    }
}

/// Whether an ack is a refusal `{ok:false, error:"<non-empty>"}` (pure).
pub fn is_refusal(ack: &Value) -> bool {
    ack.get("ok") == Some(&Value::Bool(false))
        && ack
            .get("error")
            .and_then(Value::as_str)
            .is_some_and(|e| !e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_opts_carry_what_was_set() {
        let o = ConnectOptions::default()
            .transports(&[Transport::Websocket])
            .token("abc")
            .with_credentials(true)
            .header("cookie", "a=b")
            .reconnection_delay_ms(100, 500)
            .local_address("127.0.1.1")
            .to_io_opts();
        assert_eq!(
            o,
            json!({"transports": ["websocket"], "auth": {"token": "abc"}, "withCredentials": true,
                   "extraHeaders": {"cookie": "a=b"}, "reconnectionDelay": 100,
                   "reconnectionDelayMax": 500})
        );
        assert_eq!(ConnectOptions::default().to_io_opts(), json!({}));
    }

    #[test]
    fn driver_lines_parse() {
        let r = parse_incoming(
            &json!({"ev": "event", "client": "a", "t": 1.5, "name": "hello",
                                       "args": [{"node": "n1", "id": "x"}]}),
        )
        .unwrap();
        assert_eq!(r.t_ms, 1.5);
        assert_eq!(r.event_name(), Some("hello"));
        assert_eq!(r.data()["node"], "n1");
        let r = parse_incoming(&json!({"ev": "disconnect", "client": "a", "t": 2.0,
                                       "reason": "transport close", "description": null}))
        .unwrap();
        assert_eq!(
            r.what,
            Incoming::Disconnect {
                reason: "transport close".into(),
                description: Value::Null
            }
        );
        assert!(parse_incoming(&json!({"ev": "nope", "t": 1.0})).is_none());
        assert!(parse_incoming(&json!({"ev": "event"})).is_none(), "no time");
    }

    #[test]
    fn tokens_are_hs256_with_sub() {
        let t = hs256_token("s3cret", "alice", 60);
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims = ["exp", "sub"].into_iter().map(String::from).collect();
        let d = jsonwebtoken::decode::<Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &v,
        )
        .unwrap();
        assert_eq!(d.claims["sub"], "alice");
        assert!(
            jsonwebtoken::decode::<Value>(
                &t,
                &jsonwebtoken::DecodingKey::from_secret(b"other"),
                &v
            )
            .is_err()
        );
        let expired = hs256_token("s3cret", "alice", -600);
        assert!(
            jsonwebtoken::decode::<Value>(
                &expired,
                &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
                &v
            )
            .is_err()
        );
    }

    #[test]
    fn acks_are_classified() {
        assert!(expect_ok("a", "join", json!({"ok": true})).is_ok());
        assert!(expect_ok("a", "join", json!({"ok": false, "error": "x"})).is_err());
        assert!(is_refusal(
            &json!({"ok": false, "error": "room must be a string"})
        ));
        assert!(!is_refusal(&json!({"ok": false})));
        assert!(!is_refusal(&json!({"ok": true})));
    }
}

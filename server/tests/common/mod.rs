//! In-process test kit: a real server on 127.0.0.1:0, a minimal Socket.IO v5 / Engine.IO v4
//! websocket client, and a throwaway redis-server.
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use realtime_server::{
    app::Listeners,
    config::{Cli, Settings},
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle, time::timeout};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

pub const WAIT: Duration = Duration::from_secs(5);

/// Settings from command-line style flags (tests never rely on the environment).
pub fn settings(args: &[&str]) -> Settings {
    let mut all = vec![
        "realtime-server",
        "--bind=127.0.0.1",
        "--port=0",
        "--admin-port=0",
    ];
    all.extend_from_slice(args);
    Cli::try_parse_from(all)
        .expect("test flags parse")
        .validate_with_hostname(|| "test-host".into())
        .expect("test flags are valid")
}

/// A server running in this process.
pub struct Server {
    /// The public port (socket.io).
    pub addr: SocketAddr,
    /// The admin port (probes, metrics, the publish API).
    pub admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    pub async fn start(args: &[&str]) -> Server {
        let s = settings(args);
        let listeners = Listeners {
            public: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listeners.public.local_addr().unwrap();
        let admin_addr = listeners.admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(realtime_server::app::serve(s, listeners, async move {
            let _ = stopped.await;
            "test stop"
        }));
        Server {
            addr,
            admin_addr,
            stop: Some(stop),
            task,
        }
    }

    /// A URL on the public port.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A URL on the admin port.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin_addr, path)
    }

    /// Sends the shutdown signal (like SIGTERM).
    pub fn signal_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// GET on the public port.
    pub async fn get(&self, path: &str) -> (u16, String) {
        get(self.url(path)).await
    }

    /// GET on the admin port.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        get(self.admin_url(path)).await
    }

    /// Polls admin `path` until its body satisfies `f` (the last body is returned either way).
    pub async fn wait_admin_body(
        &self,
        path: &str,
        within: Duration,
        f: impl Fn(&str) -> bool,
    ) -> (bool, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (_, body) = self.admin_get(path).await;
            if f(&body) {
                return (true, body);
            }
            if tokio::time::Instant::now() > deadline {
                return (false, body);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls `/readyz` until its body satisfies `f` (the last body is returned either way).
    pub async fn wait_readyz_body(
        &self,
        within: Duration,
        f: impl Fn(u16, &str) -> bool,
    ) -> (bool, String) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let (status, body) = self.admin_get("/readyz").await;
            if f(status, &body) {
                return (true, body);
            }
            if tokio::time::Instant::now() > deadline {
                return (false, body);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/readyz` until it answers `want` (200 or 503).
    pub async fn wait_ready(&self, want: u16, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(r) = reqwest::get(self.admin_url("/readyz")).await
                && r.status().as_u16() == want
            {
                return true;
            }
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn get(url: String) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal_stop();
        self.task.abort();
    }
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What the client saw besides acks.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Event(String, Value),
    /// Engine.IO close packet (`1`).
    EngineClose,
    /// Socket.IO DISCONNECT packet (`41`).
    SioDisconnect,
    /// The websocket ended.
    Closed,
}

/// A minimal Socket.IO client over the websocket transport.
pub struct Client {
    ws: Ws,
    pub id: String,
    next_ack: u64,
    queue: VecDeque<Incoming>,
}

impl Client {
    /// Connects to namespace `/`; `Err` carries the `connect_error` message.
    pub async fn connect(addr: SocketAddr, auth: Option<Value>) -> Result<Client, String> {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let (mut ws, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("ws connect in time")
            .expect("ws connect");
        let open = next_text(&mut ws).await.expect("engine.io open");
        assert!(open.starts_with('0'), "open packet: {open}");
        let connect = match &auth {
            Some(a) => format!("40{a}"),
            None => "40".into(),
        };
        ws.send(Message::text(connect)).await.unwrap();
        loop {
            let p = next_text(&mut ws).await.expect("connect answer");
            if p == "2" {
                ws.send(Message::text("3")).await.unwrap();
            } else if let Some(body) = p.strip_prefix("40") {
                let v: Value = serde_json::from_str(body).unwrap();
                let id = v["sid"].as_str().unwrap().to_owned();
                return Ok(Client {
                    ws,
                    id,
                    next_ack: 0,
                    queue: VecDeque::new(),
                });
            } else if let Some(body) = p.strip_prefix("44") {
                let v: Value = serde_json::from_str(body).unwrap();
                return Err(v["message"].as_str().unwrap_or_default().to_owned());
            } else {
                panic!("unexpected packet during connect: {p}");
            }
        }
    }

    /// Sends a raw socket.io packet (after the engine.io `4`).
    pub async fn send_raw(&mut self, sio_packet: &str) {
        self.ws
            .send(Message::text(format!("4{sio_packet}")))
            .await
            .unwrap();
    }

    /// Emits without an ack id.
    pub async fn emit(&mut self, event: &str, arg: Value) {
        let p = format!("2{}", json!([event, arg]));
        self.send_raw(&p).await;
    }

    /// Emits with an ack id and waits for the ack's first argument.
    pub async fn emit_ack(&mut self, event: &str, arg: Value) -> Value {
        let frame = json!([event, arg]).to_string();
        self.emit_raw_ack(&frame).await
    }

    /// Emits a raw JSON array (`["event", ...]`) with an ack id.
    pub async fn emit_raw_ack(&mut self, array: &str) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send_raw(&format!("2{id}{array}")).await;
        let prefix = format!("43{id}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = timeout(left, next_text(&mut self.ws))
                .await
                .unwrap_or_else(|_| panic!("no ack for {array}"))
                .unwrap_or_else(|| panic!("connection closed waiting for ack of {array}"));
            if let Some(body) = p.strip_prefix(&prefix) {
                let v: Value = serde_json::from_str(body).unwrap();
                return v[0].clone();
            }
            self.handle(p).await;
        }
    }

    async fn handle(&mut self, p: String) {
        if p == "2" {
            let _ = self.ws.send(Message::text("3")).await;
        } else if p == "1" {
            self.queue.push_back(Incoming::EngineClose);
        } else if p.starts_with("41") {
            self.queue.push_back(Incoming::SioDisconnect);
        } else if let Some(body) = p.strip_prefix("42") {
            let body = body.trim_start_matches(|c: char| c.is_ascii_digit());
            let v: Value = serde_json::from_str(body).unwrap();
            let ev = v[0].as_str().unwrap().to_owned();
            self.queue.push_back(Incoming::Event(ev, v[1].clone()));
        }
    }

    /// The next event, close or disconnect; `None` if nothing arrives within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(i) = self.queue.pop_front() {
                return Some(i);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match timeout(left, next_text(&mut self.ws)).await {
                Err(_) => return None,
                Ok(None) => return Some(Incoming::Closed),
                Ok(Some(p)) => self.handle(p).await,
            }
        }
    }

    /// The next event named `name` (other events are skipped).
    pub async fn expect_event(&mut self, name: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(Incoming::Event(ev, data)) if ev == name => return data,
                Some(Incoming::Event(..)) => continue,
                other => panic!("expected event {name}, got {other:?}"),
            }
        }
    }

    /// Asserts nothing arrives for `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(i) = self.next(within).await {
            panic!("expected nothing, got {i:?}");
        }
    }

    /// Connects and consumes the `hello`; returns the client and the hello payload.
    pub async fn hello(addr: SocketAddr, auth: Option<Value>) -> (Client, Value) {
        let mut c = Client::connect(addr, auth).await.expect("connect");
        let h = c.expect_event("hello").await;
        (c, h)
    }
}

async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// The test policy of realtime_e2e::require, repeated here so this crate's tests do not
/// build the whole e2e crate: under `CI=true` a missing program fails the test, otherwise the
/// test is skipped with a loud message.
pub fn require_program(name: &str, how: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    let ci = matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"));
    match found {
        Some(p) => Some(p),
        None if ci => panic!("CI=true and {name} is missing: {how}"),
        None => {
            // The stderr handle, not `eprintln!`, which the harness captures for passing tests.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: {name} is missing ({how}). Under CI=true this fails. ***\n"
            );
            None
        }
    }
}

/// A redis-server on a free loopback port, killed on drop.
pub struct Redis {
    pub port: u16,
    bin: PathBuf,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Option<Redis> {
        let bin = require_program("redis-server", "apt-get install redis-server")?;
        let port = free_port();
        let mut r = Redis {
            port,
            bin,
            child: None,
        };
        r.spawn();
        Some(r)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        // Wait until it accepts connections.
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts one on a given port (a node may already be waiting for it there).
    pub fn start_on(port: u16) -> Redis {
        let bin = require_program("redis-server", "apt-get install redis-server")
            .expect("checked by the caller");
        let mut r = Redis {
            port,
            bin,
            child: None,
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli -p PORT ARGS...` (Debian's redis-tools, a dependency of redis-server)
    /// and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sends a signal (`-STOP`, `-CONT`) to the redis-server process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

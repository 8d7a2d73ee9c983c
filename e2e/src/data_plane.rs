//! The data plane on loopback: a real `redis-server`, N server processes and a real `nginx` in
//! front, each on a free 127.0.0.1 port, in a temporary folder.
//!
//! The nodes get the environment the operator's Deployment gives them (`PORT`, `ADMIN_PORT`,
//! `BIND`, `NAME`, `REDIS_URL`, plus [`ClusterConfig::env`]); nginx routes to their public port
//! only, and the harness reads readiness and metrics on their admin port, as the kubelet and
//! Prometheus do. nginx balances them with [`Affinity::IpHash`] (the
//! classic socket.io cluster, the seed's topology), [`Affinity::ClientAddress`] or
//! [`Affinity::Cookie`] (a consistent hash over a cookie's value, so that browsers on one machine
//! spread over the nodes of `scripts/local-cluster.sh`). The real ingress controller's behaviour
//! is tested on real pods (`e2e/tests/real_node.rs`).
//!
//! Everything started here is in its own process group, is killed on drop, and dies with the
//! process that started it (`PR_SET_PDEATHSIG`). When a test panics, dropping the [`Cluster`]
//! prints the tail of every process's log.
//!
//! The server command is configurable ([`ServerCommand`]): our `realtime-server`, or the Node.js
//! reference of `shared/bench/anchor-node`, which speaks the same client contract.

use std::fmt::Write as _;
use std::io::{self, Read as _, Seek as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::require;

/// Makes a child die when the process that spawned it dies (`sig` is delivered to it), even if
/// that process is SIGKILLed and never runs its destructors.
///
/// Linux delivers the signal when the spawning *thread* exits: spawn from a thread that lives as
/// long as the harness (a test's thread or a runtime worker, not a `spawn_blocking` thread).
pub fn die_with_parent(cmd: &mut std::process::Command, sig: libc::c_int) {
    // SAFETY: the closure only makes async-signal-safe calls (prctl, getppid).
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                // The parent died between fork and prctl: nobody will stop us.
                return Err(io::Error::other("parent exited before the child started"));
            }
            Ok(())
        });
    }
}

/// A free TCP port on 127.0.0.1, never the same twice in this process (the kernel may hand a
/// just-released port out again, and parallel tests share the process). It is bound then
/// released: another process may take it in between, which is unlikely on a test machine and
/// shows up as a start failure with a clear log.
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no fresh free port on 127.0.0.1 after 100 tries")
}

/// One HTTP response of [`http_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A plain HTTP/1.0 GET (no keep-alive, no chunking): enough for health, readiness and metrics
/// endpoints without an HTTP client dependency.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    http_get_with(addr, path, &[], timeout).await
}

/// [`http_get`] with extra request headers (e.g. a `Cookie`).
pub async fn http_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<HttpResponse> {
    let host = addr.to_string();
    http_request(addr, "GET", &host, path, headers, "", timeout).await
}

/// A plain HTTP/1.0 request to `addr` for virtual host `host` (e.g. an Ingress host), with
/// extra headers and a body (sent with its `Content-Length` when not empty).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: Duration,
) -> Result<HttpResponse> {
    let what = format!("{method} http://{host}{path} (at {addr})");
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("{what}: no response within {timeout:?}"))?
        .with_context(|| what.clone())?;
    parse_http_response(&buf).with_context(|| what.clone())
}

/// Parses a complete HTTP/1.x response with an identity body (pure).
pub fn parse_http_response(buf: &[u8]) -> Result<HttpResponse> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete HTTP response ({} bytes)", buf.len()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

/// Sum of the samples of metric `name` whose labels include all of `labels`, in a Prometheus
/// text exposition (pure). `None` when no sample matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let all = labels.iter().all(|(k, v)| {
            label_text
                .split(',')
                .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
        });
        if !all {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// nginx's `ip_hash` choice for a client address over `n` equally weighted servers: the
/// sequence of server indexes nginx tries (it re-hashes after each unusable server, up to 20
/// times, then falls back to round robin). IPv4 only: nginx hashes the first three octets, so
/// 127.0.0.2 and 127.0.0.200 land on the same server (pure; mirrors
/// `ngx_http_upstream_get_ip_hash_peer`).
pub fn ip_hash_sequence(ip: Ipv4Addr, n: usize) -> Vec<usize> {
    assert!(n > 0, "ip_hash over no servers");
    let o = ip.octets();
    let mut hash: u32 = 89;
    (0..20)
        .map(|_| {
            for b in &o[..3] {
                hash = (hash * 113 + u32::from(*b)) % 6271;
            }
            (hash as usize) % n
        })
        .collect()
}

/// The server nginx `ip_hash` picks for `ip` when the servers in `down` refuse connections:
/// the first usable one of [`ip_hash_sequence`] (pure). `None` means nginx falls back to round
/// robin.
pub fn ip_hash_pick(ip: Ipv4Addr, n: usize, down: &[usize]) -> Option<usize> {
    ip_hash_sequence(ip, n)
        .into_iter()
        .find(|i| !down.contains(i))
}

/// The `k`-th (0-based) source address 127.0.X.1 that nginx `ip_hash` sends to server `index` of
/// `n` (pure). All of 127.0.0.0/8 is loopback on Linux: no setup needed.
pub fn ip_hash_source_address(index: usize, n: usize, k: usize) -> Option<Ipv4Addr> {
    (1..=254u8)
        .map(|o| Ipv4Addr::new(127, 0, o, 1))
        .filter(|ip| ip_hash_sequence(*ip, n)[0] == index)
        .nth(k)
}

/// How nginx keeps a client on one node (what the operator asks of the Ingress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affinity {
    /// `ip_hash`: the classic socket.io cluster. nginx hashes the first three octets of the
    /// client address, so clients must differ in the third one ([`ip_hash_sequence`] says where
    /// each lands).
    IpHash,
    /// `hash $remote_addr consistent`: ingress-nginx's `upstream-hash-by: $remote_addr`.
    ClientAddress,
    /// ingress-nginx's cookie affinity: the value of cookie `name` picks the node by consistent
    /// hash; a request without it gets a fresh value (`$request_id`) in a `Set-Cookie` with
    /// `path` and, when given, `Max-Age`. engine.io-client in Node keeps the cookie only with
    /// `withCredentials: true`.
    Cookie {
        name: String,
        path: String,
        max_age: Option<u64>,
    },
}

impl Affinity {
    /// Cookie affinity with ingress-nginx's default cookie name.
    pub fn cookie() -> Self {
        Self::named_cookie("INGRESSCOOKIE")
    }

    /// Cookie affinity with cookie `name` (any RFC 6265 token but `$`, e.g. the operator's
    /// `rt-affinity`), path `/`, for the browser session.
    pub fn named_cookie(name: &str) -> Self {
        Affinity::Cookie {
            name: name.into(),
            path: "/".into(),
            max_age: None,
        }
    }

    /// Whether [`nginx_conf`] can express this affinity. The cookie name goes into a regular
    /// expression and a `Set-Cookie` value: an RFC 6265 token, without `$` (nginx would read a
    /// variable). The cookie path goes into that `Set-Cookie` value.
    pub fn check(&self) -> Result<()> {
        if let Affinity::Cookie { name, path, .. } = self {
            let token = |c: char| c.is_ascii_alphanumeric() || "!#%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(token) {
                bail!(
                    "affinity cookie name {name:?}: only letters, digits and !#%&'*+-.^_`|~ \
                     (a cookie token without $)"
                );
            }
            check_nginx_path("affinity cookie path", path)?;
        }
        Ok(())
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            Affinity::IpHash => "ip_hash affinity".into(),
            Affinity::ClientAddress => "client-address affinity".into(),
            Affinity::Cookie { name, .. } => format!("cookie affinity, cookie {name}"),
        }
    }
}

/// A path nginx takes verbatim in a location or a quoted value: starts with `/`, no white
/// space and none of `"';$\{}#` (pure).
fn check_nginx_path(what: &str, path: &str) -> Result<()> {
    if !path.starts_with('/')
        || path
            .chars()
            .any(|c| !c.is_ascii_graphic() || "\"';$\\{}#".contains(c))
    {
        bail!("{what} {path:?}: must start with / and have no white space nor any of \"';$\\{{}}#");
    }
    Ok(())
}

/// nginx's timeouts towards the nodes, in seconds (ingress-nginx's `proxy-*-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyTimeouts {
    pub read_secs: u64,
    pub send_secs: u64,
    pub connect_secs: u64,
}

impl Default for ProxyTimeouts {
    /// An idle websocket stays open for an hour; connecting has nginx's default minute.
    fn default() -> Self {
        ProxyTimeouts {
            read_secs: 3600,
            send_secs: 3600,
            connect_secs: 60,
        }
    }
}

/// What the generated nginx.conf contains.
#[derive(Debug, Clone)]
pub struct NginxConf {
    pub listen_port: u16,
    pub upstream_ports: Vec<u16>,
    pub affinity: Affinity,
    /// The location proxied to the nodes (an Ingress rule's path).
    pub path: String,
    pub timeouts: ProxyTimeouts,
    pub worker_processes: usize,
    /// Also the listen backlog.
    pub worker_connections: usize,
    /// How long the workers of the previous configuration keep open connections (websockets)
    /// after a reload.
    pub worker_shutdown_timeout_secs: u64,
    /// Bumped on every reload and served at `/__harness/generation`, so a reload can be awaited.
    pub generation: u64,
}

impl NginxConf {
    /// The data plane's configuration: location `/`, [`ProxyTimeouts::default`], one worker of
    /// 4096 connections, old workers closed 5 s after a reload, generation 0.
    pub fn new(listen_port: u16, upstream_ports: Vec<u16>, affinity: Affinity) -> Self {
        NginxConf {
            listen_port,
            upstream_ports,
            affinity,
            path: "/".into(),
            timeouts: ProxyTimeouts::default(),
            worker_processes: 1,
            worker_connections: 4096,
            worker_shutdown_timeout_secs: 5,
            generation: 0,
        }
    }
}

/// The nginx configuration (pure), modelled on `shared/bench/anchor-node/nginx.conf`; every
/// path is relative to the `-p` prefix. Fails on what nginx cannot express
/// ([`Affinity::check`], the location path).
///
/// Cookie affinity reads the cookie out of the `Cookie` header, as ingress-nginx does: nginx's
/// `$cookie_NAME` variables cannot name a cookie with a `-` (like the operator's default
/// `rt-affinity`), and with such a name every client would have hashed to one node.
pub fn nginx_conf(c: &NginxConf) -> Result<String> {
    c.affinity.check()?;
    check_nginx_path("location path", &c.path)?;
    let mut s = String::new();
    let _ = write!(
        s,
        "# generated by realtime-e2e data_plane (generation {gen})
worker_processes {workers};
worker_rlimit_nofile {rlimit};
worker_shutdown_timeout {shutdown}s;
pid nginx.pid;
error_log stderr warn;

events {{
  worker_connections {conns};
}}

http {{
  access_log off;
  client_body_temp_path client_body;
  proxy_temp_path proxy;
  fastcgi_temp_path fastcgi;
  uwsgi_temp_path uwsgi;
  scgi_temp_path scgi;
  # polling POSTs carry up to the servers' max payload; the servers enforce their own limit
  client_max_body_size 16m;

  map $http_upgrade $connection_upgrade {{
    default upgrade;
    ''      close;
  }}
",
        gen = c.generation,
        workers = c.worker_processes,
        rlimit = c.worker_connections * 2 + 64,
        shutdown = c.worker_shutdown_timeout_secs,
        conns = c.worker_connections,
    );
    let (balance, set_cookie) = match &c.affinity {
        Affinity::IpHash => ("ip_hash", ""),
        Affinity::ClientAddress => ("hash $remote_addr consistent", ""),
        Affinity::Cookie {
            name,
            path,
            max_age,
        } => {
            let max_age = max_age
                .map(|m| format!("; Max-Age={m}"))
                .unwrap_or_default();
            // In the regular expression, the token characters that PCRE reads as operators.
            let pattern: String = name
                .chars()
                .flat_map(|ch| {
                    let escape = "*+.^|".contains(ch).then_some('\\');
                    escape.into_iter().chain([ch])
                })
                .collect();
            let _ = write!(
                s,
                "
  # cookie affinity: the value of cookie {name} picks the node; without it, a fresh value
  map $http_cookie $rt_affinity_cookie {{
    default '';
    \"~(?:^|;)\\s*{pattern}=(?<v>[^;]+)\" $v;
  }}
  map $rt_affinity_cookie $rt_affinity_key {{
    ''      $request_id;
    default $rt_affinity_cookie;
  }}
  map $rt_affinity_cookie $rt_set_cookie {{
    ''      \"{name}=$request_id; Path={path}{max_age}; HttpOnly\";
    default '';
  }}
"
            );
            (
                "hash $rt_affinity_key consistent",
                "      add_header Set-Cookie $rt_set_cookie always;\n",
            )
        }
    };
    let _ = write!(s, "\n  upstream backend {{\n    {balance};\n");
    for p in &c.upstream_ports {
        let _ = writeln!(s, "    server 127.0.0.1:{p};");
    }
    let _ = write!(
        s,
        "  }}

  server {{
    listen 127.0.0.1:{port} backlog={conns};

    location = /__harness/generation {{
      return 200 \"{gen}\";
    }}

    location {path} {{
      proxy_pass http://backend;
{set_cookie}      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      # WebSockets
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout {read}s;
      proxy_send_timeout {send}s;
      proxy_connect_timeout {connect}s;
    }}
  }}
}}
",
        port = c.listen_port,
        conns = c.worker_connections,
        gen = c.generation,
        path = c.path,
        read = c.timeouts.read_secs,
        send = c.timeouts.send_secs,
        connect = c.timeouts.connect_secs,
    );
    Ok(s)
}

/// Which server implementation runs on the nodes: decides what a test may expect of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// Our `realtime-server`: the whole contract, /readyz and /metrics on the admin port, auth,
    /// MAX_PAYLOAD.
    Realtime,
    /// `shared/bench/anchor-node`: the client contract only (no auth, no /readyz or /metrics,
    /// one port).
    NodeReference,
}

/// How to start one node. Each node also gets `PORT`, `ADMIN_PORT`, `BIND`, `NAME` and
/// `REDIS_URL`.
#[derive(Debug, Clone)]
pub struct ServerCommand {
    pub kind: ServerKind,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: Option<PathBuf>,
    /// GET path that answers 200 once the node can serve (on [`Cluster::probe_addr`]).
    pub readiness_path: String,
}

impl ServerCommand {
    /// Our binary.
    pub fn realtime_server(bin: PathBuf) -> Self {
        ServerCommand {
            kind: ServerKind::Realtime,
            program: bin,
            args: vec![],
            cwd: None,
            readiness_path: "/readyz".into(),
        }
    }

    /// `node index.js` in a copy of `shared/bench/anchor-node` with its `node_modules`
    /// (`npm ci` there). It has no readiness endpoint: an Engine.IO handshake stands in.
    pub fn node_reference(dir: &Path) -> Result<Self> {
        if !dir.join("node_modules/socket.io").is_dir() {
            bail!(
                "{}: no node_modules/socket.io (run npm ci there)",
                dir.display()
            );
        }
        let node =
            require::find_program("node", &[]).ok_or_else(|| anyhow!("node is not on PATH"))?;
        Ok(ServerCommand {
            kind: ServerKind::NodeReference,
            program: node,
            args: vec!["index.js".into()],
            cwd: Some(dir.to_path_buf()),
            readiness_path: "/socket.io/?EIO=4&transport=polling".into(),
        })
    }

    /// The server the data-plane tests run: the Node reference when `RT_E2E_NODE_REFERENCE` names
    /// its folder (to check the harness and the tests themselves), else `realtime-server`, found
    /// by the [`require`] policy (`None`: skip).
    pub fn for_tests() -> Option<Self> {
        if let Some(dir) = std::env::var_os("RT_E2E_NODE_REFERENCE") {
            return Some(
                Self::node_reference(Path::new(&dir))
                    .expect("RT_E2E_NODE_REFERENCE is set but unusable"),
            );
        }
        require::require(
            "the realtime-server binary",
            "run `cargo build -p realtime-server` (make test builds every binary first)",
            require::workspace_bin("realtime-server"),
        )
        .map(Self::realtime_server)
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub nodes: usize,
    pub server: ServerCommand,
    pub affinity: Affinity,
    /// Extra environment of every node (AUTH_SECRET, MAX_PAYLOAD, SHUTDOWN_GRACE, ...).
    pub env: Vec<(String, String)>,
    /// nginx's port; `None` = a free one.
    pub nginx_port: Option<u16>,
    /// Node i listens on `base + i`; `None` = free ports.
    pub node_base_port: Option<u16>,
    /// Redis's port; `None` = a free one.
    pub redis_port: Option<u16>,
    /// The nodes' `REDIS_URL` when Redis is not the cluster's own: no redis-server is started
    /// (e.g. a [`crate::redis_ha::SentinelGroup`]'s `redis-sentinel://` URL). Its passwords go
    /// in [`ClusterConfig::env`].
    pub external_redis_url: Option<String>,
    pub nginx_workers: usize,
    pub nginx_worker_connections: usize,
    /// Bound for every process to become ready.
    pub start_timeout: Duration,
}

impl ClusterConfig {
    pub fn new(server: ServerCommand, nodes: usize) -> Self {
        ClusterConfig {
            nodes,
            server,
            affinity: Affinity::IpHash,
            env: vec![],
            nginx_port: None,
            node_base_port: None,
            redis_port: None,
            external_redis_url: None,
            nginx_workers: 1,
            nginx_worker_connections: 4096,
            start_timeout: Duration::from_secs(20),
        }
    }
    pub fn affinity(mut self, a: Affinity) -> Self {
        self.affinity = a;
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// See [`ClusterConfig::external_redis_url`].
    pub fn external_redis(mut self, url: &str) -> Self {
        self.external_redis_url = Some(url.into());
        self
    }
}

/// How much of a command [`Proc::spawn`] writes at the head of the log and into its errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Echo {
    /// Program, arguments and the environment set: for commands that carry no secret.
    Command,
    /// The program only: for commands whose arguments or environment carry secrets (none of
    /// the data plane's today; kept, with its test, for the day one does).
    #[cfg_attr(not(test), allow(dead_code))]
    Program,
}

/// A started process: own process group, output in a log file, SIGKILLed with its group on drop.
pub struct Proc {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    exit: Mutex<Option<ExitStatus>>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdin closed, stdout and stderr appended to `log`, in its own process
    /// group, and `death_signal` sent to it when this thread dies ([`die_with_parent`]): call it
    /// from a thread that lives as long as the process should (a test's thread or a runtime
    /// worker, never a `spawn_blocking` thread).
    pub(crate) fn spawn(
        mut cmd: Command,
        name: &str,
        log: &Path,
        death_signal: libc::c_int,
        echo: Echo,
    ) -> Result<Proc> {
        let shown = match echo {
            Echo::Command => format!("{:?}", cmd.as_std()),
            Echo::Program => format!("{:?}", cmd.as_std().get_program()),
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        use std::io::Write as _;
        writeln!(f, "---- harness: starting {name}: {shown}")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(f.try_clone()?))
            .stderr(Stdio::from(f))
            .process_group(0)
            .kill_on_drop(true);
        die_with_parent(cmd.as_std_mut(), death_signal);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {shown}"))?;
        Ok(Proc {
            name: name.into(),
            pid: child.id().expect("a child that was just spawned has a pid"),
            child: Mutex::new(child),
            exit: Mutex::new(None),
            log: log.to_path_buf(),
        })
    }

    /// Polls `probe` until it holds; fails at once, with the tail of the log, when the process
    /// exits first, and after `timeout`. `what` names what is awaited, for the errors.
    pub(crate) async fn wait_for<F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if probe().await {
                return Ok(());
            }
            if let Some(s) = self.exited() {
                bail!(
                    "{} exited ({s}) while waiting for {what}:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: still waiting for {what} after {timeout:?}:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn pid(&self) -> u32 {
        self.pid
    }
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status once the process has exited (reaps it).
    pub fn exited(&self) -> Option<ExitStatus> {
        let mut exit = self.exit.lock().unwrap();
        if exit.is_none() {
            *exit = self.child.lock().unwrap().try_wait().ok().flatten();
        }
        *exit
    }

    /// Sends `sig` to the process (not its group), unless it has exited.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        if self.exited().is_some() {
            bail!("{} has exited already", self.name);
        }
        // SAFETY: plain syscall on a pid this harness spawned and has not reaped.
        if unsafe { libc::kill(self.pid as libc::pid_t, sig) } != 0 {
            return Err(io::Error::last_os_error())
                .context(format!("signal {sig} to {}", self.name));
        }
        Ok(())
    }

    /// Waits for the exit, up to `timeout`.
    pub async fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) still running after {timeout:?}",
                    self.name,
                    self.pid
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs the whole group (nginx's workers too) unless the leader was already reaped.
    fn kill_group(&self) {
        if self.exited().is_none() {
            // SAFETY: the group was created for this child (process_group(0)) and its leader
            // is not reaped, so the id is still ours.
            unsafe { libc::kill(-(self.pid as libc::pid_t), libc::SIGKILL) };
        }
    }

    /// Stops the process: `sig`, then SIGKILL to the group after `grace`.
    pub async fn stop(&self, sig: libc::c_int, grace: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.exited() {
            return Ok(s);
        }
        self.signal(sig)?;
        match self.wait_exit(grace).await {
            Ok(s) => Ok(s),
            Err(_) => {
                self.kill_group();
                self.wait_exit(Duration::from_secs(5)).await
            }
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
    }
}

fn tail_file(path: &Path, lines: usize) -> String {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    // The last 64 KiB are plenty for a tail.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(io::SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A harness's temporary folder (name starting with `prefix`): `logs/` for every process's
/// log, `nginx/` for nginx's prefix. nginx's workers may run as another user (root's default is
/// nobody): the folder lets them in.
pub(crate) fn work_dir(prefix: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::create_dir_all(dir.path().join("logs"))?;
    std::fs::create_dir_all(dir.path().join("nginx"))?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// The log file of process `name` in a [`work_dir`].
pub(crate) fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("logs").join(format!("{name}.log"))
}

/// An nginx started from a [`NginxConf`] in a [`work_dir`] (prefix `nginx/`, log
/// `logs/nginx.log`). Every start and reload is awaited until nginx serves that configuration's
/// generation.
pub(crate) struct Nginx {
    proc_: Proc,
    conf_path: PathBuf,
    timeout: Duration,
}

impl Nginx {
    /// Writes `conf`, starts nginx and waits up to `timeout` until it serves it.
    pub(crate) async fn start(
        bin: &Path,
        dir: &Path,
        conf: &NginxConf,
        timeout: Duration,
    ) -> Result<Nginx> {
        let prefix = dir.join("nginx");
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, nginx_conf(conf)?)?;
        let mut cmd = Command::new(bin);
        cmd.arg("-p")
            .arg(format!("{}/", prefix.display()))
            .args(["-e", "stderr", "-c"])
            .arg(&conf_path)
            .args(["-g", "daemon off;"]);
        // SIGTERM on parent death: the master then stops its workers.
        let proc_ = Proc::spawn(
            cmd,
            "nginx",
            &log_path(dir, "nginx"),
            libc::SIGTERM,
            Echo::Command,
        )?;
        let n = Nginx {
            proc_,
            conf_path,
            timeout,
        };
        n.wait_serving(conf).await?;
        Ok(n)
    }

    /// Rewrites the configuration with `conf` (a new generation) and reloads nginx (SIGHUP),
    /// waiting until the new configuration answers.
    pub(crate) async fn reload(&self, conf: &NginxConf) -> Result<()> {
        std::fs::write(&self.conf_path, nginx_conf(conf)?)?;
        // An nginx that has exited is reported, with its log, by the wait.
        if self.proc_.exited().is_none() {
            self.proc_.signal(libc::SIGHUP)?;
        }
        self.wait_serving(conf).await
    }

    async fn wait_serving(&self, conf: &NginxConf) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], conf.listen_port));
        let want = conf.generation.to_string();
        let want = &want;
        self.proc_
            .wait_for(
                &format!("configuration {want} on {addr}"),
                self.timeout,
                move || async move {
                    matches!(
                        http_get(addr, "/__harness/generation", Duration::from_secs(2)).await,
                        Ok(r) if r.status == 200 && r.body == *want
                    )
                },
            )
            .await
    }

    /// The master process.
    pub(crate) fn proc_(&self) -> &Proc {
        &self.proc_
    }
}

/// One node of the cluster.
pub struct Node {
    pub name: String,
    /// The public port (socket.io), the one nginx routes to.
    pub port: u16,
    /// The admin port (probes, metrics, the publish API); nginx never routes to it.
    pub admin_port: u16,
    /// Still in nginx's upstream list.
    pub in_upstream: bool,
    proc_: Option<Proc>,
}

impl Node {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.admin_port))
    }
    pub fn proc_(&self) -> Option<&Proc> {
        self.proc_.as_ref()
    }
}

/// Redis, N nodes and nginx, running. Dropping it kills everything it started.
pub struct Cluster {
    cfg: ClusterConfig,
    dir: tempfile::TempDir,
    redis_bin: PathBuf,
    redis_port: u16,
    redis: Option<Proc>,
    nodes: Vec<Node>,
    nginx_bin: PathBuf,
    nginx_port: u16,
    nginx_generation: u64,
    nginx: Option<Nginx>,
}

/// What the harness needs besides the server: `(redis-server, nginx)` paths, by the
/// [`require`] policy (`None`: skip).
pub fn require_parts() -> Option<(PathBuf, PathBuf)> {
    let how = "run scripts/deps.sh (apt-get install redis-server nginx)";
    let redis = require::require(
        "redis-server",
        how,
        require::find_program("redis-server", &[]),
    )?;
    let nginx = require::require("nginx", how, require::find_program("nginx", &[]))?;
    Some((redis, nginx))
}

impl Cluster {
    /// Starts Redis, the nodes and nginx, and waits until each is ready.
    pub async fn start(
        cfg: ClusterConfig,
        redis_bin: PathBuf,
        nginx_bin: PathBuf,
    ) -> Result<Cluster> {
        let dir = work_dir("rt-data-plane-")?;
        let redis_port = match cfg.redis_port {
            Some(p) => p,
            None => free_port()?,
        };
        let nginx_port = match cfg.nginx_port {
            Some(p) => p,
            None => free_port()?,
        };
        let mut nodes = Vec::new();
        for i in 0..cfg.nodes {
            let port = match cfg.node_base_port {
                Some(b) => b + i as u16,
                None => free_port()?,
            };
            nodes.push(Node {
                name: format!("n{}", i + 1),
                port,
                admin_port: free_port()?,
                in_upstream: true,
                proc_: None,
            });
        }
        let mut c = Cluster {
            cfg,
            dir,
            redis_bin,
            redis_port,
            redis: None,
            nodes,
            nginx_bin,
            nginx_port,
            nginx_generation: 0,
            nginx: None,
        };
        if c.cfg.external_redis_url.is_none() {
            c.start_redis().await?;
        }
        for i in 0..c.nodes.len() {
            c.spawn_node(i)?;
        }
        for i in 0..c.nodes.len() {
            c.wait_ready(i, c.cfg.start_timeout).await?;
        }
        c.start_nginx().await?;
        Ok(c)
    }

    /// Starts a cluster for a test, with the parts found by the [`require`] policy; `None` when
    /// a part is missing outside CI (the test should return).
    pub async fn for_test(cfg: ClusterConfig) -> Option<Cluster> {
        let (redis, nginx) = require_parts()?;
        Some(
            Cluster::start(cfg, redis, nginx)
                .await
                .expect("starting the data plane (redis, nodes, nginx)"),
        )
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn kind(&self) -> ServerKind {
        self.cfg.server.kind
    }
    /// The endpoint clients use: nginx.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.nginx_port)
    }
    pub fn nginx_port(&self) -> u16 {
        self.nginx_port
    }
    /// The nodes' `REDIS_URL`: the cluster's own redis-server, or the external one.
    pub fn redis_url(&self) -> String {
        match &self.cfg.external_redis_url {
            Some(url) => url.clone(),
            None => format!("redis://127.0.0.1:{}", self.redis_port),
        }
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }
    /// A node's own URL (bypassing nginx).
    pub fn node_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }
    /// Index of the node named `name` (as announced in `hello`).
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The indexes of the nodes in nginx's upstream, in upstream order.
    fn upstream(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].in_upstream)
            .collect()
    }

    /// A source address that nginx `ip_hash` sends to node `i` (the `k`-th such address, so
    /// clients can also differ while landing on one node). Only meaningful with
    /// [`Affinity::IpHash`].
    pub fn source_address_for(&self, i: usize, k: usize) -> String {
        let up = self.upstream();
        let pos = up
            .iter()
            .position(|x| *x == i)
            .unwrap_or_else(|| panic!("node {i} is not in nginx's upstream"));
        ip_hash_source_address(pos, up.len(), k)
            .expect("254 third octets always cover every upstream")
            .to_string()
    }

    /// The node nginx `ip_hash` picks for `source` while the nodes in `down` refuse
    /// connections.
    pub fn ip_hash_node(&self, source: &str, down: &[usize]) -> Option<usize> {
        let up = self.upstream();
        let ip: Ipv4Addr = source.parse().expect("an IPv4 source address");
        let down_pos: Vec<usize> = up
            .iter()
            .enumerate()
            .filter(|(_, n)| down.contains(n))
            .map(|(p, _)| p)
            .collect();
        ip_hash_pick(ip, up.len(), &down_pos).map(|p| up[p])
    }

    fn log_path(&self, name: &str) -> PathBuf {
        log_path(self.dir.path(), name)
    }

    // ---- Redis ----

    /// Starts redis-server on its port (again, after [`Cluster::stop_redis`]) and waits for PONG.
    pub async fn start_redis(&mut self) -> Result<()> {
        if self.cfg.external_redis_url.is_some() {
            bail!("this cluster's nodes use an external Redis; it has no redis-server of its own");
        }
        if self.redis.as_ref().is_some_and(|p| p.exited().is_none()) {
            bail!("redis is running already");
        }
        let mut cmd = Command::new(&self.redis_bin);
        cmd.args([
            "--port",
            &self.redis_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(self.dir.path());
        let p = Proc::spawn(
            cmd,
            "redis",
            &self.log_path("redis"),
            libc::SIGKILL,
            Echo::Command,
        )?;
        let p = self.redis.insert(p);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.redis_port));
        wait_redis(p, addr, None, self.cfg.start_timeout).await
    }

    /// Stops redis-server with `sig` (SIGTERM: a clean shutdown; SIGKILL: a crash).
    pub async fn stop_redis(&mut self, sig: libc::c_int) -> Result<()> {
        let p = self
            .redis
            .as_ref()
            .ok_or_else(|| anyhow!("redis was never started"))?;
        p.stop(sig, Duration::from_secs(5)).await?;
        Ok(())
    }

    /// Stops and starts redis-server on the same port (empty: nothing is persisted).
    pub async fn restart_redis(&mut self) -> Result<()> {
        self.stop_redis(libc::SIGTERM).await?;
        self.start_redis().await
    }

    pub fn redis_proc(&self) -> Option<&Proc> {
        self.redis.as_ref()
    }

    // ---- nodes ----

    fn spawn_node(&mut self, i: usize) -> Result<()> {
        let s = &self.cfg.server;
        let node = &self.nodes[i];
        let mut cmd = Command::new(&s.program);
        cmd.args(&s.args)
            .env("PORT", node.port.to_string())
            .env("ADMIN_PORT", node.admin_port.to_string())
            .env("BIND", "127.0.0.1")
            .env("NAME", &node.name)
            .env("REDIS_URL", self.redis_url())
            .env("RUST_BACKTRACE", "1")
            // logs go to a file that a person reads when a test fails
            .env("NO_COLOR", "1");
        if let Some(d) = &s.cwd {
            cmd.current_dir(d);
        }
        for (k, v) in &self.cfg.env {
            cmd.env(k, v);
        }
        let log = self.log_path(&node.name);
        let p = Proc::spawn(cmd, &node.name, &log, libc::SIGKILL, Echo::Command)?;
        self.nodes[i].proc_ = Some(p);
        Ok(())
    }

    /// GET `path` on node `i`'s public port.
    pub async fn node_get(&self, i: usize, path: &str) -> Result<HttpResponse> {
        http_get(self.nodes[i].addr(), path, Duration::from_secs(5)).await
    }

    /// Where node `i` answers its readiness path and /metrics: realtime-server's admin port;
    /// the Node reference has one port.
    pub fn probe_addr(&self, i: usize) -> SocketAddr {
        match self.kind() {
            ServerKind::Realtime => self.nodes[i].admin_addr(),
            ServerKind::NodeReference => self.nodes[i].addr(),
        }
    }

    /// GET `path` on node `i`'s [probe address](Cluster::probe_addr).
    pub async fn probe_get(&self, i: usize, path: &str) -> Result<HttpResponse> {
        http_get(self.probe_addr(i), path, Duration::from_secs(5)).await
    }

    /// Whether node `i` answers 200 on its readiness path (`false` on any error).
    /// Ready and not degraded: realtime-server stays ready through a Redis outage and says
    /// `degraded` in its `/readyz` body meanwhile; cross-node delivery works only without it.
    pub async fn is_ready(&self, i: usize) -> bool {
        let p = self.cfg.server.readiness_path.clone();
        matches!(self.probe_get(i, &p).await, Ok(r) if r.status == 200 && !r.body.contains("\"degraded\""))
    }

    /// GET /readyz of node `i` (admin port): its status code, or `None` when nothing answers.
    pub async fn readyz(&self, i: usize) -> Option<u16> {
        self.probe_get(i, "/readyz").await.ok().map(|r| r.status)
    }

    /// Waits until node `i` is ready; fails early (with its log) if it exits.
    pub async fn wait_ready(&self, i: usize, timeout: Duration) -> Result<()> {
        let what = format!(
            "readiness (GET {} answers 200)",
            self.cfg.server.readiness_path
        );
        self.node_proc(i)
            .wait_for(&what, timeout, || self.is_ready(i))
            .await
    }

    /// Polls until `f(node ready?)` holds for node `i` (e.g. `|r| !r` for "not ready");
    /// returns how long it took.
    pub async fn wait_readiness(
        &self,
        i: usize,
        want: bool,
        timeout: Duration,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.is_ready(i).await == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "node {}: readiness not {want} within {timeout:?}",
                    self.nodes[i].name
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// GET /metrics of node `i` (Prometheus text).
    pub async fn metrics(&self, i: usize) -> Result<String> {
        let r = self.probe_get(i, "/metrics").await?;
        if r.status != 200 {
            bail!("node {} /metrics: HTTP {}", self.nodes[i].name, r.status);
        }
        Ok(r.body)
    }

    /// The running process of node `i`.
    pub fn node_proc(&self, i: usize) -> &Proc {
        self.nodes[i]
            .proc_
            .as_ref()
            .unwrap_or_else(|| panic!("node {} was never started", self.nodes[i].name))
    }

    /// Sends `sig` to node `i` (SIGTERM: graceful shutdown; SIGKILL: a crash).
    pub fn signal_node(&self, i: usize, sig: libc::c_int) -> Result<()> {
        self.node_proc(i).signal(sig)
    }

    /// Which nodes have exited, with their status.
    pub fn exited_nodes(&self) -> Vec<(String, ExitStatus)> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), n.proc_.as_ref()?.exited()?)))
            .collect()
    }

    /// Starts node `i` again on the same ports and name once its process has exited (a pod
    /// restarted behind a stable Service), and waits until it is ready.
    pub async fn restart_node(&mut self, i: usize) -> Result<()> {
        if let Some(p) = &self.nodes[i].proc_
            && p.exited().is_none()
        {
            bail!("node {} is still running", self.nodes[i].name);
        }
        self.spawn_node(i)?;
        self.wait_ready(i, self.cfg.start_timeout).await
    }

    /// Starts one more node on a free port, waits until it is ready and adds it to nginx's
    /// upstream (scale up). Returns its index.
    pub async fn add_node(&mut self) -> Result<usize> {
        let i = self.nodes.len();
        let name = (1..)
            .map(|k| format!("n{k}"))
            .find(|n| !self.nodes.iter().any(|x| &x.name == n))
            .expect("an unused name");
        self.nodes.push(Node {
            name,
            port: free_port()?,
            admin_port: free_port()?,
            in_upstream: true,
            proc_: None,
        });
        self.spawn_node(i)?;
        self.wait_ready(i, self.cfg.start_timeout).await?;
        self.reload_nginx().await?;
        Ok(i)
    }

    /// Takes node `i` out of nginx's upstream, then stops it with SIGTERM (scale down), waiting
    /// up to `grace` before SIGKILL.
    pub async fn remove_node(&mut self, i: usize, grace: Duration) -> Result<ExitStatus> {
        self.nodes[i].in_upstream = false;
        self.reload_nginx().await?;
        self.node_proc(i).stop(libc::SIGTERM, grace).await
    }

    /// One step of a rolling update (maxSurge 1, maxUnavailable 0): a new node joins the
    /// upstream, then node `i` leaves it and gets SIGTERM. Returns the new node's index.
    pub async fn roll_node(&mut self, i: usize, grace: Duration) -> Result<usize> {
        let new = self.add_node().await?;
        self.remove_node(i, grace).await?;
        Ok(new)
    }

    // ---- nginx ----

    fn nginx_conf(&self) -> NginxConf {
        let upstream = self
            .upstream()
            .iter()
            .map(|i| self.nodes[*i].port)
            .collect();
        NginxConf {
            worker_processes: self.cfg.nginx_workers,
            worker_connections: self.cfg.nginx_worker_connections,
            generation: self.nginx_generation,
            ..NginxConf::new(self.nginx_port, upstream, self.cfg.affinity.clone())
        }
    }

    async fn start_nginx(&mut self) -> Result<()> {
        let conf = self.nginx_conf();
        let n = Nginx::start(
            &self.nginx_bin,
            self.dir.path(),
            &conf,
            self.cfg.start_timeout,
        );
        self.nginx = Some(n.await?);
        Ok(())
    }

    /// Rewrites nginx.conf from the current upstream and reloads nginx (SIGHUP), waiting until
    /// the new configuration answers.
    pub async fn reload_nginx(&mut self) -> Result<()> {
        self.nginx_generation += 1;
        let conf = self.nginx_conf();
        self.nginx
            .as_ref()
            .ok_or_else(|| anyhow!("nginx is not running"))?
            .reload(&conf)
            .await
    }

    pub fn nginx_proc(&self) -> Option<&Proc> {
        self.nginx.as_ref().map(Nginx::proc_)
    }

    /// PIDs in rtbench's `--pids` format: `n1=PID,...,redis=PID,nginx=MASTER+WORKER+...`.
    pub fn pids(&self) -> String {
        let mut parts: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|n| Some(format!("{}={}", n.name, n.proc_.as_ref()?.pid())))
            .collect();
        if let Some(r) = &self.redis {
            parts.push(format!("redis={}", r.pid()));
        }
        if let Some(n) = self.nginx_proc() {
            let mut all = vec![n.pid()];
            all.extend(children_of(n.pid()));
            parts.push(format!(
                "nginx={}",
                all.iter().map(u32::to_string).collect::<Vec<_>>().join("+")
            ));
        }
        parts.join(",")
    }

    /// Every process's log tail, for a failing test.
    pub fn logs(&self, lines: usize) -> String {
        let mut s = String::new();
        let procs = self
            .nodes
            .iter()
            .filter_map(|n| n.proc_.as_ref())
            .chain(self.redis.as_ref())
            .chain(self.nginx_proc());
        for p in procs {
            let _ = write!(
                s,
                "\n---- {} (pid {}) {} ----\n{}\n",
                p.name(),
                p.pid(),
                p.log_path().display(),
                p.log_tail(lines)
            );
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== data plane logs ({}) ====", self.dir.path().display());
            eprintln!("{}", self.logs(60));
        }
        // Proc's drop kills each group; nginx first so that clients see no half-dead proxy.
        self.nginx.take();
        for n in &mut self.nodes {
            n.proc_.take();
        }
        self.redis.take();
    }
}

/// Direct children of `pid` (from /proc), e.g. nginx's workers.
fn children_of(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in rd.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // ppid is the 2nd field after the parenthesised command name
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            v.push(child);
        }
    }
    v.sort();
    v
}

/// AUTH (when a password is given) and PING over RESP.
async fn redis_ping(addr: SocketAddr, password: Option<&str>) -> Result<()> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut req = String::new();
        let mut want = String::new();
        if let Some(p) = password {
            req.push_str(&format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{p}\r\n", p.len()));
            want.push_str("+OK\r\n");
        }
        req.push_str("*1\r\n$4\r\nPING\r\n");
        want.push_str("+PONG\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = vec![0u8; want.len()];
        s.read_exact(&mut buf).await?;
        anyhow::ensure!(
            buf == want.as_bytes(),
            "answered {:?}",
            String::from_utf8_lossy(&buf)
        );
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(1), fut).await?
}

/// Waits up to `timeout` until the redis-server `p` answers PING on `addr` (after AUTH with
/// `password`).
pub(crate) async fn wait_redis(
    p: &Proc,
    addr: SocketAddr,
    password: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let what = format!("a PONG on {addr}");
    p.wait_for(&what, timeout, move || async move {
        redis_ping(addr, password).await.is_ok()
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_hash_matches_nginx_arithmetic() {
        // 127.0.0.x: hash = 89 -> (89*113+127)%6271 = 3913 -> (3913*113+0)%6271 = 3199
        //            -> (3199*113+0)%6271 = 4040
        assert_eq!(ip_hash_sequence(Ipv4Addr::new(127, 0, 0, 1), 6271)[0], 4040);
        // only the first three octets count
        assert_eq!(
            ip_hash_sequence(Ipv4Addr::new(127, 0, 0, 2), 3),
            ip_hash_sequence(Ipv4Addr::new(127, 0, 0, 200), 3)
        );
        assert_eq!(ip_hash_sequence(Ipv4Addr::new(127, 0, 7, 1), 3).len(), 20);
    }

    #[test]
    fn ip_hash_sources_land_where_asked() {
        for n in 1..=4 {
            for i in 0..n {
                for k in 0..3 {
                    let ip = ip_hash_source_address(i, n, k).unwrap();
                    assert_eq!(ip_hash_sequence(ip, n)[0], i);
                    assert_eq!(ip.octets()[3], 1);
                }
            }
        }
        let a = ip_hash_source_address(0, 3, 0).unwrap();
        let b = ip_hash_source_address(0, 3, 1).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn ip_hash_pick_skips_down_servers() {
        let ip = ip_hash_source_address(1, 3, 0).unwrap();
        assert_eq!(ip_hash_pick(ip, 3, &[]), Some(1));
        let next = ip_hash_pick(ip, 3, &[1]).unwrap();
        assert_ne!(next, 1);
        assert_eq!(
            next,
            *ip_hash_sequence(ip, 3).iter().find(|x| **x != 1).unwrap()
        );
        assert_eq!(ip_hash_pick(ip, 3, &[0, 1, 2]), None);
    }

    #[test]
    fn nginx_conf_modes() {
        let mut c = NginxConf {
            worker_processes: 1,
            worker_connections: 1024,
            generation: 3,
            ..NginxConf::new(8080, vec![3001, 3002], Affinity::IpHash)
        };
        let s = nginx_conf(&c).unwrap();
        assert!(s.contains("    ip_hash;\n"));
        assert!(s.contains("server 127.0.0.1:3001;\n    server 127.0.0.1:3002;"));
        assert!(s.contains("listen 127.0.0.1:8080 backlog=1024;"));
        assert!(s.contains("return 200 \"3\";"));
        assert!(s.contains("location / {"));
        assert!(s.contains("proxy_read_timeout 3600s;"));
        assert!(s.contains("worker_shutdown_timeout 5s;"));
        assert!(!s.contains("Set-Cookie"));
        assert_eq!(s.matches('{').count(), s.matches('}').count());

        c.affinity = Affinity::cookie();
        let s = nginx_conf(&c).unwrap();
        assert!(s.contains("hash $rt_affinity_key consistent;"));
        assert!(s.contains("\"~(?:^|;)\\s*INGRESSCOOKIE=(?<v>[^;]+)\" $v;"));
        assert!(s.contains("\"INGRESSCOOKIE=$request_id; Path=/; HttpOnly\""));
        assert!(s.contains("add_header Set-Cookie $rt_set_cookie always;"));
        assert!(!s.contains("ip_hash"));
        assert_eq!(s.matches('{').count(), s.matches('}').count());

        c.affinity = Affinity::ClientAddress;
        let s = nginx_conf(&c).unwrap();
        assert!(s.contains("hash $remote_addr consistent;"));
        assert!(!s.contains("ip_hash") && !s.contains("Set-Cookie"));
    }

    #[test]
    fn cookie_names_with_dashes_are_parsed_from_the_header() {
        let c = NginxConf {
            affinity: Affinity::Cookie {
                name: "rt-affinity".into(),
                path: "/chat".into(),
                max_age: Some(172_800),
            },
            path: "/socket.io/".into(),
            timeouts: ProxyTimeouts {
                read_secs: 60,
                send_secs: 50,
                connect_secs: 5,
            },
            ..NginxConf::new(8080, vec![3001], Affinity::IpHash)
        };
        let s = nginx_conf(&c).unwrap();
        assert!(
            !s.contains("$cookie_"),
            "nginx's $cookie_ variables cannot name rt-affinity"
        );
        assert!(s.contains("\"~(?:^|;)\\s*rt-affinity=(?<v>[^;]+)\" $v;"));
        assert!(s.contains("hash $rt_affinity_key consistent;"));
        assert!(s.contains("\"rt-affinity=$request_id; Path=/chat; Max-Age=172800; HttpOnly\""));
        assert!(s.contains("location /socket.io/ {"));
        assert!(s.contains(
            "proxy_read_timeout 60s;\n      proxy_send_timeout 50s;\n      proxy_connect_timeout 5s;"
        ));
        assert_eq!(s.matches('{').count(), s.matches('}').count());
    }

    #[test]
    fn cookie_names_are_escaped_or_refused() {
        let conf = |name: &str| {
            nginx_conf(&NginxConf::new(
                8080,
                vec![3001],
                Affinity::named_cookie(name),
            ))
        };
        // token characters that are regex operators match literally
        let s = conf("a.b+c").unwrap();
        assert!(
            s.contains("\"~(?:^|;)\\s*a\\.b\\+c=(?<v>[^;]+)\" $v;"),
            "{s}"
        );
        assert!(s.contains("\"a.b+c=$request_id; Path=/; HttpOnly\""));
        // not a cookie token, or a `$` nginx would read as a variable
        for bad in ["", "a b", "a;b", "a=b", "a\"b", "a$b", "a{b", "é"] {
            assert!(conf(bad).is_err(), "{bad:?}");
        }
        let bad_path = Affinity::Cookie {
            name: "c".into(),
            path: "/a;b".into(),
            max_age: None,
        };
        assert!(bad_path.check().is_err());
        let mut c = NginxConf::new(8080, vec![3001], Affinity::IpHash);
        c.path = "socket.io".into();
        assert!(nginx_conf(&c).is_err(), "a location path starts with /");
    }

    #[tokio::test]
    async fn waits_end_early_with_the_log_when_the_process_exits() {
        let dir = work_dir("rt-proc-test-").unwrap();
        let log = log_path(dir.path(), "sh");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo boom; exit 3"]);
        let p = Proc::spawn(cmd, "sh", &log, libc::SIGKILL, Echo::Program).unwrap();
        let t0 = Instant::now();
        let e = p
            .wait_for("godot", Duration::from_secs(30), || async { false })
            .await
            .unwrap_err()
            .to_string();
        assert!(t0.elapsed() < Duration::from_secs(10), "{e}");
        assert!(
            e.starts_with("sh exited (exit status: 3) while waiting for godot"),
            "{e}"
        );
        assert!(e.contains("boom"), "{e}");
        // the log's head names the program only
        assert!(e.contains("starting sh: \"/bin/sh\"\n"), "{e}");

        let mut cmd = Command::new("/bin/sleep");
        cmd.arg("30");
        let p = Proc::spawn(cmd, "sleep", &log, libc::SIGKILL, Echo::Command).unwrap();
        let e = p
            .wait_for("godot", Duration::from_millis(100), || async { false })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("sleep: still waiting for godot after 100ms"),
            "{e}"
        );
        assert!(
            e.contains("\"/bin/sleep\" \"30\""),
            "the whole command: {e}"
        );
        let mut n = 0;
        p.wait_for("the third poll", Duration::from_secs(5), || {
            n += 1;
            std::future::ready(n == 3)
        })
        .await
        .unwrap();
        let s = p.stop(libc::SIGTERM, Duration::from_secs(5)).await.unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(s.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn http_responses_parse() {
        let r = parse_http_response(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\r\nnot ready",
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.header("Content-Type"), Some("text/plain"));
        assert_eq!(r.body, "not ready");
        assert!(parse_http_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_http_response(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn metric_values_sum_matching_series() {
        let text = "# HELP x y\n# TYPE events_total counter\n\
                    events_total{dir=\"in\",kind=\"publish\"} 3\n\
                    events_total{dir=\"in\",kind=\"join\"} 2\n\
                    events_total{dir=\"out\",kind=\"publish\"} 7\n\
                    sockets 4\n";
        assert_eq!(
            metric_value(text, "events_total", &[("dir", "in")]),
            Some(5.0)
        );
        assert_eq!(
            metric_value(text, "events_total", &[("kind", "publish"), ("dir", "out")]),
            Some(7.0)
        );
        assert_eq!(metric_value(text, "sockets", &[]), Some(4.0));
        assert_eq!(metric_value(text, "missing", &[]), None);
        assert_eq!(
            metric_value(text, "events_total", &[("dir", "sideways")]),
            None
        );
    }
}

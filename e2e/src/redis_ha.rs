//! Redis without a single point of failure, on loopback: a Sentinel group (a primary
//! `redis-server`, replicas started with `replicaof`, and `redis-sentinel` processes), each on a
//! free 127.0.0.1 port in a temporary folder, for the failover tests of the data plane
//! (`e2e/tests/redis_ha.rs`).
//!
//! Every process starts from a config file that the harness writes (passwords are in no
//! command line): the data nodes with `requirepass` and `masterauth`, the Sentinels with
//! `sentinel auth-pass` (to reach the data nodes), `requirepass` (clients must authenticate to
//! them) and `sentinel sentinel-pass` (to reach each other). [`SentinelGroup::start`] returns
//! once every replica replicates and every Sentinel knows all replicas and all other
//! Sentinels, so a failover can happen at once.
//!
//! The harness talks RESP itself ([`command`]), without a client library, as the rest of the
//! data plane does. Processes are killed on drop, like [`crate::data_plane`]'s.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::data_plane::{Echo, Proc, free_port, log_path, work_dir};
use crate::require;

/// What to start.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    /// Replicas of the first primary.
    pub replicas: usize,
    pub sentinels: usize,
    /// Sentinels that must agree the primary is down before a failover.
    pub quorum: usize,
    /// The monitored group's name (`sentinelServiceName` in the clients' URL).
    pub master_name: String,
    /// `sentinel down-after-milliseconds`: how long a primary may be silent before a Sentinel
    /// thinks it is down. Keep it at 1500 ms or more: a Sentinel that learns of a failover from
    /// its peers reconnects to the new primary up to 1 s later (its reconnect throttle) and
    /// counts that time as silence, so 1000 ms made it fail the new primary over again under
    /// load (seen in a loop of this test with two busy cores).
    pub down_after: Duration,
    /// `sentinel failover-timeout`; also the pause (twice this) before a Sentinel retries a
    /// failover of the same group.
    pub failover_timeout: Duration,
    /// The data nodes' password (`requirepass`, `masterauth`; the Sentinels' `auth-pass`).
    pub password: Option<String>,
    /// The Sentinels' own password (`requirepass` and `sentinel sentinel-pass` in
    /// sentinel.conf).
    pub sentinel_password: Option<String>,
    /// Bound for the whole group to be up, replicating and known to every Sentinel.
    pub start_timeout: Duration,
}

impl Default for SentinelConfig {
    /// 2 replicas, 3 Sentinels with a quorum of 2, master `rt-primary`, down after 1.5 s,
    /// failover timeout 3 s, no passwords.
    fn default() -> Self {
        SentinelConfig {
            replicas: 2,
            sentinels: 3,
            quorum: 2,
            master_name: "rt-primary".into(),
            down_after: Duration::from_millis(1500),
            failover_timeout: Duration::from_secs(3),
            password: None,
            sentinel_password: None,
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// One process of the group.
struct Member {
    name: String,
    port: u16,
    proc_: Option<Proc>,
}

/// A running Sentinel group; dropping it kills every process.
pub struct SentinelGroup {
    cfg: SentinelConfig,
    dir: tempfile::TempDir,
    redis_bin: PathBuf,
    /// `servers[0]` is the first primary, the others its replicas.
    servers: Vec<Member>,
    sentinels: Vec<Member>,
}

/// `(redis-server, redis-sentinel)`, by the [`require`] policy (`None`: skip).
pub fn require_parts() -> Option<(PathBuf, PathBuf)> {
    let how = "run scripts/deps.sh (apt-get install redis-server redis-sentinel)";
    let redis = require::require(
        "redis-server",
        how,
        require::find_program("redis-server", &[]),
    )?;
    let sentinel = require::require(
        "redis-sentinel",
        how,
        require::find_program("redis-sentinel", &[]),
    )?;
    Some((redis, sentinel))
}

/// redis.conf of a data node (pure).
pub fn server_conf(cfg: &SentinelConfig, port: u16, dir: &Path, replica_of: Option<u16>) -> String {
    let mut s = format!(
        "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\nsave \"\"\nappendonly no\n\
         dir {}\n",
        dir.display()
    );
    if let Some(pw) = &cfg.password {
        let _ = writeln!(s, "requirepass {pw}\nmasterauth {pw}");
    }
    if let Some(p) = replica_of {
        let _ = writeln!(s, "replicaof 127.0.0.1 {p}");
    }
    s
}

/// sentinel.conf of one Sentinel that monitors the primary on `primary_port` (pure).
pub fn sentinel_conf(cfg: &SentinelConfig, port: u16, dir: &Path, primary_port: u16) -> String {
    let m = &cfg.master_name;
    let mut s = format!(
        "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\ndir {}\n\
         sentinel monitor {m} 127.0.0.1 {primary_port} {q}\n\
         sentinel down-after-milliseconds {m} {down}\n\
         sentinel failover-timeout {m} {failover}\n\
         sentinel parallel-syncs {m} 1\n",
        dir.display(),
        q = cfg.quorum,
        down = cfg.down_after.as_millis(),
        failover = cfg.failover_timeout.as_millis(),
    );
    if let Some(pw) = &cfg.password {
        let _ = writeln!(s, "sentinel auth-pass {m} {pw}");
    }
    if let Some(pw) = &cfg.sentinel_password {
        let _ = writeln!(s, "requirepass {pw}\nsentinel sentinel-pass {pw}");
    }
    s
}

impl SentinelGroup {
    /// Starts the primary, its replicas and the Sentinels, and waits (up to
    /// [`SentinelConfig::start_timeout`]) until the replicas replicate and every Sentinel knows
    /// the replicas and the other Sentinels.
    pub async fn start(
        cfg: SentinelConfig,
        redis_bin: PathBuf,
        sentinel_bin: PathBuf,
    ) -> Result<SentinelGroup> {
        if cfg.quorum == 0 || cfg.quorum > cfg.sentinels {
            bail!(
                "quorum {} of {} Sentinels cannot work",
                cfg.quorum,
                cfg.sentinels
            );
        }
        let dir = work_dir("rt-redis-ha-")?;
        let mut g = SentinelGroup {
            servers: (0..=cfg.replicas)
                .map(|i| {
                    Ok(Member {
                        name: format!("redis-{i}"),
                        port: free_port()?,
                        proc_: None,
                    })
                })
                .collect::<Result<_>>()?,
            sentinels: (0..cfg.sentinels)
                .map(|i| {
                    Ok(Member {
                        name: format!("sentinel-{i}"),
                        port: free_port()?,
                        proc_: None,
                    })
                })
                .collect::<Result<_>>()?,
            cfg,
            dir,
            redis_bin,
        };
        let deadline = Instant::now() + g.cfg.start_timeout;
        let primary = g.servers[0].port;
        for i in 0..g.servers.len() {
            let replica_of = (i > 0).then_some(primary);
            g.spawn_server(i, replica_of)?;
        }
        let pw = g.cfg.password.as_deref();
        for (i, m) in g.servers.iter().enumerate() {
            let addr = g.server_addr(i);
            let p = m.proc_.as_ref().expect("just spawned");
            p.wait_for(
                "a PONG",
                deadline.saturating_duration_since(Instant::now()),
                move || async move { ping(addr, pw).await.is_ok() },
            )
            .await?;
        }
        for (i, m) in g.servers.iter().enumerate().skip(1) {
            let addr = g.server_addr(i);
            let p = m.proc_.as_ref().expect("just spawned");
            p.wait_for(
                "master_link_status:up",
                deadline.saturating_duration_since(Instant::now()),
                move || async move {
                    matches!(
                        command(addr, pw, &["INFO", "replication"]).await,
                        Ok(Resp::Bulk(Some(info))) if info.contains("master_link_status:up")
                    )
                },
            )
            .await?;
        }
        for i in 0..g.sentinels.len() {
            let m = &g.sentinels[i];
            let conf = g.dir.path().join(format!("{}.conf", m.name));
            std::fs::write(&conf, sentinel_conf(&g.cfg, m.port, g.dir.path(), primary))?;
            let mut cmd = Command::new(&sentinel_bin);
            cmd.arg(&conf);
            let p = Proc::spawn(
                cmd,
                &m.name,
                &log_path(g.dir.path(), &m.name),
                libc::SIGKILL,
                Echo::Command,
            )?;
            g.sentinels[i].proc_ = Some(p);
        }
        let want_replicas = &g.cfg.replicas.to_string();
        let want_others = &(g.cfg.sentinels - 1).to_string();
        let gr = &g;
        for (i, m) in g.sentinels.iter().enumerate() {
            let p = m.proc_.as_ref().expect("just spawned");
            let what = format!("{want_replicas} replicas and {want_others} other Sentinels known");
            p.wait_for(
                &what,
                deadline.saturating_duration_since(Instant::now()),
                move || async move {
                    let Ok(m) = gr.sentinel_master(i).await else {
                        return false;
                    };
                    field(&m, "num-slaves") == Some(want_replicas)
                        && field(&m, "num-other-sentinels") == Some(want_others)
                        && field(&m, "flags") == Some("master")
                },
            )
            .await?;
        }
        Ok(g)
    }

    /// Starts data node `i` (again) from its config file.
    fn spawn_server(&mut self, i: usize, replica_of: Option<u16>) -> Result<()> {
        let m = &self.servers[i];
        let data = self.dir.path().join(&m.name);
        std::fs::create_dir_all(&data)?;
        let conf = self.dir.path().join(format!("{}.conf", m.name));
        std::fs::write(&conf, server_conf(&self.cfg, m.port, &data, replica_of))?;
        let mut cmd = Command::new(&self.redis_bin);
        cmd.arg(&conf);
        let p = Proc::spawn(
            cmd,
            &m.name,
            &log_path(self.dir.path(), &m.name),
            libc::SIGKILL,
            Echo::Command,
        )?;
        self.servers[i].proc_ = Some(p);
        Ok(())
    }

    pub fn config(&self) -> &SentinelConfig {
        &self.cfg
    }

    /// The clients' `REDIS_URL`: `redis-sentinel://` with every Sentinel, no password (they
    /// are `REDIS_PASSWORD` and `REDIS_SENTINEL_PASSWORD`).
    pub fn url(&self) -> String {
        let mut s = format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={}",
            self.sentinels[0].port, self.cfg.master_name
        );
        for m in &self.sentinels[1..] {
            let _ = write!(s, "&node=127.0.0.1:{}", m.port);
        }
        s
    }

    /// The Sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|m| m.port).collect()
    }

    /// The data nodes' ports; index 0 was the first primary.
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(|m| m.port).collect()
    }

    fn server_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.servers[i].port))
    }

    fn sentinel_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sentinels[i].port))
    }

    /// Index of the data node on `port`.
    pub fn server_index(&self, port: u16) -> Option<usize> {
        self.servers.iter().position(|m| m.port == port)
    }

    /// `SENTINEL MASTER <name>` of Sentinel `i`, as field/value pairs.
    pub async fn sentinel_master(&self, i: usize) -> Result<Vec<(String, String)>> {
        let r = command(
            self.sentinel_addr(i),
            self.cfg.sentinel_password.as_deref(),
            &["SENTINEL", "MASTER", &self.cfg.master_name],
        )
        .await?;
        pairs(r)
    }

    /// The primary's port as Sentinel `i` names it (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub async fn primary_by(&self, i: usize) -> Result<u16> {
        let r = command(
            self.sentinel_addr(i),
            self.cfg.sentinel_password.as_deref(),
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.cfg.master_name],
        )
        .await?;
        match r {
            Resp::Array(Some(v)) if v.len() == 2 => match &v[1] {
                Resp::Bulk(Some(p)) => p.parse().context("primary port"),
                other => bail!("GET-MASTER-ADDR-BY-NAME port: {other:?}"),
            },
            other => bail!("GET-MASTER-ADDR-BY-NAME: {other:?}"),
        }
    }

    /// The primary's port, when every Sentinel names the same one.
    pub async fn primary(&self) -> Result<u16> {
        let mut seen = Vec::new();
        for i in 0..self.sentinels.len() {
            seen.push(self.primary_by(i).await?);
        }
        seen.dedup();
        match seen[..] {
            [p] => Ok(p),
            _ => bail!("the Sentinels disagree on the primary: {seen:?}"),
        }
    }

    /// The `ROLE` of the data node on `port`: `master`, `slave`, ...
    pub async fn role(&self, port: u16) -> Result<String> {
        let i = self
            .server_index(port)
            .ok_or_else(|| anyhow!("no data node on port {port}"))?;
        match command(self.server_addr(i), self.cfg.password.as_deref(), &["ROLE"]).await? {
            Resp::Array(Some(v)) => match v.first() {
                Some(Resp::Bulk(Some(r))) => Ok(r.clone()),
                other => bail!("ROLE: {other:?}"),
            },
            other => bail!("ROLE: {other:?}"),
        }
    }

    /// Sends `sig` to the data node on `port` (SIGKILL: the machine is gone).
    pub fn signal_server(&self, port: u16, sig: libc::c_int) -> Result<()> {
        let i = self
            .server_index(port)
            .ok_or_else(|| anyhow!("no data node on port {port}"))?;
        self.servers[i]
            .proc_
            .as_ref()
            .ok_or_else(|| anyhow!("{} is not running", self.servers[i].name))?
            .signal(sig)
    }

    /// Polls every `every` until all Sentinels name a primary other than `old` and it says
    /// `ROLE master`; returns its port and when that was first seen.
    pub async fn wait_new_primary(&self, old: u16, timeout: Duration) -> Result<(u16, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(p) = self.primary().await
                && p != old
                && self.role(p).await.is_ok_and(|r| r == "master")
            {
                return Ok((p, Instant::now()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "no replica was promoted within {timeout:?} (the primary was on {old}):{}",
                    self.logs(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Which data nodes and Sentinels have exited.
    pub fn exited(&self) -> Vec<String> {
        self.servers
            .iter()
            .chain(&self.sentinels)
            .filter_map(|m| {
                let s = m.proc_.as_ref()?.exited()?;
                Some(format!("{} ({s})", m.name))
            })
            .collect()
    }

    /// Every process's log tail.
    pub fn logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for m in self.servers.iter().chain(&self.sentinels) {
            if let Some(p) = &m.proc_ {
                let _ = write!(
                    s,
                    "\n---- {} (port {}, pid {}) ----\n{}\n",
                    m.name,
                    m.port,
                    p.pid(),
                    p.log_tail(lines)
                );
            }
        }
        s
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== redis sentinel group logs ({}) ====",
                self.dir.path().display()
            );
            eprintln!("{}", self.logs(40));
        }
        // Sentinels first, so that none fails over while the data nodes go.
        for m in &mut self.sentinels {
            m.proc_.take();
        }
        for m in &mut self.servers {
            m.proc_.take();
        }
    }
}

/// The value of `name` in field/value pairs.
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A flat RESP array of bulk strings (`k1 v1 k2 v2 ...`) as pairs (pure).
pub fn pairs(r: Resp) -> Result<Vec<(String, String)>> {
    let Resp::Array(Some(v)) = r else {
        bail!("not an array: {r:?}");
    };
    let mut out = Vec::new();
    let mut it = v.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match (k, v) {
            (Resp::Bulk(Some(k)), Resp::Bulk(Some(v))) => out.push((k, v)),
            (k, v) => bail!("not a bulk string pair: {k:?} {v:?}"),
        }
    }
    Ok(out)
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

/// Parses one RESP2 value at the start of `buf` (pure): `Ok(None)` while it is incomplete,
/// else the value and how many bytes it took.
pub fn parse_resp(buf: &[u8]) -> Result<Option<(Resp, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    if end == 0 {
        bail!("empty RESP line");
    }
    let line = std::str::from_utf8(&buf[1..end]).context("RESP line")?;
    let after = end + 2;
    let int = || {
        line.parse::<i64>()
            .with_context(|| format!("RESP length {line:?}"))
    };
    Ok(Some(match buf[0] {
        b'+' => (Resp::Simple(line.into()), after),
        b'-' => (Resp::Error(line.into()), after),
        b':' => (Resp::Int(int()?), after),
        b'$' => {
            let n = int()?;
            if n < 0 {
                (Resp::Bulk(None), after)
            } else {
                let n = n as usize;
                if buf.len() < after + n + 2 {
                    return Ok(None);
                }
                let s = String::from_utf8_lossy(&buf[after..after + n]).into_owned();
                (Resp::Bulk(Some(s)), after + n + 2)
            }
        }
        b'*' => {
            let n = int()?;
            if n < 0 {
                (Resp::Array(None), after)
            } else {
                let mut at = after;
                let mut items = Vec::new();
                for _ in 0..n {
                    match parse_resp(&buf[at..])? {
                        Some((v, used)) => {
                            items.push(v);
                            at += used;
                        }
                        None => return Ok(None),
                    }
                }
                (Resp::Array(Some(items)), at)
            }
        }
        other => bail!("unknown RESP type byte {:?}", other as char),
    }))
}

/// A RESP2 command (pure encoding).
pub fn encode_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One command on a fresh connection to `addr` (after `AUTH password` when given), bounded to
/// 2 s. An error reply is an error.
pub async fn command(addr: SocketAddr, password: Option<&str>, args: &[&str]) -> Result<Resp> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await?;
        let mut req = Vec::new();
        let mut replies = 1;
        if let Some(pw) = password {
            req.extend(encode_command(&["AUTH", pw]));
            replies += 1;
        }
        req.extend(encode_command(args));
        s.write_all(&req).await?;
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        while got.len() < replies {
            match parse_resp(&buf)? {
                Some((v, used)) => {
                    buf.drain(..used);
                    got.push(v);
                    continue;
                }
                None => {
                    let n = s.read(&mut chunk).await?;
                    if n == 0 {
                        bail!("connection closed after {} of {replies} replies", got.len());
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
        anyhow::Ok(got)
    };
    let what = format!("{} on {addr}", args.first().copied().unwrap_or_default());
    let mut got = tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .map_err(|_| anyhow!("{what}: no reply within 2s"))?
        .with_context(|| what.clone())?;
    if let Some(Resp::Error(e)) = got.first()
        && password.is_some()
    {
        bail!("{what}: AUTH refused: {e}");
    }
    match got.pop() {
        Some(Resp::Error(e)) => bail!("{what}: {e}"),
        Some(v) => Ok(v),
        None => bail!("{what}: no reply"),
    }
}

/// PING (after AUTH) answered by PONG.
pub async fn ping(addr: SocketAddr, password: Option<&str>) -> Result<()> {
    match command(addr, password, &["PING"]).await? {
        Resp::Simple(s) if s == "PONG" => Ok(()),
        other => bail!("PING answered {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_values_parse_and_wait_for_the_rest() {
        assert_eq!(
            parse_resp(b"+OK\r\n").unwrap(),
            Some((Resp::Simple("OK".into()), 5))
        );
        assert_eq!(
            parse_resp(b"-ERR no\r\n+x").unwrap(),
            Some((Resp::Error("ERR no".into()), 9))
        );
        assert_eq!(parse_resp(b":42\r\n").unwrap(), Some((Resp::Int(42), 5)));
        assert_eq!(parse_resp(b"$-1\r\n").unwrap(), Some((Resp::Bulk(None), 5)));
        let arr = b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n";
        assert_eq!(
            parse_resp(arr).unwrap(),
            Some((
                Resp::Array(Some(vec![
                    Resp::Bulk(Some("127.0.0.1".into())),
                    Resp::Bulk(Some("6380".into()))
                ])),
                arr.len()
            ))
        );
        // every proper prefix is incomplete, not an error
        for n in 0..arr.len() {
            assert_eq!(parse_resp(&arr[..n]).unwrap(), None, "{n}");
        }
        assert!(parse_resp(b"?x\r\n").is_err());
        assert!(parse_resp(b"$x\r\n").is_err());
    }

    #[test]
    fn commands_encode_as_bulk_arrays() {
        assert_eq!(
            encode_command(&["AUTH", "pw"]),
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n".to_vec()
        );
        let p = pairs(
            parse_resp(b"*4\r\n$4\r\nname\r\n$1\r\nm\r\n$5\r\nflags\r\n$6\r\nmaster\r\n")
                .unwrap()
                .unwrap()
                .0,
        )
        .unwrap();
        assert_eq!(field(&p, "flags"), Some("master"));
        assert_eq!(field(&p, "nope"), None);
    }

    #[test]
    fn config_files_carry_the_passwords_and_the_timings() {
        let cfg = SentinelConfig {
            password: Some("data-pw".into()),
            sentinel_password: Some("sentinel-pw".into()),
            ..SentinelConfig::default()
        };
        let dir = Path::new("/tmp/x");
        let s = server_conf(&cfg, 7001, dir, Some(7000));
        assert!(s.contains("port 7001\n"), "{s}");
        assert!(
            s.contains("requirepass data-pw\nmasterauth data-pw\n"),
            "{s}"
        );
        assert!(s.contains("replicaof 127.0.0.1 7000\n"), "{s}");
        assert!(!server_conf(&cfg, 7000, dir, None).contains("replicaof"));
        let s = sentinel_conf(&cfg, 26001, dir, 7000);
        assert!(
            s.contains("sentinel monitor rt-primary 127.0.0.1 7000 2\n"),
            "{s}"
        );
        assert!(
            s.contains("sentinel down-after-milliseconds rt-primary 1500\n"),
            "{s}"
        );
        assert!(
            s.contains("sentinel failover-timeout rt-primary 3000\n"),
            "{s}"
        );
        assert!(s.contains("sentinel auth-pass rt-primary data-pw\n"), "{s}");
        assert!(
            s.contains("requirepass sentinel-pw\nsentinel sentinel-pass sentinel-pw\n"),
            "{s}"
        );
        let none = SentinelConfig::default();
        assert!(!sentinel_conf(&none, 26001, dir, 7000).contains("pass"));
        assert!(!server_conf(&none, 7000, dir, None).contains("pass"));
    }
}

//! Redis Cluster on loopback: `redis-server` processes in cluster mode (by default 3 masters
//! and one replica each), each on a free 127.0.0.1 port in a temporary folder, joined with
//! `redis-cli --cluster create`, for the failover tests of the data plane
//! (`e2e/tests/redis_cluster.rs`).
//!
//! Every node starts from a config file the harness writes (`requirepass` and `masterauth`
//! there; `redis-cli` gets the password through `REDISCLI_AUTH`: no password is on a command
//! line). [`RedisCluster::start`] returns once every node says `cluster_state:ok`, knows every
//! other node, agrees on who serves each slot, and every replica replicates: a failover can
//! happen at once.
//!
//! The harness talks RESP itself ([`crate::redis_ha::command`]). Processes are killed on drop.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::Command;

use crate::data_plane::{Echo, Proc, free_port, log_path, work_dir};
use crate::redis_ha::{Resp, command, ping};
use crate::require;

/// What to start.
#[derive(Debug, Clone)]
pub struct RedisClusterConfig {
    pub masters: usize,
    /// Replicas of each master.
    pub replicas_per_master: usize,
    /// `cluster-node-timeout`: how long a node may be unreachable before the others count it
    /// as failing (and its replica takes over).
    pub node_timeout: Duration,
    /// `requirepass` and `masterauth` of every node.
    pub password: Option<String>,
    /// Bound for the whole cluster to be up, joined and replicating.
    pub start_timeout: Duration,
}

impl Default for RedisClusterConfig {
    /// 3 masters with one replica each, node timeout 1 s, no password.
    fn default() -> Self {
        RedisClusterConfig {
            masters: 3,
            replicas_per_master: 1,
            node_timeout: Duration::from_millis(1000),
            password: None,
            start_timeout: Duration::from_secs(40),
        }
    }
}

/// One node as `CLUSTER NODES` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLine {
    pub id: String,
    pub port: u16,
    /// `myself`, `master`, `slave`, `fail?`, `fail`, ...
    pub flags: Vec<String>,
    /// The master's id, for a replica.
    pub master_id: Option<String>,
    /// `connected` or `disconnected`.
    pub link: String,
    /// Served slot ranges (inclusive).
    pub slots: Vec<(u16, u16)>,
}

impl NodeLine {
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
    /// A master not flagged as failing.
    pub fn is_healthy_master(&self) -> bool {
        self.has_flag("master") && !self.has_flag("fail") && !self.has_flag("fail?")
    }
    pub fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
    }
}

/// Parses `CLUSTER NODES` (pure). Importing and migrating slot markers (`[...]`) are skipped.
pub fn parse_cluster_nodes(text: &str) -> Result<Vec<NodeLine>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            bail!("CLUSTER NODES line with {} fields: {line:?}", f.len());
        }
        // ip:port@cport[,hostname]
        let addr = f[1].split(['@', ',']).next().unwrap_or_default();
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .with_context(|| format!("address in {line:?}"))?;
        let mut slots = Vec::new();
        for s in &f[8..] {
            if s.starts_with('[') {
                continue;
            }
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            slots.push((
                a.parse().with_context(|| format!("slot {s:?}"))?,
                b.parse().with_context(|| format!("slot {s:?}"))?,
            ));
        }
        out.push(NodeLine {
            id: f[0].into(),
            port,
            flags: f[2].split(',').map(String::from).collect(),
            master_id: (f[3] != "-").then(|| f[3].into()),
            link: f[7].into(),
            slots,
        });
    }
    Ok(out)
}

/// redis.conf of one cluster node (pure).
pub fn node_conf(cfg: &RedisClusterConfig, port: u16, dir: &Path) -> String {
    let mut s = format!(
        "port {port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\nsave \"\"\nappendonly no\n\
         dir {}\ncluster-enabled yes\ncluster-config-file nodes.conf\ncluster-node-timeout {}\n",
        dir.display(),
        cfg.node_timeout.as_millis()
    );
    if let Some(pw) = &cfg.password {
        let _ = writeln!(s, "requirepass {pw}\nmasterauth {pw}");
    }
    s
}

/// `(redis-server, redis-cli)`, by the [`require`] policy (`None`: skip): a `redis-server`
/// older than 7 (no sharded pub/sub) counts as missing.
pub fn require_parts() -> Option<(PathBuf, PathBuf)> {
    let how = "run scripts/deps.sh (apt-get install redis-server, which brings redis-cli)";
    let server = require::find_program("redis-server", &[])
        .filter(|p| server_major_version(p).is_ok_and(|m| m >= 7));
    let server = require::require("redis-server 7 or later", how, server)?;
    let cli = require::require("redis-cli", how, require::find_program("redis-cli", &[]))?;
    Some((server, cli))
}

/// The major version `redis-server --version` reports (`v=7.0.15` -> 7).
pub fn server_major_version(redis_bin: &Path) -> Result<u32> {
    let out = std::process::Command::new(redis_bin)
        .arg("--version")
        .output()?;
    parse_major_version(&String::from_utf8_lossy(&out.stdout))
}

/// The major version in `redis-server --version`'s output (pure).
pub fn parse_major_version(text: &str) -> Result<u32> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| anyhow!("no version in {text:?}"))
}

/// Redis Cluster's bus port is the client port + 10000, so a node's port must be at most
/// 55535 (redis-server refuses to start otherwise).
pub const BUS_PORT_OFFSET: u16 = 10000;

/// A free port for a cluster node whose bus port (+[`BUS_PORT_OFFSET`]) exists and is free too:
/// the kernel's ephemeral ports reach 60999, above what a cluster node may use.
pub fn free_node_port() -> Result<u16> {
    for _ in 0..200 {
        let port = free_port()?;
        let Some(bus) = port.checked_add(BUS_PORT_OFFSET) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", bus)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port with a free bus port (+{BUS_PORT_OFFSET}) on 127.0.0.1 after 200 tries")
}

struct Member {
    name: String,
    port: u16,
    proc_: Option<Proc>,
}

/// A running Redis Cluster; dropping it kills every node.
pub struct RedisCluster {
    cfg: RedisClusterConfig,
    dir: tempfile::TempDir,
    redis_bin: PathBuf,
    nodes: Vec<Member>,
}

impl RedisCluster {
    /// Starts the nodes, joins them with `redis-cli --cluster create`, and waits (up to
    /// [`RedisClusterConfig::start_timeout`]) until the cluster is whole.
    pub async fn start(
        cfg: RedisClusterConfig,
        redis_bin: PathBuf,
        cli_bin: PathBuf,
    ) -> Result<RedisCluster> {
        let major = server_major_version(&redis_bin)?;
        if major < 7 {
            bail!("redis-server {major}.x has no sharded pub/sub (SSUBSCRIBE): 7 or later needed");
        }
        let n = cfg.masters * (1 + cfg.replicas_per_master);
        let dir = work_dir("rt-redis-cluster-")?;
        let mut c = RedisCluster {
            nodes: (0..n)
                .map(|i| {
                    Ok(Member {
                        name: format!("redis-{i}"),
                        port: free_node_port()?,
                        proc_: None,
                    })
                })
                .collect::<Result<_>>()?,
            cfg,
            dir,
            redis_bin,
        };
        let deadline = Instant::now() + c.cfg.start_timeout;
        for i in 0..n {
            c.spawn_node(i)?;
        }
        let pw = c.cfg.password.as_deref();
        for m in &c.nodes {
            let addr = addr(m.port);
            let p = m.proc_.as_ref().expect("just spawned");
            p.wait_for(
                "a PONG",
                deadline.saturating_duration_since(Instant::now()),
                move || async move { ping(addr, pw).await.is_ok() },
            )
            .await?;
        }
        // The first `masters` nodes become the masters, the others their replicas.
        let mut create = Command::new(&cli_bin);
        create.arg("--cluster").arg("create");
        for m in &c.nodes {
            create.arg(format!("127.0.0.1:{}", m.port));
        }
        create
            .arg("--cluster-replicas")
            .arg(c.cfg.replicas_per_master.to_string())
            .arg("--cluster-yes")
            .kill_on_drop(true);
        if let Some(pw) = pw {
            create.env("REDISCLI_AUTH", pw);
        }
        let out = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            create.output(),
        )
        .await
        .map_err(|_| anyhow!("redis-cli --cluster create did not finish in time"))??;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(c.dir.path().join("logs").join("cluster-create.log"), &text)?;
        if !out.status.success() || !text.contains("All 16384 slots covered") {
            bail!(
                "redis-cli --cluster create failed ({}):\n{text}",
                out.status
            );
        }
        c.wait_whole(deadline.saturating_duration_since(Instant::now()))
            .await?;
        Ok(c)
    }

    /// Starts node `i` (again) from its config file; a restarted node keeps its identity
    /// (its `nodes.conf`) and rejoins.
    fn spawn_node(&mut self, i: usize) -> Result<()> {
        let m = &self.nodes[i];
        let data = self.dir.path().join(&m.name);
        std::fs::create_dir_all(&data)?;
        let conf = self.dir.path().join(format!("{}.conf", m.name));
        std::fs::write(&conf, node_conf(&self.cfg, m.port, &data))?;
        let mut cmd = Command::new(&self.redis_bin);
        cmd.arg(&conf);
        let p = Proc::spawn(
            cmd,
            &m.name,
            &log_path(self.dir.path(), &m.name),
            libc::SIGKILL,
            Echo::Command,
        )?;
        self.nodes[i].proc_ = Some(p);
        Ok(())
    }

    /// Waits until every running node says `cluster_state:ok`, sees every other node connected
    /// and not failing, agrees with the others on the slot map (every slot served), and every
    /// replica's link to its master is up.
    pub async fn wait_whole(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let why = match self.whole().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                bail!(
                    "the Redis Cluster is not whole after {timeout:?}: {why:#}{}",
                    self.logs(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn whole(&self) -> Result<()> {
        let running: Vec<u16> = self.running_ports();
        let mut maps = Vec::new();
        for &port in &running {
            let info = self.info(port, "CLUSTER", "INFO").await?;
            if !info.contains("cluster_state:ok") {
                bail!("{port}: cluster_state is not ok");
            }
            let nodes = self.cluster_nodes(port).await?;
            if nodes.len() != self.nodes.len() {
                bail!("{port} knows {} nodes", nodes.len());
            }
            for n in &nodes {
                let up = running.contains(&n.port);
                if up && (n.link != "connected" || n.has_flag("fail") || n.has_flag("fail?")) {
                    bail!("{port} sees {} as {:?} {}", n.port, n.flags, n.link);
                }
            }
            let mut map: Vec<(u16, u16, u16)> = nodes
                .iter()
                .filter(|n| n.is_healthy_master())
                .flat_map(|n| n.slots.iter().map(|(a, b)| (*a, *b, n.port)))
                .collect();
            map.sort();
            let covered: u32 = map.iter().map(|(a, b, _)| u32::from(b - a) + 1).sum();
            if covered != 16384 {
                bail!("{port} sees {covered} slots served by healthy masters");
            }
            maps.push(map);
            if nodes.iter().any(|n| n.port == port && n.has_flag("slave")) {
                let repl = self.info(port, "INFO", "replication").await?;
                if !repl.contains("master_link_status:up") {
                    bail!("replica {port}: master link not up");
                }
            }
        }
        maps.dedup();
        if maps.len() > 1 {
            bail!("the nodes disagree on the slot map");
        }
        Ok(())
    }

    async fn info(&self, port: u16, cmd: &str, arg: &str) -> Result<String> {
        match command(addr(port), self.cfg.password.as_deref(), &[cmd, arg]).await? {
            Resp::Bulk(Some(s)) => Ok(s),
            other => bail!("{cmd} {arg} on {port}: {other:?}"),
        }
    }

    pub fn config(&self) -> &RedisClusterConfig {
        &self.cfg
    }

    /// Every node's port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|m| m.port).collect()
    }

    /// The ports of the nodes that are running (not killed, not exited).
    pub fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|m| m.proc_.as_ref().is_some_and(|p| p.exited().is_none()))
            .map(|m| m.port)
            .collect()
    }

    /// The clients' `REDIS_URL`: `redis-cluster://` with every node as a seed, no password
    /// (it is `REDIS_PASSWORD`).
    pub fn url(&self) -> String {
        let mut s = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, m) in self.nodes[1..].iter().enumerate() {
            let _ = write!(
                s,
                "{}node=127.0.0.1:{}",
                if i == 0 { '?' } else { '&' },
                m.port
            );
        }
        s
    }

    /// Any command on the node on `port` (after AUTH); an error reply is an error.
    pub async fn run(&self, port: u16, args: &[&str]) -> Result<Resp> {
        command(addr(port), self.cfg.password.as_deref(), args).await
    }

    /// `CLUSTER NODES` as node `port` sees it.
    pub async fn cluster_nodes(&self, port: u16) -> Result<Vec<NodeLine>> {
        parse_cluster_nodes(&self.info(port, "CLUSTER", "NODES").await?)
    }

    /// `CLUSTER KEYSLOT key`, asked of a running node.
    pub async fn keyslot(&self, key: &str) -> Result<u16> {
        let port = *self
            .running_ports()
            .first()
            .ok_or_else(|| anyhow!("no node running"))?;
        match command(
            addr(port),
            self.cfg.password.as_deref(),
            &["CLUSTER", "KEYSLOT", key],
        )
        .await?
        {
            Resp::Int(n) => Ok(u16::try_from(n)?),
            other => bail!("CLUSTER KEYSLOT: {other:?}"),
        }
    }

    /// The port of the master serving `slot`, when every running node names the same healthy
    /// one and it says `ROLE master`.
    pub async fn master_of(&self, slot: u16) -> Result<u16> {
        let mut seen = Vec::new();
        for port in self.running_ports() {
            let nodes = self.cluster_nodes(port).await?;
            let m = nodes
                .iter()
                .find(|n| n.is_healthy_master() && n.serves(slot))
                .ok_or_else(|| anyhow!("{port} names no healthy master for slot {slot}"))?;
            seen.push(m.port);
        }
        seen.dedup();
        let [p] = seen[..] else {
            bail!("the nodes disagree on slot {slot}'s master: {seen:?}");
        };
        if self.role(p).await? != "master" {
            bail!("{p} serves slot {slot} but is not ROLE master");
        }
        Ok(p)
    }

    /// `ROLE` of the node on `port`: `master` or `slave`.
    pub async fn role(&self, port: u16) -> Result<String> {
        match command(addr(port), self.cfg.password.as_deref(), &["ROLE"]).await? {
            Resp::Array(Some(v)) => match v.first() {
                Some(Resp::Bulk(Some(r))) => Ok(r.clone()),
                other => bail!("ROLE: {other:?}"),
            },
            other => bail!("ROLE: {other:?}"),
        }
    }

    /// `PUBSUB SHARDNUMSUB chan` on the node on `port`: its sharded subscribers of `chan`.
    pub async fn shard_subscribers(&self, port: u16, chan: &str) -> Result<u64> {
        match command(
            addr(port),
            self.cfg.password.as_deref(),
            &["PUBSUB", "SHARDNUMSUB", chan],
        )
        .await?
        {
            Resp::Array(Some(v)) if v.len() == 2 => match v[1] {
                Resp::Int(n) => Ok(u64::try_from(n)?),
                ref other => bail!("SHARDNUMSUB count: {other:?}"),
            },
            other => bail!("SHARDNUMSUB: {other:?}"),
        }
    }

    /// `PUBSUB NUMSUB chan` on the node on `port`: its plain (not sharded) subscribers.
    pub async fn plain_subscribers(&self, port: u16, chan: &str) -> Result<u64> {
        match command(
            addr(port),
            self.cfg.password.as_deref(),
            &["PUBSUB", "NUMSUB", chan],
        )
        .await?
        {
            Resp::Array(Some(v)) if v.len() == 2 => match v[1] {
                Resp::Int(n) => Ok(u64::try_from(n)?),
                ref other => bail!("NUMSUB count: {other:?}"),
            },
            other => bail!("NUMSUB: {other:?}"),
        }
    }

    fn index(&self, port: u16) -> Result<usize> {
        self.nodes
            .iter()
            .position(|m| m.port == port)
            .ok_or_else(|| anyhow!("no cluster node on port {port}"))
    }

    /// Sends `sig` to the node on `port` (SIGKILL: the machine is gone).
    pub fn signal_node(&self, port: u16, sig: libc::c_int) -> Result<()> {
        let i = self.index(port)?;
        self.nodes[i]
            .proc_
            .as_ref()
            .ok_or_else(|| anyhow!("{} is not running", self.nodes[i].name))?
            .signal(sig)
    }

    /// Kills the node on `port` with SIGKILL and waits until it is gone.
    pub async fn kill_node(&self, port: u16) -> Result<()> {
        let i = self.index(port)?;
        let p = self.nodes[i]
            .proc_
            .as_ref()
            .ok_or_else(|| anyhow!("{} is not running", self.nodes[i].name))?;
        p.signal(libc::SIGKILL)?;
        p.wait_exit(Duration::from_secs(5)).await?;
        Ok(())
    }

    /// Starts the (killed) node on `port` again; it rejoins with its old identity.
    pub async fn restart_node(&mut self, port: u16) -> Result<()> {
        let i = self.index(port)?;
        self.nodes[i].proc_.take();
        self.spawn_node(i)?;
        let pw = self.cfg.password.as_deref();
        let a = addr(port);
        self.nodes[i]
            .proc_
            .as_ref()
            .expect("just spawned")
            .wait_for("a PONG", Duration::from_secs(10), move || async move {
                ping(a, pw).await.is_ok()
            })
            .await
    }

    /// The node id of the node on `port` (its own `CLUSTER MYID`).
    pub async fn node_id(&self, port: u16) -> Result<String> {
        match command(
            addr(port),
            self.cfg.password.as_deref(),
            &["CLUSTER", "MYID"],
        )
        .await?
        {
            Resp::Bulk(Some(id)) => Ok(id),
            other => bail!("CLUSTER MYID on {port}: {other:?}"),
        }
    }

    /// Moves the empty `slot` to the master on `to` (a resharding of one slot, as
    /// `redis-cli --cluster reshard` does it: IMPORTING on the target, MIGRATING on the source,
    /// then `SETSLOT NODE` on the target, the source and every other master), and waits until
    /// every node agrees. Fails when the slot holds keys (the adapter stores none).
    pub async fn move_slot(&self, slot: u16, to: u16) -> Result<()> {
        let from = self.master_of(slot).await?;
        if from == to {
            bail!("slot {slot} is already on {to}");
        }
        let (from_id, to_id) = (self.node_id(from).await?, self.node_id(to).await?);
        let slot_s = slot.to_string();
        let pw = self.cfg.password.as_deref();
        match command(addr(from), pw, &["CLUSTER", "COUNTKEYSINSLOT", &slot_s]).await? {
            Resp::Int(0) => {}
            other => bail!("slot {slot} is not empty: {other:?}"),
        }
        self.setslot(to, slot, "IMPORTING", &from_id).await?;
        self.setslot(from, slot, "MIGRATING", &to_id).await?;
        self.setslot(to, slot, "NODE", &to_id).await?;
        self.setslot(from, slot, "NODE", &to_id).await?;
        for port in self.running_ports() {
            if port != from && port != to && self.role(port).await? == "master" {
                self.setslot(port, slot, "NODE", &to_id).await?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.master_of(slot).await.is_ok_and(|p| p == to) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the nodes do not agree that slot {slot} moved to {to}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A healthy master other than the one on `not`.
    pub async fn other_master(&self, not: u16) -> Result<u16> {
        let nodes = self.cluster_nodes(not).await?;
        nodes
            .iter()
            .find(|n| n.port != not && n.is_healthy_master() && !n.slots.is_empty())
            .map(|n| n.port)
            .ok_or_else(|| anyhow!("no other master"))
    }

    /// `CLUSTER FAILOVER` on a replica of the master on `master` (a switchover: the master
    /// stops its clients' writes, the replica catches up and takes over, the master turns its
    /// replica; no process dies). Waits until every node names the replica as the master of
    /// the old master's slots, and returns its port.
    pub async fn manual_failover(&self, master: u16) -> Result<u16> {
        let nodes = self.cluster_nodes(master).await?;
        let m = nodes
            .iter()
            .find(|n| n.port == master)
            .ok_or_else(|| anyhow!("{master} is not in its own CLUSTER NODES"))?;
        let slot = m
            .slots
            .first()
            .map(|(a, _)| *a)
            .ok_or_else(|| anyhow!("{master} serves no slot"))?;
        let replica = nodes
            .iter()
            .find(|n| n.master_id.as_deref() == Some(&m.id) && !n.has_flag("fail"))
            .ok_or_else(|| anyhow!("{master} has no replica"))?
            .port;
        match command(
            addr(replica),
            self.cfg.password.as_deref(),
            &["CLUSTER", "FAILOVER"],
        )
        .await?
        {
            Resp::Simple(s) if s == "OK" => {}
            other => bail!("CLUSTER FAILOVER on {replica}: {other:?}"),
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.master_of(slot).await.is_ok_and(|p| p == replica) {
                return Ok(replica);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{replica} did not take over from {master} within 20 s:{}",
                    self.logs(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `CLUSTER SETSLOT slot how id` on the node on `port`.
    async fn setslot(&self, port: u16, slot: u16, how: &str, id: &str) -> Result<()> {
        let slot = slot.to_string();
        command(
            addr(port),
            self.cfg.password.as_deref(),
            &["CLUSTER", "SETSLOT", &slot, how, id],
        )
        .await
        .with_context(|| format!("CLUSTER SETSLOT {slot} {how} on {port}"))?;
        Ok(())
    }

    /// Which nodes have exited.
    pub fn exited(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|m| {
                let s = m.proc_.as_ref()?.exited()?;
                Some(format!("{} ({s})", m.name))
            })
            .collect()
    }

    /// Every node's log tail.
    pub fn logs(&self, lines: usize) -> String {
        let mut s = String::new();
        for m in &self.nodes {
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

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== redis cluster logs ({}) ====",
                self.dir.path().display()
            );
            eprintln!("{}", self.logs(40));
        }
        for m in &mut self.nodes {
            m.proc_.take();
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_parse() {
        let text = "\
2f5b 127.0.0.1:17003@27003 master - 0 1796026806844 3 connected 10923-16383
814e 127.0.0.1:17006@27006,host6 slave f2d8 0 1796026807045 6 connected
f2d8 127.0.0.1:17001@27001 myself,master - 0 0 1 connected 0-5460 5462 [5461->-9a1f]
9a1f 127.0.0.1:17004@27004 master,fail - 0 0 4 disconnected
";
        let n = parse_cluster_nodes(text).unwrap();
        assert_eq!(n.len(), 4);
        assert_eq!(n[0].port, 17003);
        assert_eq!(n[0].slots, vec![(10923, 16383)]);
        assert!(n[0].is_healthy_master() && n[0].serves(16383) && !n[0].serves(0));
        assert_eq!(n[1].port, 17006);
        assert_eq!(n[1].master_id.as_deref(), Some("f2d8"));
        assert!(n[1].has_flag("slave") && n[1].slots.is_empty());
        assert_eq!(n[2].slots, vec![(0, 5460), (5462, 5462)]);
        assert!(n[2].has_flag("myself"));
        assert!(!n[3].is_healthy_master());
        assert_eq!(n[3].link, "disconnected");
        assert!(parse_cluster_nodes("x y z").is_err());
    }

    #[test]
    fn node_ports_leave_room_for_the_bus_port() {
        for _ in 0..50 {
            let p = free_node_port().unwrap();
            assert!(p <= u16::MAX - BUS_PORT_OFFSET, "{p}");
        }
    }

    #[test]
    fn the_major_version_is_read() {
        let v = "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d";
        assert_eq!(parse_major_version(v).unwrap(), 7);
        assert_eq!(
            parse_major_version("Redis server v=6.2.1 sha=0").unwrap(),
            6
        );
        assert!(parse_major_version("redis-server: command not found").is_err());
    }

    #[test]
    fn node_config_carries_the_password_and_the_timeout() {
        let cfg = RedisClusterConfig {
            password: Some("pw".into()),
            ..RedisClusterConfig::default()
        };
        let s = node_conf(&cfg, 7001, Path::new("/tmp/x"));
        assert!(s.contains("port 7001\n"), "{s}");
        assert!(s.contains("cluster-enabled yes\n"), "{s}");
        assert!(s.contains("cluster-node-timeout 1000\n"), "{s}");
        assert!(s.contains("requirepass pw\nmasterauth pw\n"), "{s}");
        assert!(!node_conf(&RedisClusterConfig::default(), 7001, Path::new("/x")).contains("pass"));
    }
}

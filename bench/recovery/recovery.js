// The clients of the recovery cost benchmark (bench/recovery.sh): official socket.io-client
// sockets (websocket transport, no automatic reconnection) against 2 nodes with connection state
// recovery on, loopback only. Every figure is written as one JSON file; the shell script reads
// the server processes' PIDs and Redis' port from the environment.
//
//   node recovery.js sessions   env: URLS, CLIENTS, REDIS_PORT, STREAM_KEY, SESSION_PATTERN, PACKETS, OUT, LABEL
//       Redis `used_memory` (INFO memory) with no client, with CLIENTS connected, after every
//       client's transport was cut (a recoverable disconnect: the sessions are kept), and
//       before / after one client published PACKETS logged messages (100 B filler each).
//   node recovery.js replay     env: URLS, CLIENTS, REDIS_PORT, PIDS, KS, RATE, OUT, LABEL
//       For each k in KS (e.g. 0,200,0,200): every client's transport is cut, one publisher
//       sends k numbered broadcasts, then the clients reconnect (RATE per second) and recover.
//       Per round: CPU (utime+stime from /proc/PID/stat) of each PIDS entry from the first
//       reconnect until every client is back and has every missed packet, restore latency
//       (reconnect -> `connect` with socket.recovered, and -> the last missed packet), the
//       recovered share, lost and duplicated packets.
//   node recovery.js selftest   checks the figures' arithmetic on known inputs
//
// Times come from performance.now() (one clock). Everything is bounded: 30 s per batch of
// connections, 60 s per round of restores.
"use strict";

const fs = require("fs");
const { execFileSync } = require("child_process");
const { performance } = require("perf_hooks");

function die(msg) {
  console.error(`recovery.js: ${msg}`);
  process.exit(1);
}

function env(name, dflt) {
  const v = process.env[name];
  if (v === undefined || v === "") {
    if (dflt === undefined) die(`${name} is required`);
    return dflt;
  }
  return v;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const FILLER = "x".repeat(100);

// ---------------------------------------------------------------- figures (pure)

/** Nearest-rank percentile of `v` (any order); null when empty. */
function percentile(v, p) {
  if (v.length === 0) return null;
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** utime + stime (clock ticks) of a `/proc/PID/stat` line; the command may contain spaces. */
function statTicks(line) {
  const rest = line.slice(line.lastIndexOf(")") + 2).split(" ");
  // rest[0] is field 3 (state): utime is field 14, stime field 15
  return Number(rest[11]) + Number(rest[12]);
}

/** "n1=1,n2=2+3" -> {n1: [1], n2: [2, 3]} */
function parsePids(spec) {
  const out = {};
  for (const item of spec.split(",").filter(Boolean)) {
    const [name, pids] = item.split("=");
    if (!name || !pids) throw new Error(`bad PIDS entry ${item}`);
    out[name] = pids.split("+").map(Number);
  }
  return out;
}

/** Packets a client missed and got twice, from the numbers it received and the count sent. */
function lossAndDups(received, sent) {
  const seen = new Set();
  let dups = 0;
  for (const i of received) {
    if (seen.has(i)) dups++;
    else seen.add(i);
  }
  let lost = 0;
  for (let i = 0; i < sent; i++) if (!seen.has(i)) lost++;
  return { lost, dups };
}

/** `used_memory` of an INFO reply. */
function usedMemory(info) {
  const m = /^used_memory:(\d+)\r?$/m.exec(info);
  if (!m) throw new Error("no used_memory in INFO");
  return Number(m[1]);
}

// ---------------------------------------------------------------- processes

const CLK_TCK = Number(env("CLK_TCK", "100"));

function cpuTicks(pids) {
  const out = {};
  for (const [name, list] of Object.entries(pids)) {
    let t = 0;
    for (const p of list) {
      try {
        t += statTicks(fs.readFileSync(`/proc/${p}/stat`, "utf8"));
      } catch (_) {
        // gone: counts 0
      }
    }
    out[name] = t;
  }
  return out;
}

function redis(port, ...args) {
  return execFileSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), ...args], { encoding: "utf8" }).trim();
}

/** Mean `MEMORY USAGE` of at most `max` keys matching `pattern` (null when none). */
function sampleUsage(port, pattern, max) {
  const keys = redis(port, "--scan", "--pattern", pattern).split("\n").filter(Boolean).slice(0, max);
  if (keys.length === 0) return null;
  let sum = 0;
  for (const k of keys) sum += Number(redis(port, "MEMORY", "USAGE", k));
  return sum / keys.length;
}

function memory(port) {
  return usedMemory(redis(port, "INFO", "memory"));
}

// ---------------------------------------------------------------- clients

function checkUrls(urls) {
  for (const u of urls) if (!/^(https?|wss?):\/\/127\.0\.0\.1:\d+$/.test(u)) die(`URLS must be on 127.0.0.1 (got ${u})`);
}

/** A client: an official socket.io-client socket that never reconnects by itself. */
function client(url, i, onEvent) {
  const { io } = require("socket.io-client");
  const c = { i, url, hello: null, connects: [], disconnects: 0, socket: null };
  const s = io(url, { transports: ["websocket"], forceNew: true, reconnection: false, timeout: 20000 });
  c.socket = s;
  s.on("connect", () => c.connects.push({ t: performance.now(), recovered: !!s.recovered, id: s.id }));
  s.on("hello", (h) => {
    if (c.hello === null) c.hello = h;
  });
  s.on("disconnect", () => c.disconnects++);
  if (onEvent) s.on("rb", (d) => onEvent(c, d));
  return c;
}

/** Opens n clients round robin over `urls`, in batches of 100, each batch awaited. */
async function openClients(urls, n, onEvent) {
  const clients = [];
  for (let i = 0; i < n; i += 100) {
    const batch = [];
    for (let k = i; k < Math.min(n, i + 100); k++) batch.push(client(urls[k % urls.length], k, onEvent));
    clients.push(...batch);
    const until = performance.now() + 30000;
    while (batch.some((c) => c.hello === null) && performance.now() < until) await sleep(20);
    const down = batch.filter((c) => c.hello === null).length;
    if (down) die(`${down} clients got no hello within 30 s`);
  }
  return clients;
}

/** Cuts every client's transport (the server sees "transport close": a recoverable reason). */
async function cutAll(clients) {
  const before = clients.map((c) => c.disconnects);
  for (const c of clients) c.socket.io.engine.close();
  const until = performance.now() + 10000;
  while (clients.some((c, k) => c.disconnects === before[k]) && performance.now() < until) await sleep(10);
  if (clients.some((c, k) => c.disconnects === before[k])) die("some clients did not see their disconnect");
}

/** Publishes `k` broadcasts `rb` {r, i, p} from `pub`, at most 16 unacknowledged at a time. */
async function publish(pub, round, k) {
  let next = 0;
  const worker = async () => {
    while (next < k) {
      const i = next++;
      const res = await pub.socket.timeout(10000).emitWithAck("publish", { event: "rb", data: { r: round, i, p: FILLER } });
      if (!res || res.ok !== true) throw new Error(`publish ${i} refused: ${JSON.stringify(res)}`);
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, k) }, worker));
}

// ---------------------------------------------------------------- sessions (a)

async function sessions() {
  const urls = env("URLS").split(",");
  checkUrls(urls);
  const n = Number(env("CLIENTS"));
  const port = Number(env("REDIS_PORT"));
  const stream = env("STREAM_KEY");
  const packets = Number(env("PACKETS", "5000"));
  const out = env("OUT");
  if (!(n > 0 && n <= 10000)) die("CLIENTS must be 1..10000");
  const settle = async () => sleep(Number(env("SETTLE_MS", "2000")));

  await settle();
  const r = { label: env("LABEL", "sessions"), clients: n, packets };
  r.mem_empty = memory(port);
  r.keys_empty = Number(redis(port, "DBSIZE"));
  const t0 = performance.now();
  const clients = await openClients(urls, n);
  r.connect_s = (performance.now() - t0) / 1000;
  await settle();
  r.mem_connected = memory(port);
  r.keys_connected = Number(redis(port, "DBSIZE"));
  r.memory_usage_per_session_key_connected = sampleUsage(port, env("SESSION_PATTERN"), 50);

  await cutAll(clients);
  // the servers save the sessions on the disconnect: wait until the key count is stable
  let last = -1;
  for (let i = 0; i < 30; i++) {
    await sleep(500);
    const keys = Number(redis(port, "DBSIZE"));
    if (keys === last) break;
    last = keys;
  }
  await settle();
  r.mem_disconnected = memory(port);
  r.keys_disconnected = Number(redis(port, "DBSIZE"));
  r.memory_usage_per_session_key = sampleUsage(port, env("SESSION_PATTERN"), 50);

  // the packet log: PACKETS broadcasts of 100 B filler from one client
  const pub = (await openClients([urls[0]], 1))[0];
  await settle();
  r.mem_log_before = memory(port);
  r.xlen_before = Number(redis(port, "XLEN", stream));
  await publish(pub, 0, packets);
  await settle();
  r.mem_log_after = memory(port);
  r.xlen_after = Number(redis(port, "XLEN", stream));
  pub.socket.disconnect();

  r.bytes_per_session_connected = (r.mem_connected - r.mem_empty) / n;
  r.bytes_per_session_disconnected = (r.mem_disconnected - r.mem_empty) / n;
  const entries = r.xlen_after - r.xlen_before;
  r.bytes_per_logged_packet = entries > 0 ? (r.mem_log_after - r.mem_log_before) / entries : null;
  fs.writeFileSync(out, JSON.stringify(r, null, 1) + "\n");
  console.error(
    `recovery.js ${r.label}: ${n} clients; Redis +${r.mem_connected - r.mem_empty} B connected ` +
      `(${r.keys_connected} keys), +${r.mem_disconnected - r.mem_empty} B disconnected (${r.keys_disconnected} keys); ` +
      `log +${r.mem_log_after - r.mem_log_before} B for ${entries} entries`,
  );
  process.exit(0);
}

// ---------------------------------------------------------------- replay (b)

async function replay() {
  const urls = env("URLS").split(",");
  checkUrls(urls);
  const n = Number(env("CLIENTS"));
  const pids = parsePids(env("PIDS"));
  const ks = env("KS").split(",").map(Number);
  const rate = Number(env("RATE", "250"));
  const out = env("OUT");
  if (!(n > 0 && n <= 5000)) die("CLIENTS must be 1..5000");
  if (ks.some((k) => !(k >= 0 && k <= 2000))) die("every k in KS must be 0..2000");

  // got[client][round] = the numbers received
  let round = -1;
  let want = 0;
  const onEvent = (c, d) => {
    if (d && d.r === round) {
      (c.got || (c.got = [])).push(d.i);
      if (c.got.length === want && c.doneAt === null) c.doneAt = performance.now();
    }
  };
  const clients = await openClients(urls, n, onEvent);
  const pub = (await openClients([urls[0]], 1))[0];
  // one packet first: socket.io's own server restores only with an offset (a received packet)
  round = 0;
  await publish(pub, 0, 1);
  const until = performance.now() + 10000;
  while (clients.some((c) => !c.got || c.got.length < 1) && performance.now() < until) await sleep(20);
  if (clients.some((c) => !c.got)) die("the first packet did not reach every client");

  const rounds = [];
  for (let r = 0; r < ks.length; r++) {
    const k = ks[r];
    round = r + 1;
    for (const c of clients) {
      c.got = [];
      c.doneAt = null;
    }
    want = k;
    await cutAll(clients);
    await sleep(1000); // the servers save the sessions
    await publish(pub, round, k);
    await sleep(300);
    const nConnects = clients.map((c) => c.connects.length);
    const starts = new Array(n);
    const cpu0 = cpuTicks(pids);
    const t0 = performance.now();
    // reconnect at `rate` per second
    for (let i = 0; i < n; i++) {
      const due = t0 + (i * 1000) / rate;
      const wait = due - performance.now();
      if (wait > 1) await sleep(wait);
      starts[i] = performance.now();
      clients[i].socket.connect();
    }
    const back = (c, i) => c.connects.length > nConnects[i];
    const complete = (c, i) => back(c, i) && (c.got.length >= k || !c.connects[c.connects.length - 1].recovered);
    const deadline = performance.now() + 60000;
    while (performance.now() < deadline && !clients.every(complete)) await sleep(5);
    await sleep(200); // late duplicates, if any
    const cpu1 = cpuTicks(pids);
    const wall = (performance.now() - t0) / 1000;
    const connectMs = [];
    const allMs = [];
    let recovered = 0, notBack = 0, lost = 0, dups = 0;
    for (let i = 0; i < n; i++) {
      const c = clients[i];
      if (!back(c, i)) {
        notBack++;
        lost += k;
        continue;
      }
      const conn = c.connects[c.connects.length - 1];
      if (conn.recovered) recovered++;
      connectMs.push(conn.t - starts[i]);
      // every missed packet arrived: when the last one did (k = 0: at the connect)
      if (k === 0) allMs.push(conn.t - starts[i]);
      else if (c.doneAt !== null && c.doneAt >= starts[i]) allMs.push(c.doneAt - starts[i]);
      const ld = lossAndDups(c.got, k);
      lost += ld.lost;
      dups += ld.dups;
    }
    const cpuMs = {};
    for (const name of Object.keys(cpu1)) cpuMs[name] = ((cpu1[name] - cpu0[name]) * 1000) / CLK_TCK;
    const res = {
      k, clients: n, rate, wall_s: wall, recovered, not_back: notBack, lost, duplicated: dups,
      replayed_expected: n * k,
      connect_ms: { p50: percentile(connectMs, 50), p99: percentile(connectMs, 99), max: percentile(connectMs, 100) },
      all_missed_ms: { p50: percentile(allMs, 50), p99: percentile(allMs, 99), max: percentile(allMs, 100), n: allMs.length },
      cpu_ms: cpuMs,
    };
    rounds.push(res);
    console.error(
      `recovery.js ${env("LABEL", "replay")}: k=${k}: ${recovered}/${n} recovered, lost ${lost}, dup ${dups}, ` +
        `connect p50 ${res.connect_ms.p50?.toFixed(1)} p99 ${res.connect_ms.p99?.toFixed(1)} ms, all missed p50 ` +
        `${res.all_missed_ms.p50?.toFixed(1)} p99 ${res.all_missed_ms.p99?.toFixed(1)} ms; cpu ms ${JSON.stringify(cpuMs)}`,
    );
  }
  fs.writeFileSync(out, JSON.stringify({ label: env("LABEL", "replay"), clk_tck: CLK_TCK, rounds }, null, 1) + "\n");
  for (const c of clients) c.socket.disconnect();
  pub.socket.disconnect();
  await sleep(200);
  process.exit(0);
}

// ---------------------------------------------------------------- main

const [mode] = process.argv.slice(2);
if (mode === "sessions") {
  sessions().catch((e) => die(e.stack || String(e)));
} else if (mode === "replay") {
  replay().catch((e) => die(e.stack || String(e)));
} else if (mode === "selftest") {
  const assert = require("assert");
  assert.strictEqual(percentile([10, 20, 30, 40], 50), 20);
  assert.strictEqual(percentile([10, 20, 30, 40], 99), 40);
  assert.strictEqual(percentile([], 50), null);
  assert.strictEqual(statTicks("42 (a) b c) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0"), 175);
  assert.deepStrictEqual(parsePids("n1=1,nginx=2+3"), { n1: [1], nginx: [2, 3] });
  assert.deepStrictEqual(lossAndDups([0, 2, 2, 3], 5), { lost: 2, dups: 1 });
  assert.strictEqual(usedMemory("# Memory\r\nused_memory:1234\r\nused_memory_human:1.2K\r\n"), 1234);
  console.log("ok");
} else {
  die("usage: recovery.js sessions | replay | selftest");
}

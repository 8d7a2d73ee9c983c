// The drain benchmark's clients (bench/drain.sh): N official socket.io-client sockets
// (websocket transport) connect through nginx, all land on node A, then A gets SIGTERM and
// every client's reconnection is timed. Loopback only.
//
//   node drain.js run            env: URL, A_PID, CLIENTS, LABEL, OUT, PRIMARY, TIMEOUT_S
//   node drain.js table B.json A.json     the before/after table (markdown)
//
// Times are milliseconds from the SIGTERM (performance.now(), one clock). A reconnect is the
// client's `connect` event after the SIGTERM; the node comes from the `hello` that follows.
"use strict";

const fs = require("fs");
const { performance } = require("perf_hooks");

function die(msg) {
  console.error(`drain.js: ${msg}`);
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

// ---------------------------------------------------------------- figures (pure)

/** Most reconnects within any window of `win` ms (sliding, `t` sorted ascending). */
function peakWindow(t, win) {
  let best = 0;
  for (let i = 0, j = 0; j < t.length; j++) {
    while (t[j] - t[i] >= win) i++;
    best = Math.max(best, j - i + 1);
  }
  return best;
}

/** Nearest-rank percentile of `v` (any order). */
function percentile(v, p) {
  if (v.length === 0) return 0;
  const s = [...v].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

/** Reconnects per second in each 100 ms bucket from the SIGTERM to the last reconnect. */
function bucketRates(t) {
  if (t.length === 0) return [];
  const n = Math.floor(Math.max(...t) / 100) + 1;
  const counts = new Array(n).fill(0);
  for (const x of t) counts[Math.max(0, Math.floor(x / 100))]++;
  return counts.map((c) => c * 10);
}

function figures(times) {
  const t = [...times].sort((a, b) => a - b);
  const rates = bucketRates(t);
  return {
    reconnected: t.length,
    peak_1s: peakWindow(t, 1000),
    bucket_p50: percentile(rates, 50),
    bucket_p99: percentile(rates, 99),
    bucket_max: rates.length ? Math.max(...rates) : 0,
    first_ms: t.length ? Math.round(t[0]) : null,
    all_ms: t.length ? Math.round(t[t.length - 1]) : null,
  };
}

// ---------------------------------------------------------------- run

async function run() {
  const { io } = require("socket.io-client");
  const url = env("URL");
  const aPid = Number(env("A_PID"));
  const n = Number(env("CLIENTS", "1000"));
  const label = env("LABEL", "run");
  const out = env("OUT");
  const primary = env("PRIMARY", "A");
  const timeoutS = Number(env("TIMEOUT_S", "60"));
  if (!/^(https?|wss?):\/\/127\.0\.0\.1[:/]/.test(url)) die(`URL must be on 127.0.0.1 (got ${url})`);
  if (!(n > 0 && n <= 20000)) die(`CLIENTS must be 1..20000 (got ${n})`);

  let sigterm = null; // performance.now() of the SIGTERM
  const rel = () => performance.now() - (sigterm ?? 0);
  const clients = [];
  let connectErrors = 0;

  const open = (i) => {
    const c = { i, socket: null, hello: null, disconnect: null, reconnect: null, node: null };
    const s = io(url, { transports: ["websocket"], forceNew: true });
    c.socket = s;
    s.on("connect", () => {
      if (sigterm !== null && c.reconnect === null) c.reconnect = rel();
    });
    s.on("hello", (h) => {
      if (sigterm === null) c.hello = h.node;
      else if (c.reconnect !== null && c.node === null) c.node = h.node;
    });
    s.on("disconnect", (reason) => {
      if (sigterm !== null && c.disconnect === null) c.disconnect = { t: rel(), reason };
    });
    s.on("connect_error", () => connectErrors++);
    clients.push(c);
  };

  // Connect in batches of 100, each awaited, so that the handshakes do not all queue at once.
  const t0 = performance.now();
  for (let i = 0; i < n; i += 100) {
    for (let k = i; k < Math.min(n, i + 100); k++) open(k);
    const until = performance.now() + 30000;
    while (clients.some((c) => c.hello === null) && performance.now() < until) await sleep(20);
  }
  const notUp = clients.filter((c) => c.hello === null).length;
  if (notUp > 0) die(`${notUp} of ${n} clients got no hello within 30 s`);
  const elsewhere = clients.filter((c) => c.hello !== primary).length;
  if (elsewhere > 0) die(`${elsewhere} of ${n} clients landed on another node than ${primary}`);
  console.error(
    `drain.js ${label}: ${n} clients on ${primary} in ${Math.round(performance.now() - t0)} ms`,
  );
  await sleep(1000); // let the connection burst settle

  const errorsBefore = connectErrors;
  sigterm = performance.now();
  const sigtermWall = Date.now();
  process.kill(aPid, "SIGTERM");

  const deadline = performance.now() + timeoutS * 1000;
  while (performance.now() < deadline) {
    if (clients.every((c) => c.node !== null)) break;
    await sleep(20);
  }
  const done = clients.filter((c) => c.node !== null);
  const times = done.map((c) => c.reconnect);
  const disc = clients.filter((c) => c.disconnect).map((c) => c.disconnect.t).sort((a, b) => a - b);
  const nodes = {};
  for (const c of done) nodes[c.node] = (nodes[c.node] || 0) + 1;
  const reasons = {};
  for (const c of clients) if (c.disconnect) reasons[c.disconnect.reason] = (reasons[c.disconnect.reason] || 0) + 1;
  const result = {
    label,
    clients: n,
    sigterm_wall_ms: sigtermWall,
    ...figures(times),
    failed: n - done.length,
    back_on_primary: done.filter((c) => c.node === primary).length,
    nodes,
    disconnect_reasons: reasons,
    first_disconnect_ms: disc.length ? Math.round(disc[0]) : null,
    last_disconnect_ms: disc.length ? Math.round(disc[disc.length - 1]) : null,
    connect_errors_after_sigterm: connectErrors - errorsBefore,
    reconnect_ms: times.map((x) => Math.round(x)).sort((a, b) => a - b),
  };
  fs.writeFileSync(out, JSON.stringify(result) + "\n");
  console.error(
    `drain.js ${label}: reconnected ${done.length}/${n} (${JSON.stringify(nodes)}), ` +
      `peak ${result.peak_1s} in 1 s, all after ${result.all_ms} ms, failed ${result.failed}`,
  );
  for (const c of clients) c.socket.close();
  await sleep(200);
  process.exit(0);
}

// ---------------------------------------------------------------- table

function table(beforePath, afterPath) {
  const b = JSON.parse(fs.readFileSync(beforePath, "utf8"));
  const a = JSON.parse(fs.readFileSync(afterPath, "utf8"));
  const ratio = (x, y) => (typeof x === "number" && typeof y === "number" && x !== 0 ? (y / x).toFixed(2) : "-");
  const s = (ms) => (ms === null ? "-" : (ms / 1000).toFixed(2));
  const split = (r) => Object.entries(r.nodes).sort().map(([k, v]) => `${k} ${v}`).join(", ") || "-";
  const rows = [
    ["peak reconnects in any 1 s window", b.peak_1s, a.peak_1s, ratio(b.peak_1s, a.peak_1s)],
    ["reconnects/s per 100 ms bucket, p50", b.bucket_p50, a.bucket_p50, ratio(b.bucket_p50, a.bucket_p50)],
    ["reconnects/s per 100 ms bucket, p99", b.bucket_p99, a.bucket_p99, ratio(b.bucket_p99, a.bucket_p99)],
    ["reconnects/s per 100 ms bucket, max", b.bucket_max, a.bucket_max, ratio(b.bucket_max, a.bucket_max)],
    ["first reconnect after SIGTERM, s", s(b.first_ms), s(a.first_ms), "-"],
    ["all reconnected after SIGTERM, s", s(b.all_ms), s(a.all_ms), ratio(b.all_ms, a.all_ms)],
    ["transports closed between (first - last disconnect), s", `${s(b.first_disconnect_ms)} - ${s(b.last_disconnect_ms)}`, `${s(a.first_disconnect_ms)} - ${s(a.last_disconnect_ms)}`, "-"],
    ["failed to reconnect (of " + b.clients + " / " + a.clients + ")", b.failed, a.failed, "-"],
    ["reconnected to", split(b), split(a), "-"],
    ["connect errors after SIGTERM", b.connect_errors_after_sigterm, a.connect_errors_after_sigterm, "-"],
  ];
  const lines = [
    `| figure | ${b.label} | ${a.label} | after/before |`,
    "|---|---|---|---|",
    ...rows.map((r) => `| ${r.join(" | ")} |`),
  ];
  console.log(lines.join("\n"));
}

// ---------------------------------------------------------------- main

const [mode, ...args] = process.argv.slice(2);
if (mode === "run") {
  run().catch((e) => die(e.stack || String(e)));
} else if (mode === "table" && args.length === 2) {
  table(args[0], args[1]);
} else if (mode === "selftest") {
  // the figures on known inputs
  const assert = require("assert");
  assert.strictEqual(peakWindow([0, 100, 999, 1000, 1500], 1000), 3);
  assert.strictEqual(peakWindow([], 1000), 0);
  assert.deepStrictEqual(bucketRates([0, 50, 250]), [20, 0, 10]);
  assert.strictEqual(percentile([10, 20, 30, 40], 50), 20);
  assert.strictEqual(percentile([10, 20, 30, 40], 99), 40);
  console.log("ok");
} else {
  die("usage: drain.js run | table BEFORE.json AFTER.json | selftest");
}

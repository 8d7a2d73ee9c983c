#!/usr/bin/env node
// A long-polling-only socket.io client for checks that run inside a pod (the real-node tier):
//   node polling-check.js URL [CLIENTS] [SECONDS]
// Connects CLIENTS clients (default 6) with transports: ["polling"] and no reconnection, waits for
// each `hello`, then for SECONDS (default 4) makes every client join a room and publish to it once
// a second, checking every ack and every echo. Each poll is its own HTTP request, so a load
// balancer that sends a session's requests to different servers breaks it ("Session ID unknown",
// then a transport error). Prints one JSON line: {ok, clients, nodes, acks, echoes, errors} and
// exits 0 only when every client completed its session.
// Timeouts are generous on purpose: every poll is a new TCP connection (socket.io-client's Node
// XHR uses no keep-alive agent), and on the test node the first packet of each connection is
// judged in user space by the NetworkPolicy enforcer (nfqueue); a dropped SYN is retried after
// 1 s, then 3 s. Correctness is checked here, not latency.
"use strict";

const { io } = require("socket.io-client");

const url = process.argv[2];
const n = Number(process.argv[3] || 6);
const seconds = Number(process.argv[4] || 4);
if (!url) {
  console.error("usage: polling-check.js URL [CLIENTS] [SECONDS]");
  process.exit(2);
}

const errors = [];
const nodes = new Set();
const t0 = Date.now();
const ms = () => Date.now() - t0;
let acks = 0;
let echoes = 0;

function one(i) {
  return new Promise((resolve) => {
    const room = `poll-${process.pid}-${i}`;
    const socket = io(url, {
      transports: ["polling"],
      reconnection: false,
      forceNew: true,
      timeout: 20000,
    });
    let done = false;
    // What the transport did last (ms since start), so that a stuck session says which request
    // hung: the long-poll GET (poll without pollComplete) or a POST (packets written, no drain).
    const seen = {};
    const track = (t) => {
      for (const ev of ["poll", "pollComplete", "drain", "error", "close"]) t.on(ev, () => (seen[ev] = ms()));
    };
    socket.io.on("open", () => {
      seen.open = ms();
      track(socket.io.engine.transport);
      socket.io.engine.on("packetCreate", () => (seen.packetCreate = ms()));
      socket.io.engine.on("packet", () => (seen.packet = ms()));
    });
    const finish = (err) => {
      if (done) return;
      done = true;
      if (err) errors.push(`client ${i}: ${err} at ${ms()} ms, last transport events ${JSON.stringify(seen)}`);
      socket.close();
      resolve();
    };
    socket.on("connect_error", (e) => finish(`connect_error: ${e.message}`));
    socket.on("disconnect", (reason, d) =>
      finish(`disconnected: ${reason}${d && d.description ? ` (${d.description.message || d.description})` : ""}`)
    );
    socket.on("chat", () => echoes++);
    socket.on("hello", async ({ node }) => {
      nodes.add(node);
      seen.hello = ms();
      try {
        const joined = await socket.timeout(15000).emitWithAck("join", room);
        if (!joined || joined.ok !== true) throw new Error(`join: ${JSON.stringify(joined)}`);
        acks++;
        for (let k = 0; k < seconds; k++) {
          await new Promise((r) => setTimeout(r, 1000));
          const r = await socket
            .timeout(15000)
            .emitWithAck("publish", { room, event: "chat", data: k });
          if (!r || r.ok !== true) throw new Error(`publish: ${JSON.stringify(r)}`);
          acks++;
        }
        finish();
      } catch (e) {
        finish(e.message || String(e));
      }
    });
  });
}

(async () => {
  await Promise.all(Array.from({ length: n }, (_, i) => one(i)));
  // Echoes arrive before the last ack's reply or right after it.
  await new Promise((r) => setTimeout(r, 500));
  const expectedAcks = n * (seconds + 1);
  const ok = errors.length === 0 && acks === expectedAcks && echoes >= n * seconds;
  console.log(
    JSON.stringify({ ok, clients: n, nodes: [...nodes].sort(), acks, expectedAcks, echoes, errors })
  );
  process.exit(ok ? 0 : 1);
})();

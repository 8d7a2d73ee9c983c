#!/usr/bin/env node
// A long-polling-only socket.io client for checks that run inside a pod (the real-node tier):
//   node polling-check.js URL [CLIENTS] [SECONDS]
// Connects CLIENTS clients (default 6) with transports: ["polling"] and no reconnection, waits for
// each `hello`, then for SECONDS (default 4) makes every client join a room and publish to it once
// a second, checking every ack and every echo. Each poll is its own HTTP request, so a load
// balancer that sends a session's requests to different servers breaks it ("Session ID unknown",
// then a transport error). Prints one JSON line: {ok, clients, nodes, acks, echoes, errors} and
// exits 0 only when every client completed its session.
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
let acks = 0;
let echoes = 0;

function one(i) {
  return new Promise((resolve) => {
    const room = `poll-${process.pid}-${i}`;
    const socket = io(url, {
      transports: ["polling"],
      reconnection: false,
      forceNew: true,
      timeout: 10000,
    });
    let done = false;
    const finish = (err) => {
      if (done) return;
      done = true;
      if (err) errors.push(`client ${i}: ${err}`);
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
      try {
        const joined = await socket.timeout(5000).emitWithAck("join", room);
        if (!joined || joined.ok !== true) throw new Error(`join: ${JSON.stringify(joined)}`);
        acks++;
        for (let k = 0; k < seconds; k++) {
          await new Promise((r) => setTimeout(r, 1000));
          const r = await socket
            .timeout(5000)
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

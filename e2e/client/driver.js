#!/usr/bin/env node
// Drives the official socket.io-client for the Rust tests (e2e/src/sio.rs): one process hosts many
// clients. Protocol: line-delimited JSON on stdin (commands) and stdout (replies and events).
//
// command  {"id": N, "cmd": "...", "client": "c1", ...}
// reply    {"id": N, "ok": true, "result": ...}  or  {"id": N, "ok": false, "error": "..."}
// event    {"ev": "<kind>", "client": "c1", "t": <epoch ms, fractional>, ...}
//
// commands:
//   connect    {client, url, opts, localAddress?}   creates the client (io(url, opts)); replies at
//              once, the outcome arrives as a "connect" or "connect_error" event. `localAddress`
//              binds every HTTP request and WebSocket of this client to that source address (nginx
//              ip_hash keys on it). `opts` goes to io() as is (transports, auth, withCredentials,
//              extraHeaders, reconnection*, timeout, ...); forceNew is always set so that clients
//              never share an Engine.IO connection.
//   emit       {client, event, args, ack?, timeoutMs?}  ack=true: the reply's result is the array of
//              the ack's arguments, or an error after timeoutMs (default 5000).
//   emitMany   {client, event, args: [[...], ...]}     emits one event per argument list, in order, in
//              one tick (bursts without a stdin round trip per event); result: send time (epoch ms).
//   setAuth    {client, auth}                          used by the next (re)connection handshakes.
//   state      {client}                                {connected, active, id, transport, recovered,
//                                                      pid, lastOffset} (pid and lastOffset: the
//                                                      client's connection state recovery fields).
//   forgeSession {client, pid?, offset?}               overwrites the client's private session id and
//                                                      last offset (tests of forged claims); a field
//                                                      given as null is removed.
//   dropTransport {client}                             closes the Engine.IO connection as a network
//                                                      loss would: the client reconnects by itself.
//   disconnect {client}                                socket.disconnect(): no automatic reconnection.
//   connectAgain {client}                              socket.connect() after a disconnect.
//   remove     {client}                                disconnects and forgets the client.
//   exit       {}                                      closes every client and exits.
// events:
//   event {name, args}            every event the server emits (socket.onAny)
//   connect {id, transport, recovered}   connect_error {message, data}    disconnect {reason, description}
//   reconnect_attempt {attempt}   reconnect {attempt}               upgrade {transport}
//   open {transport}              a new Engine.IO connection (first connect and every reconnection)
"use strict";

const http = require("http");
const readline = require("readline");
const { io } = require("socket.io-client");

const clients = new Map(); // name -> {socket, agent}

const now = () => performance.timeOrigin + performance.now();

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function push(client, ev, fields) {
  out({ ev, client, t: now(), ...fields });
}

// Error objects do not serialise with JSON.stringify; keep what a test can assert on.
function errInfo(err) {
  if (err === undefined || err === null) return null;
  if (err instanceof Error) {
    return { message: err.message, type: err.type, description: describe(err.description), context: describe(err.context) };
  }
  return describe(err);
}

function describe(v) {
  if (v === undefined || v === null) return null;
  if (v instanceof Error) return v.message;
  if (typeof v === "object") {
    // XHR or CloseEvent-like objects: keep plain values only
    const r = {};
    for (const k of ["status", "statusText", "code", "reason", "message", "type"]) {
      if (v[k] !== undefined && typeof v[k] !== "object" && typeof v[k] !== "function") r[k] = v[k];
    }
    return Object.keys(r).length ? r : String(v);
  }
  return v;
}

function transportOf(socket) {
  const engine = socket.io.engine;
  return engine && engine.transport ? engine.transport.name : null;
}

function get(name) {
  const c = clients.get(name);
  if (!c) throw new Error(`unknown client ${JSON.stringify(name)}`);
  return c;
}

function connect(cmd) {
  if (clients.has(cmd.client)) throw new Error(`client ${cmd.client} exists already`);
  const opts = Object.assign({}, cmd.opts || {}, { forceNew: true });
  let agent = null;
  if (cmd.localAddress) {
    // Used by the polling requests (xmlhttprequest-ssl) and by the WebSocket upgrade (ws) alike.
    agent = new http.Agent({ localAddress: cmd.localAddress, keepAlive: true });
    opts.agent = agent;
  }
  const socket = io(cmd.url, opts);
  const name = cmd.client;
  clients.set(name, { socket, agent });

  socket.onAny((event, ...args) => push(name, "event", { name: event, args }));
  socket.on("connect", () =>
    push(name, "connect", { id: socket.id, transport: transportOf(socket), recovered: socket.recovered === true }),
  );
  socket.on("connect_error", (err) =>
    push(name, "connect_error", { message: err && err.message, data: err && err.data !== undefined ? err.data : null }),
  );
  socket.on("disconnect", (reason, description) =>
    push(name, "disconnect", { reason, description: errInfo(description) }),
  );
  const manager = socket.io;
  manager.on("reconnect_attempt", (attempt) => push(name, "reconnect_attempt", { attempt }));
  manager.on("reconnect", (attempt) => push(name, "reconnect", { attempt }));
  manager.on("open", () => {
    const engine = manager.engine;
    push(name, "open", { transport: transportOf(socket) });
    engine.on("upgrade", (transport) => push(name, "upgrade", { transport: transport.name }));
  });
  return null;
}

function emit(cmd, reply) {
  const { socket } = get(cmd.client);
  const args = Array.isArray(cmd.args) ? cmd.args : [];
  if (!cmd.ack) {
    socket.emit(cmd.event, ...args);
    return reply(null);
  }
  socket.timeout(cmd.timeoutMs || 5000).emit(cmd.event, ...args, (err, ...response) => {
    if (err) reply(undefined, `no ack for ${cmd.event} within ${cmd.timeoutMs || 5000} ms`);
    else reply(response);
  });
}

const handlers = {
  connect: (cmd, reply) => reply(connect(cmd)),
  emit,
  emitMany: (cmd, reply) => {
    const { socket } = get(cmd.client);
    const t = now();
    for (const args of cmd.args) socket.emit(cmd.event, ...args);
    reply(t);
  },
  setAuth: (cmd, reply) => {
    get(cmd.client).socket.auth = cmd.auth;
    reply(null);
  },
  state: (cmd, reply) => {
    const { socket } = get(cmd.client);
    reply({
      connected: socket.connected,
      active: socket.active,
      id: socket.id || null,
      transport: transportOf(socket),
      recovered: socket.recovered === true,
      pid: socket._pid || null,
      lastOffset: socket._lastOffset || null,
    });
  },
  forgeSession: (cmd, reply) => {
    const { socket } = get(cmd.client);
    if ("pid" in cmd) socket._pid = cmd.pid === null ? undefined : cmd.pid;
    if ("offset" in cmd) socket._lastOffset = cmd.offset === null ? undefined : cmd.offset;
    reply(null);
  },
  dropTransport: (cmd, reply) => {
    const engine = get(cmd.client).socket.io.engine;
    if (engine) engine.close();
    reply(null);
  },
  disconnect: (cmd, reply) => {
    get(cmd.client).socket.disconnect();
    reply(null);
  },
  connectAgain: (cmd, reply) => {
    get(cmd.client).socket.connect();
    reply(null);
  },
  remove: (cmd, reply) => {
    const c = get(cmd.client);
    c.socket.disconnect();
    if (c.agent) c.agent.destroy();
    clients.delete(cmd.client);
    reply(null);
  },
  exit: (cmd, reply) => {
    for (const c of clients.values()) {
      c.socket.disconnect();
      if (c.agent) c.agent.destroy();
    }
    reply(null);
    process.stdout.write("", () => process.exit(0));
  },
};

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    out({ id: null, ok: false, error: `bad command line: ${e.message}` });
    return;
  }
  let replied = false;
  const reply = (result, error) => {
    if (replied) return;
    replied = true;
    if (error !== undefined) out({ id: cmd.id, ok: false, error });
    else out({ id: cmd.id, ok: true, result: result === undefined ? null : result });
  };
  const h = handlers[cmd.cmd];
  if (!h) return reply(undefined, `unknown command ${JSON.stringify(cmd.cmd)}`);
  try {
    h(cmd, reply);
  } catch (e) {
    reply(undefined, e.message);
  }
});
// The test process went away: do not outlive it.
rl.on("close", () => process.exit(0));

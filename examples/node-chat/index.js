// A plain socket.io chat server, as teams run them before Kubernetes: socket.io 4 with
// @socket.io/redis-adapter, one process per node, sticky sessions at the proxy. The only thing
// it needs from realtime-operator is its settings, read from the environment contract of
// `spec.app` (see README.md):
//   PORT            port to listen on
//   NAME            this node's name (the pod name), shown to clients
//   REDIS_URL       redis://host:port of the Redis that joins the nodes (no password in it)
//   REDIS_PASSWORD  that Redis' password (from the operator's Secret), when it has one
//
// What it does (the seed's chat, plus the small client contract the project's end-to-end
// scenarios drive, so the same tests run against it):
//   on connect               -> emit "hello" {node: NAME, id: socket.id}
//   "chat message" text      -> every client on every node gets "chat message" {node, from, text}
//   "join" / "leave" room    -> ack {ok: true}
//   "publish" {room?, event, data}  -> room (or everyone), on every node, gets event(data); ack {ok: true}
//   "send" {to, event, data} -> exactly the socket `to`, on whatever node; ack {ok: true}
//   "presence" {room}        -> ack {members: [{id, node}]} across the nodes
//   bad input                -> ack {ok: false, error}; nothing is emitted
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const PORT = parseInt(process.env.PORT || "3000", 10);
const NAME = process.env.NAME || `node-${PORT}`;
const REDIS_URL = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const REDIS_PASSWORD = process.env.REDIS_PASSWORD || undefined;

const RESERVED = new Set(["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]);
// Client rooms live apart from the per-socket rooms socket.io names after socket ids.
const roomKey = (room) => `room:${room}`;

class BadInput extends Error {}
const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const str = (v, what) => {
  if (typeof v !== "string" || v.length === 0) throw new BadInput(`${what} must be a non-empty string`);
  return v;
};
const eventName = (v) => {
  if (RESERVED.has(str(v, "event"))) throw new BadInput(`event "${v}" is reserved`);
  return v;
};
const obj = (v, what) => {
  if (!isObj(v)) throw new BadInput(`${what} must be an object`);
  return v;
};
const dataOf = (p) => {
  if (!("data" in p)) throw new BadInput("data is required (null is allowed)");
  return p.data;
};

// A handler of the first argument; its result (or promise) is the ack, an exception becomes
// {ok: false, error}. Acks are optional: the callback, when sent, is the last argument.
function handle(socket, event, fn) {
  socket.on(event, (...args) => {
    const ack = typeof args[args.length - 1] === "function" ? args.pop() : null;
    const fail = (e) => {
      if (!(e instanceof BadInput)) console.error(`[${NAME}] ${event} failed:`, e.message);
      if (ack) ack({ ok: false, error: e.message });
    };
    try {
      Promise.resolve(fn(args[0])).then((r) => ack && ack(r), fail);
    } catch (e) {
      fail(e);
    }
  });
}

async function main() {
  const pub = createClient({ url: REDIS_URL, password: REDIS_PASSWORD });
  const sub = pub.duplicate();
  for (const c of [pub, sub]) c.on("error", (e) => console.error(`[${NAME}] redis:`, e.message));
  await Promise.all([pub.connect(), sub.connect()]);

  const server = http.createServer();
  const io = new Server(server, { cors: { origin: "*" } });
  io.adapter(createAdapter(pub, sub));

  io.on("connection", (socket) => {
    socket.data.node = NAME;
    socket.emit("hello", { node: NAME, id: socket.id });

    socket.on("chat message", (text) => {
      if (typeof text === "string" && text.length > 0 && text.length <= 1000) {
        io.emit("chat message", { node: NAME, from: socket.id, text });
      }
    });
    handle(socket, "join", (room) => {
      socket.join(roomKey(str(room, "room")));
      return { ok: true };
    });
    handle(socket, "leave", (room) => {
      socket.leave(roomKey(str(room, "room")));
      return { ok: true };
    });
    handle(socket, "publish", (p) => {
      obj(p, "publish payload");
      const ev = eventName(p.event);
      const data = dataOf(p);
      ("room" in p ? io.to(roomKey(str(p.room, "room"))) : io).emit(ev, data);
      return { ok: true };
    });
    handle(socket, "send", (p) => {
      obj(p, "send payload");
      const to = str(p.to, "to");
      if (to.startsWith(roomKey(""))) throw new BadInput("to must be a socket id");
      io.to(to).emit(eventName(p.event), dataOf(p));
      return { ok: true };
    });
    handle(socket, "presence", async (p) => {
      const room = str(obj(p, "presence payload").room, "room");
      const sockets = await io.in(roomKey(room)).fetchSockets();
      return { members: sockets.map((s) => ({ id: s.id, node: s.data.node })) };
    });
  });

  server.listen(PORT, () => console.log(`[${NAME}] chat listening on :${PORT}, Redis ${REDIS_URL}`));

  // SIGTERM (a rollout, a drain): close every connection so clients reconnect to another pod.
  const shutdown = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 5000).unref();
  };
  process.on("SIGTERM", shutdown);
  process.on("SIGINT", shutdown);
}

main().catch((e) => {
  console.error(`[${NAME}]`, e);
  process.exit(1);
});

#!/usr/bin/env python3
"""Summarize a `make bench-recovery` results folder (bench/recovery.sh) into markdown: the cost of
connection state recovery for realtime-server ("ours") and for the Node.js reference with
@socket.io/redis-streams-adapter ("ref"), and ours/ref.

    recovery_summary.py RESULTS_DIR

The folder holds state/sessions-<sys>-<n>.json and state/replay-<sys>.json (bench/recovery/
recovery.js) and fanout/r<round>-<sys>-<sweep|over>.txt (rtbench --json output between two
CPUTICKS lines), sys being ours-off, ours-on, ref-off or ref-on. Everything below `load_dir` is
pure.
"""
import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from summarize import (  # noqa: E402  (bench/summarize.py: the main bench's parsing)
    Run,
    cpu_us_per_delivered,
    fanout_phases,
    parse_output,
    run_node_cpu_us_per_delivered,
    send_secs,
)

SYSTEMS = ("ours", "ref")
FIXED_RATE = 50.0
FANOUT_RE = re.compile(r"^r(\d+)-((?:ours|ref)-(?:on|off))-(sweep|over)$")


# ------------------------------------------------------------------ pure figures

def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def kb_per_1000(bytes_per_session):
    return None if bytes_per_session is None else bytes_per_session * 1000 / 1024


def node_ms(cpu_ms):
    return sum(v for k, v in cpu_ms.items() if re.fullmatch(r"n\d+", k))


def replay_figures(rep):
    """From one replay.json: CPU per restore with nothing missed, marginal CPU per replayed packet
    (mean CPU of the k>0 rounds minus mean CPU of the k=0 rounds, / clients × k), latencies of the
    k>0 rounds (mean of the rounds' percentiles), and the recovered share / loss of all rounds."""
    rounds = rep["rounds"]
    zero = [r for r in rounds if r["k"] == 0]
    some = [r for r in rounds if r["k"] > 0]
    out = {"rounds": len(rounds), "k": some[0]["k"] if some else 0,
           "clients": rounds[0]["clients"] if rounds else 0}
    restores = sum(r["clients"] for r in rounds)
    out["recovered"] = sum(r["recovered"] for r in rounds)
    out["restores"] = restores
    out["lost"] = sum(r["lost"] for r in rounds)
    out["duplicated"] = sum(r["duplicated"] for r in rounds)
    out["expected"] = sum(r["replayed_expected"] for r in rounds)
    for who, pick in (("nodes", node_ms), ("redis", lambda c: c.get("redis", 0.0))):
        z = mean([pick(r["cpu_ms"]) for r in zero])
        s = mean([pick(r["cpu_ms"]) for r in some])
        n = out["clients"]
        out[f"{who}_us_per_restore"] = z * 1000 / n if z is not None and n else None
        if z is not None and s is not None and n and out["k"]:
            out[f"{who}_us_per_replayed"] = (s - z) * 1000 / (n * out["k"])
        else:
            out[f"{who}_us_per_replayed"] = None
    for key in ("connect_ms", "all_missed_ms"):
        for q in ("p50", "p99"):
            out[f"{key}_{q}"] = mean([r[key][q] for r in some])
            out[f"{key}_{q}_k0"] = mean([r[key][q] for r in zero])
    return out


def fixed_phase(run, rate=FIXED_RATE):
    return next((r for r in fanout_phases(run, True) if r["rate"] == rate), None)


def redis_us_per_broadcast(r):
    """Redis CPU during the send window per broadcast sent, µs."""
    secs = send_secs(r)
    if not secs or not r["messages"]:
        return None
    return r["cpu_pct_send"].get("redis", 0.0) / 100.0 * secs * 1e6 / r["messages"]


def redis_us_per_broadcast_run(run):
    """Redis CPU over a whole rtbench run (CPUTICKS before / after) per broadcast sent, µs."""
    if len(run.cpu_ticks) < 2:
        return None
    before, after = run.cpu_ticks[0], run.cpu_ticks[-1]
    ticks = after["ticks"].get("redis", 0) - before["ticks"].get("redis", 0)
    sent = sum(r["messages"] for r in fanout_phases(run, False))
    return ticks / after["hz"] * 1e6 / sent if sent else None


def commandstats_usec(text):
    """Total `usec` of every command in an `INFO commandstats` reply (Redis' own command time)."""
    total = 0
    for line in text.splitlines():
        m = re.match(r"^cmdstat_[^:]+:calls=\d+,usec=(\d+),", line.strip())
        if m:
            total += int(m.group(1))
    return total


def fanout_figures(runs):
    """runs: {"sweep": Run, "over": Run, "commandstats": text} of one system variant in one round."""
    sweep, over = runs.get("sweep"), runs.get("over")
    sent = sum(r["messages"] for x in (sweep, over) if x for r in fanout_phases(x, False))
    stats = runs.get("commandstats")
    fx = fixed_phase(sweep) if sweep else None
    phases = (fanout_phases(sweep, True) if sweep else []) + (fanout_phases(over, False) if over else [])
    return {
        "saturation": max((r["delivered_per_s"] for r in fanout_phases(over, False)), default=None) if over else None,
        "cpu_us_50": cpu_us_per_delivered(fx) if fx else None,
        "redis_us_per_bcast_50": redis_us_per_broadcast(fx) if fx else None,
        "cpu_us_over": run_node_cpu_us_per_delivered(over) if over else None,
        "redis_us_per_bcast_over": redis_us_per_broadcast_run(over) if over else None,
        "p50_50": fx["latency"]["p50_ms"] if fx else None,
        "p99_50": fx["latency"]["p99_ms"] if fx else None,
        "loss": sum(r["loss"] for r in phases) if phases else None,
        "anomalies": sum(len(x.anomalies) for x in (sweep, over) if x),
        "redis_cmd_us_per_bcast": commandstats_usec(stats) / sent if stats and sent else None,
    }


# ------------------------------------------------------------------ rendering

def fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, int) or (abs(x) >= 1000 and digits <= 1):
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def cell(vals, digits=1):
    """Mean of the rounds, each round in parentheses when there are several."""
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    m = mean(vals)
    if len(vals) == 1:
        return fmt(m, digits)
    return f"{fmt(m, digits)} ({', '.join(fmt(v, digits) for v in vals)})"


def ratio(a, b):
    a, b = mean(a) if isinstance(a, list) else a, mean(b) if isinstance(b, list) else b
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def render(data, machine=""):
    lines = []
    if machine:
        lines += ["```", machine.strip(), "```", ""]
    rows = []

    def row(name, ours, ref, digits=1, rat=True):
        rows.append(f"| {name} | {cell(ours, digits)} | {cell(ref, digits)} | {ratio(ours, ref) if rat else '-'} |")

    sess = data.get("sessions", {})
    sizes = sorted({n for (_, n) in sess})
    for n in sizes:
        o, r = sess.get(("ours", n)), sess.get(("ref", n))
        g = lambda s, k: [kb_per_1000(s[k])] if s else []  # noqa: E731
        row(f"Redis memory per 1000 sessions, clients connected, KB ({n} clients)",
            g(o, "bytes_per_session_connected"), g(r, "bytes_per_session_connected"))
        row(f"Redis memory per 1000 sessions after a recoverable disconnect, KB ({n} clients)",
            g(o, "bytes_per_session_disconnected"), g(r, "bytes_per_session_disconnected"))
        d = lambda s: [kb_per_1000(s["bytes_per_session_disconnected"] - s["bytes_per_session_connected"])] if s else []  # noqa: E731
        row(f"  of which added by the disconnect, KB ({n} clients)", d(o), d(r))
    if len(sizes) >= 2:
        a, b = sizes[0], sizes[-1]

        def marginal(system, base):
            lo, hi = sess.get((system, a)), sess.get((system, b))
            if not lo or not hi:
                return []
            # ours keeps a session from the connect on; the reference only from the disconnect
            # (its growth while connected is the logged `hello` of each socket, not sessions)
            d = lambda s: s["mem_disconnected"] - s[base]  # noqa: E731
            return [kb_per_1000((d(hi) - d(lo)) / (b - a))]
        row(f"Redis memory per 1000 saved sessions alone, marginal from {a} to {b} clients, KB",
            marginal("ours", "mem_empty"), marginal("ref", "mem_connected"))
    if sizes:
        row("`MEMORY USAGE` of one saved session key (mean of 50, after the disconnect), B",
            [s.get("memory_usage_per_session_key") for (sy, _), s in sorted(sess.items()) if sy == "ours"][:1],
            [s.get("memory_usage_per_session_key") for (sy, _), s in sorted(sess.items()) if sy == "ref"][:1], 0)
        row("Redis memory per logged packet (100 B filler; `used_memory` delta / stream entries), B",
            [s["bytes_per_logged_packet"] for (sy, _), s in sorted(sess.items()) if sy == "ours"],
            [s["bytes_per_logged_packet"] for (sy, _), s in sorted(sess.items()) if sy == "ref"], 0)

    rep = data.get("replay", {})
    o, r = rep.get("ours"), rep.get("ref")
    if o or r:
        a = o or r
        k, n = a["k"], a["clients"]
        g = lambda x, key: [x[key]] if x else []  # noqa: E731
        row("CPU per restore, nothing missed, server nodes, µs (reconnect + restore)", g(o, "nodes_us_per_restore"), g(r, "nodes_us_per_restore"))
        row("CPU per restore, nothing missed, Redis, µs", g(o, "redis_us_per_restore"), g(r, "redis_us_per_restore"))
        row(f"CPU per replayed packet (k={k} missed), server nodes, µs", g(o, "nodes_us_per_replayed"), g(r, "nodes_us_per_replayed"), 2)
        row(f"CPU per replayed packet (k={k} missed), Redis, µs", g(o, "redis_us_per_replayed"), g(r, "redis_us_per_replayed"), 2)
        row(f"restore latency, reconnect -> `connect` (recovered), k={k}, p50 ms", g(o, "connect_ms_p50"), g(r, "connect_ms_p50"), 1)
        row(f"restore latency, reconnect -> `connect` (recovered), k={k}, p99 ms", g(o, "connect_ms_p99"), g(r, "connect_ms_p99"), 1)
        row(f"restore latency, reconnect -> last of the {k} missed packets, p50 ms", g(o, "all_missed_ms_p50"), g(r, "all_missed_ms_p50"), 1)
        row(f"restore latency, reconnect -> last of the {k} missed packets, p99 ms", g(o, "all_missed_ms_p99"), g(r, "all_missed_ms_p99"), 1)
        rows.append(f"| restore latency, nothing missed, reconnect -> `connect`, p50 / p99 ms | "
                    f"{fmt(o and o['connect_ms_p50_k0'])} / {fmt(o and o['connect_ms_p99_k0'])} | "
                    f"{fmt(r and r['connect_ms_p50_k0'])} / {fmt(r and r['connect_ms_p99_k0'])} | - |")
        share = lambda x: f"{x['recovered']}/{x['restores']}, lost {x['lost']} of {x['expected']}, duplicated {x['duplicated']}" if x else "-"  # noqa: E731
        rows.append(f"| restores recovered (all rounds, {n} clients per round); missed packets lost, duplicated | {share(o)} | {share(r)} | - |")

    fan = data.get("fanout", {})
    rounds = sorted({rd for (rd, _) in fan})

    def fv(system, state, key):
        return [fanout_figures(fan[(rd, f"{system}-{state}")])[key] for rd in rounds if (rd, f"{system}-{state}") in fan]

    if fan:
        for key, name, digits in (
            ("saturation", "fan-out: delivered msg/s at saturation (best overload phase)", 0),
            ("cpu_us_50", "fan-out: server CPU per delivered message at 50/s x receivers, µs", 2),
            ("cpu_us_over", "fan-out: server CPU per delivered message, whole overload run, µs", 2),
            ("redis_us_per_bcast_50", "fan-out: Redis CPU per broadcast at 50/s, µs", 1),
            ("redis_us_per_bcast_over", "fan-out: Redis CPU per broadcast, whole overload run, µs", 1),
            ("redis_cmd_us_per_bcast", "fan-out: Redis command time (`INFO commandstats` usec, whole cluster life incl. connects) per broadcast, µs", 1),
            ("p50_50", "fan-out: p50 latency at 50/s, ms", 1),
            ("p99_50", "fan-out: p99 latency at 50/s, ms", 1),
            ("loss", "fan-out: messages lost, all phases", 0),
        ):
            for state in ("off", "on"):
                row(f"{name}, recovery {state}", fv("ours", state, key), fv("ref", state, key), digits)
            if key in ("saturation", "cpu_us_50", "cpu_us_over", "redis_us_per_bcast_50", "redis_us_per_bcast_over", "redis_cmd_us_per_bcast", "p99_50"):
                on_off = lambda s: ratio(fv(s, "on", key), fv(s, "off", key))  # noqa: E731
                rows.append(f"| {name}: on/off | {on_off('ours')} | {on_off('ref')} | - |")
        anomalies = {f"{s}": sum(fv(s.split("-")[0], s.split("-")[1], "anomalies")) for s in ("ours-off", "ours-on", "ref-off", "ref-on")}
    else:
        anomalies = {}

    lines += ["| figure | ours | reference | ours/ref |", "|---|---|---|---|", *rows]
    if any(anomalies.values()):
        lines += ["", f"rtbench anomaly lines: {anomalies}"]
    return "\n".join(lines)


# ------------------------------------------------------------------ loading

def load_dir(d):
    data = {"sessions": {}, "replay": {}, "fanout": {}}
    for f in glob.glob(os.path.join(d, "state", "sessions-*-on-*.json")):
        m = re.search(r"sessions-(ours|ref)-on-(\d+)\.json$", f)
        if m:
            with open(f) as fh:
                data["sessions"][(m.group(1), int(m.group(2)))] = json.load(fh)
    for f in glob.glob(os.path.join(d, "state", "replay-*-on.json")):
        m = re.search(r"replay-(ours|ref)-on\.json$", f)
        if m:
            with open(f) as fh:
                data["replay"][m.group(1)] = replay_figures(json.load(fh))
    for f in glob.glob(os.path.join(d, "fanout", "r*-*.txt")):
        m = FANOUT_RE.match(os.path.basename(f)[:-4])
        if not m:
            continue
        with open(f) as fh:
            results, anomalies, ticks = parse_output(fh.read())
        rd, sysname, kind = int(m.group(1)), m.group(2), m.group(3)
        run = Run(rd, sysname, kind, results, anomalies, ticks)
        data["fanout"].setdefault((rd, sysname), {})[kind] = run
    for f in glob.glob(os.path.join(d, "fanout", "run-r*-*", "redis-commandstats.txt")):
        m = re.search(r"run-r(\d+)-((?:ours|ref)-(?:on|off))$", os.path.basename(os.path.dirname(f)))
        if m:
            with open(f) as fh:
                data["fanout"].setdefault((int(m.group(1)), m.group(2)), {})["commandstats"] = fh.read()
    return data


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = argv[1]
    machine = ""
    if os.path.exists(os.path.join(d, "machine.txt")):
        with open(os.path.join(d, "machine.txt")) as fh:
            machine = fh.read()
    print(render(load_dir(d), machine))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Summarize a `make bench-floor` results folder (bench/floor.sh) into markdown: realtime-server
("ours") against the floor (bench/floor/, rt-floor), ratios ours/floor with the issue 16 goals, and
the 20k-connection figures.

    summarize_floor.py RESULTS_DIR

Files: r<round>-<ours|floor>-<nginx|direct|single>-<rate50|over>.txt (rtbench fanout outputs with
`RESULT {json}` lines and the CPUTICKS lines floor.sh writes around each run) and
<ours|floor>-<conns1k|conns20k|fan20k>.txt, plus machine.txt. Everything below `load_dir` is pure.
"""
import glob
import os
import re
import sys

import summarize as s

SYSTEMS = ("ours", "floor")
TOPOS = (("nginx", "2 nodes + Redis, through nginx"), ("direct", "2 nodes + Redis, direct to the nodes"),
         ("single", "1 node, direct, no Redis"))
FIXED_RATE = 50.0
CPU_GOAL = 1.3     # ours / floor CPU per delivery at 50/s x 1000, at most
THROUGHPUT_GOAL = 0.8  # ours / floor saturation throughput, at least
RUN_RE = re.compile(r"^r(\d+)-(ours|floor)-(nginx|direct|single)-(rate50|over)$")
CONNS_RE = re.compile(r"^(ours|floor)-(conns1k|conns20k|fan20k)$")


class Run(s.Run):
    pass


def parse_name(name):
    """(round, system, kind) with kind = '<topo>-<rate50|over>' or a conns kind; None otherwise."""
    m = RUN_RE.match(name)
    if m:
        return int(m.group(1)), m.group(2), f"{m.group(3)}-{m.group(4)}"
    m = CONNS_RE.match(name)
    if m:
        return 0, m.group(1), m.group(2)
    return None


# ------------------------------------------------------------------ figures of one run (pure)

def fixed_phase(run, rate=FIXED_RATE):
    return next((r for r in s.fanout_phases(run, True) if r["rate"] == rate), None)


def cpu50(run):
    """Server nodes' CPU per delivered message at 50/s (send window), µs."""
    p = fixed_phase(run) if run else None
    return s.cpu_us_per_delivered(p) if p else None


def cpu50_with_redis(run):
    """The same with Redis counted: the cross-node step of both systems."""
    p = fixed_phase(run) if run else None
    if not p:
        return None
    secs = s.send_secs(p)
    pct = s.node_cpu_pct(p) + p["cpu_pct_send"].get("redis", 0.0)
    return pct / 100.0 * secs * 1e6 / p["received"] if secs and p["received"] else None


def saturation(run):
    return max((r["delivered_per_s"] for r in s.fanout_phases(run, False)), default=None) if run else None


def over_cpu(run):
    return s.run_node_cpu_us_per_delivered(run) if run else None


def latency(run, q):
    p = fixed_phase(run) if run else None
    return p["latency"].get(f"{q}_ms") if p else None


def loss(run):
    return sum(r["loss"] for r in s.fanout_phases(run, False)) if run else None


def limit_phase(run):
    """The steady overload phase (>= 3 s of sending) with the best delivered rate."""
    return s.saturation_phase({"over": run}) if run else None


def conns_mem(run):
    """(KB per connection of the node, connections on it) from a conns run."""
    if not run:
        return None, None
    r = next((x for x in run.results if x["mode"] == "conns"), None)
    if not r or "n1" not in r["procs"]:
        return None, None
    p = r["procs"]["n1"]
    return (p["delta_kb"] / p["conns"] if p["conns"] else None), r["connected"]


def big_fanout(run):
    """The measured (non-warm-up) phase of the large fan-out run."""
    if not run:
        return None
    phases = s.fanout_phases(run, True)
    return phases[-1] if phases else None


# ------------------------------------------------------------------ rendering (pure)

def ratio(ours, floor):
    o, f = s.mean(ours), s.mean(floor)
    return o / f if o is not None and f else None


def verdict(r, goal, at_most):
    if r is None:
        return "-"
    return "met" if (r <= goal if at_most else r >= goal) else "not met"


def index(runs):
    """{(system, kind): [run per round, in round order]}"""
    out = {}
    for run in sorted(runs, key=lambda r: r.round):
        out.setdefault((run.system, run.kind), []).append(run)
    return out


def render(runs, machine=""):
    ix = index(runs)
    lines = []
    if machine:
        lines += [machine.strip().replace("\n", "; "), ""]
    rows = []
    for topo, label in TOPOS:
        if not any((sys_, f"{topo}-rate50") in ix or (sys_, f"{topo}-over") in ix for sys_ in SYSTEMS):
            continue
        specs = [
            (f"CPU per delivery at 50/s x {receivers(ix, topo)}, server nodes, µs", "rate50", cpu50, 2, CPU_GOAL, True),
            ("CPU per delivery at 50/s, nodes + Redis, µs", "rate50", cpu50_with_redis, 2, None, True),
            ("saturation: best delivered msg/s (overload phases)", "over", saturation, 0, THROUGHPUT_GOAL, False),
            ("CPU per delivery, whole overload run incl. drain, server nodes, µs", "over", over_cpu, 2, None, True),
            ("latency p50 at 50/s, ms", "rate50", lambda r: latency(r, "p50"), 1, None, True),
            ("latency p99 at 50/s, ms", "rate50", lambda r: latency(r, "p99"), 1, None, True),
            ("messages lost (all phases)", "rate50", loss, 0, None, True),
            ("messages lost (overload, all phases)", "over", loss, 0, None, True),
        ]
        for name, kind, fn, digits, goal, at_most in specs:
            if topo != "nginx" and topo != "direct" and "Redis" in name:
                continue
            vals = {sys_: [fn(r) for r in ix.get((sys_, f"{topo}-{kind}"), [])] for sys_ in SYSTEMS}
            rt = ratio(vals["ours"], vals["floor"])
            goal_txt = "-" if goal is None else (f"<= {goal}" if at_most else f">= {goal}")
            rows.append((label, name, s.cell(vals["floor"], digits), s.cell(vals["ours"], digits),
                         "-" if rt is None else f"{rt:.2f}", goal_txt,
                         "-" if goal is None else verdict(rt, goal, at_most)))
    if rows:
        lines += ["| setup | metric | floor | ours | ours/floor | goal | met? |", "|---|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        lines += ["", "Per-process CPU in the steady overload phase (% of one core during sending):", "",
                  "| system | setup | round | phase | delivered msg/s | nodes | redis | nginx | rtbench | machine busy % |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for topo, _ in TOPOS:
            for sys_ in SYSTEMS:
                for run in ix.get((sys_, f"{topo}-over"), []):
                    p = limit_phase(run)
                    if not p:
                        continue
                    c = p["cpu_pct_send"]
                    lines.append(f"| {sys_} | {topo} | {run.round} | {p['rate']:g}/s ({p['achieved_send_rate']:.0f}/s sent) | "
                                 f"{p['delivered_per_s']:.0f} | {s.node_cpu_pct(p):.0f} | {c.get('redis', 0):.0f} | "
                                 f"{c.get('nginx', 0):.0f} | {c.get('rtbench', 0):.0f} | {c.get('machine_busy', 0):.0f} |")
    conns = render_conns(ix)
    if conns:
        lines += [""] + conns
    anomalies = [(run, a) for run in runs for a in run.anomalies]
    if anomalies:
        lines += ["", "Anomalies:"] + [f"- r{run.round}-{run.system}-{run.kind}: {a}" for run, a in anomalies]
    return "\n".join(lines) + "\n"


def receivers(ix, topo):
    for sys_ in SYSTEMS:
        for run in ix.get((sys_, f"{topo}-rate50"), []):
            p = fixed_phase(run)
            if p:
                return p["receivers"] if "receivers" in p else int(p["expected"] / max(p["messages"], 1))
    return "?"


def render_conns(ix):
    if not any((sys_, k) in ix for sys_ in SYSTEMS for k in ("conns1k", "conns20k", "fan20k")):
        return []
    def one(sys_, kind):
        runs = ix.get((sys_, kind))
        return runs[-1] if runs else None
    rows = []
    for label, kind in (("small", "conns1k"), ("large", "conns20k")):
        vals = {sys_: conns_mem(one(sys_, kind)) for sys_ in SYSTEMS}
        n = vals["ours"][1] or vals["floor"][1]
        rt = ratio([vals["ours"][0]], [vals["floor"][0]])
        rows.append((f"memory per idle connection, {n} connections on the node, KB",
                     s.fmt(vals["floor"][0], 2), s.fmt(vals["ours"][0], 2), "-" if rt is None else f"{rt:.2f}"))
    fan = {sys_: big_fanout(one(sys_, "fan20k")) for sys_ in SYSTEMS}
    n = next((p["receivers"] for p in fan.values() if p), None)
    if n:
        for q in ("p50", "p99", "max"):
            v = {k: (p["latency"].get(f"{q}_ms") if p else None) for k, p in fan.items()}
            rt = ratio([v["ours"]], [v["floor"]])
            rows.append((f"broadcast to {n} receivers (+1 publisher), latency {q}, ms", s.fmt(v["floor"]), s.fmt(v["ours"]),
                         "-" if rt is None else f"{rt:.2f}"))
        v = {k: (p["loss"] if p else None) for k, p in fan.items()}
        rows.append(("broadcast to all: messages lost", s.fmt(v["floor"]), s.fmt(v["ours"]), "-"))
        v = {k: (s.cpu_us_per_delivered(p) if p else None) for k, p in fan.items()}
        rt = ratio([v["ours"]], [v["floor"]])
        rows.append(("broadcast to all: node CPU per delivery, µs", s.fmt(v["floor"], 2), s.fmt(v["ours"], 2),
                     "-" if rt is None else f"{rt:.2f}"))
        v = {k: (p["cpu_pct_send"].get("rtbench") if p else None) for k, p in fan.items()}
        rows.append(("broadcast to all: rtbench CPU during sending, % of a core", s.fmt(v["floor"], 0), s.fmt(v["ours"], 0), "-"))
    out = ["One node, direct, fresh process per figure:", "", "| metric | floor | ours | ours/floor |", "|---|---|---|---|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def load_dir(d):
    runs = []
    for path in sorted(glob.glob(os.path.join(d, "*.txt"))):
        parsed = parse_name(os.path.basename(path)[:-4])
        if not parsed:
            continue
        with open(path, encoding="utf-8") as f:
            results, anomalies, ticks = s.parse_output(f.read())
        runs.append(Run(*parsed, results=results, anomalies=anomalies, cpu_ticks=ticks))
    return runs


def main(argv):
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        print(__doc__, file=sys.stderr)
        return 2
    machine = ""
    mpath = os.path.join(argv[1], "machine.txt")
    if os.path.exists(mpath):
        with open(mpath, encoding="utf-8") as f:
            machine = f.read()
    runs = load_dir(argv[1])
    if not runs:
        print(f"no floor.sh result files in {argv[1]}", file=sys.stderr)
        return 1
    sys.stdout.write(render(runs, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

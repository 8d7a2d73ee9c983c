#!/usr/bin/env python3
"""Summarize a `make bench` results folder (bench/run.sh) into markdown: ratios ours/reference with
the absolute figures of both, the issue 7 targets as met / not met, and the per-process CPU that
shows which process limits the throughput.

    summarize.py RESULTS_DIR

The folder holds one rtbench output per run, named r<round>-<ref|ours>-<sweep|over|dm|conns>.txt,
each with `RESULT {json}` lines (rtbench --json), plus machine.txt. Everything below `load_dir` is
pure: it works on the parsed runs only.
"""
import glob
import json
import os
import re
import sys
from dataclasses import dataclass, field

SYSTEMS = ("ref", "ours")
FIXED_RATE = 50.0  # broadcasts/s: the latency point, a rate the reference sustains (issue 7)
NAME_RE = re.compile(r"^r(\d+)-(ref|ours)-(sweep|over|dm|conns)$")
ANOMALY_RE = re.compile(r"^(anomalies:|early connection ends|connections that ended|WARNING|.*failed x\d)")


@dataclass
class Run:
    """One rtbench invocation: its RESULT records and the lines that report something abnormal."""
    round: int
    system: str
    kind: str
    results: list = field(default_factory=list)
    anomalies: list = field(default_factory=list)
    cpu_ticks: list = field(default_factory=list)  # CPUTICKS records written before and after the run


# ------------------------------------------------------------------ parsing (pure)

def parse_output(text):
    """RESULT records, anomaly lines and CPUTICKS records of one rtbench output."""
    results, anomalies, ticks = [], [], []
    for line in text.splitlines():
        if line.startswith("RESULT "):
            results.append(json.loads(line[len("RESULT "):]))
        elif line.startswith("CPUTICKS "):
            ticks.append(json.loads(line[len("CPUTICKS "):]))
        elif ANOMALY_RE.match(line.strip()):
            anomalies.append(line.strip())
    return results, anomalies, ticks


def parse_name(name):
    """(round, system, kind) of a result file name without extension, or None."""
    m = NAME_RE.match(name)
    return (int(m.group(1)), m.group(2), m.group(3)) if m else None


# ------------------------------------------------------------------ per-run figures (pure)

def is_node(name):
    return re.fullmatch(r"n\d+", name) is not None


def node_cpu_pct(r):
    """CPU of the server nodes together during the send window, % of one core."""
    return sum(v for k, v in r["cpu_pct_send"].items() if is_node(k))


def send_secs(r):
    return r["messages"] / r["achieved_send_rate"] if r["achieved_send_rate"] else None


def cpu_us_per_delivered(r):
    """Server-node CPU time per delivered message, in µs. CPU is sampled over the send window
    only, so this is meaningful where the deliveries happen during it (a sustained rate)."""
    secs = send_secs(r)
    if not secs or not r["received"]:
        return None
    return node_cpu_pct(r) / 100.0 * secs * 1e6 / r["received"]


def is_sustained(r):
    """Zero loss, drained, the asked rate achieved and no latency growth over the phase."""
    qf, ql = r["mean_ms_first_quarter"], r["mean_ms_last_quarter"]
    flat = qf is not None and ql is not None and ql <= max(2 * qf, qf + 10)
    return r["loss"] == 0 and r["drained"] and r["achieved_send_rate"] >= 0.9 * r["rate"] and flat


def fanout_phases(run, skip_warmup):
    phases = [r for r in run.results if r["mode"] == "fanout"]
    return phases[1:] if skip_warmup else phases


def run_node_cpu_us_per_delivered(run):
    """Server-node CPU over the whole rtbench run (connect, send, drain) per delivered message,
    in µs: the cost under overload, where most deliveries happen after the send window."""
    if len(run.cpu_ticks) < 2:
        return None
    before, after = run.cpu_ticks[0], run.cpu_ticks[-1]
    ticks = sum(after["ticks"][k] - before["ticks"].get(k, 0) for k in after["ticks"] if is_node(k))
    received = sum(r["received"] for r in fanout_phases(run, False))
    return ticks / after["hz"] * 1e6 / received if received else None


def balance(by_node):
    """min/max of the clients per node (1 = even), None without `hello`s or with a single node."""
    counts = list((by_node or {}).values())
    if len(counts) < 2 or max(counts) == 0:
        return None
    return min(counts) / max(counts)


# ------------------------------------------------------------------ metrics (pure)

def m_saturation(runs):
    over = runs.get("over")
    return max((r["delivered_per_s"] for r in fanout_phases(over, False)), default=None) if over else None


LIMIT_MIN_SEND_SECS = 3.0


def saturation_phase(runs):
    """The overload phase that shows what limits the throughput: the best delivered rate among the
    phases with a send window of at least LIMIT_MIN_SEND_SECS (CPU is sampled while sending, and a
    1 s burst mostly measures the publisher's node), or among all phases if none is that long."""
    over = runs.get("over")
    if not over:
        return None
    phases = fanout_phases(over, False)
    steady = [r for r in phases if (send_secs(r) or 0) >= LIMIT_MIN_SEND_SECS] or phases
    return max(steady, key=lambda r: r["delivered_per_s"], default=None)


def fixed_phase(runs, rate=FIXED_RATE):
    sweep = runs.get("sweep")
    if not sweep:
        return None
    return next((r for r in fanout_phases(sweep, True) if r["rate"] == rate), None)


def m_sustained(runs):
    rates = [r["rate"] for k in ("sweep", "over") if k in runs
             for r in fanout_phases(runs[k], k == "sweep") if is_sustained(r)]
    return max(rates, default=None)


def m_latency(runs, q):
    r = fixed_phase(runs)
    return r["latency"][q] if r and r["latency"] else None


def m_loss_below(runs, rate=FIXED_RATE):
    """Messages lost in the sweep phases at or below `rate` (warm-up included)."""
    sweep = runs.get("sweep")
    if not sweep:
        return None
    return sum(r["loss"] for r in fanout_phases(sweep, False) if r["rate"] <= rate)


def m_loss_above(runs, rate=FIXED_RATE):
    """Fraction of the deliveries lost in the phases above `rate` (sweep and overload)."""
    phases = [r for k in ("sweep", "over") if k in runs for r in fanout_phases(runs[k], False) if r["rate"] > rate]
    expected = sum(r["expected"] for r in phases)
    return 100.0 * sum(r["loss"] for r in phases) / expected if expected else None


def m_cpu_per_msg(runs):
    r = fixed_phase(runs)
    return cpu_us_per_delivered(r) if r else None


def m_cpu_per_msg_over(runs):
    over = runs.get("over")
    return run_node_cpu_us_per_delivered(over) if over else None


def m_mem_node(runs):
    """RSS growth per idle connection of the server nodes: their delta over their connections."""
    c = runs.get("conns")
    rec = next((r for r in c.results if r["mode"] == "conns"), None) if c else None
    if not rec:
        return None
    nodes = [v for k, v in rec["procs"].items() if is_node(k)]
    conns = sum(v["conns"] for v in nodes)
    return sum(v["delta_kb"] for v in nodes) / conns if conns else None


def m_mem_nginx(runs):
    c = runs.get("conns")
    rec = next((r for r in c.results if r["mode"] == "conns"), None) if c else None
    if not rec or "nginx" not in rec["procs"] or not rec["connected"]:
        return None
    return rec["procs"]["nginx"]["delta_kb"] / rec["connected"]


def dm_record(runs):
    d = runs.get("dm")
    return next((r for r in d.results if r["mode"] == "dm"), None) if d else None


def m_dm_latency(runs, pair, q):
    rec = dm_record(runs)
    lat = rec["results"][pair]["latency"] if rec else None
    return lat[q] if lat else None


def m_dm_loss(runs, pair):
    rec = dm_record(runs)
    if not rec:
        return None
    p = rec["results"][pair]
    return p["sent"] - p["received"]


# ------------------------------------------------------------------ targets (pure)

def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def limit_verdict(phase):
    """Which tier limits the saturated fan-out, from the per-process CPU during sending. All
    processes share the machine's cores, so the limit is the machine; our nodes are not what
    limits it when the machine is busy and both nodes together use less CPU than nginx alone
    (the tier in front of them), with rtbench's share shown next to it."""
    if not phase:
        return None, "no overload phase"
    c = phase["cpu_pct_send"]
    nodes, nginx, rtb, busy = node_cpu_pct(phase), c.get("nginx", 0), c.get("rtbench", 0), c.get("machine_busy", 0)
    top = max(((k, v) for k, v in c.items() if k != "machine_busy"), key=lambda kv: kv[1])
    detail = (f"at {phase['rate']:g}/s: nodes {nodes:.0f}% ({' + '.join(f'{k} {v:.0f}' for k, v in c.items() if is_node(k))}), "
              f"nginx {nginx:.0f}%, rtbench {rtb:.0f}%, redis {c.get('redis', 0):.0f}%, machine busy {busy:.0f}%; "
              f"busiest: {top[0]}")
    return (busy >= 90 and nodes < nginx), detail


# ------------------------------------------------------------------ rendering (pure)

def fmt(x, digits=1):
    if x is None:
        return "-"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def cell(values, digits):
    """Mean over rounds, with the single values when there are several."""
    vs = [v for v in values if v is not None]
    if not vs:
        return "-"
    m = mean(vs)
    if len(vs) == 1:
        return fmt(m, digits)
    return f"{fmt(m, digits)} ({', '.join(fmt(v, digits) for v in vs)})"


def ratio(ours, ref):
    o, r = mean(ours), mean(ref)
    if o is None or r is None or r == 0:
        return None
    return o / r


# (label, function of one round's runs, digits, target text, verdict from (ours values, ref values, ratio))
METRICS = [
    ("fan-out: delivered msg/s at saturation (overload phases, best)", m_saturation, 0, "", None),
    ("fan-out: highest sustained rate, broadcasts/s (no loss, flat latency)", m_sustained, 0, "", None),
    (f"fan-out: p50 latency at {FIXED_RATE:g}/s, ms", lambda r: m_latency(r, "p50_ms"), 1, "", None),
    (f"fan-out: p99 latency at {FIXED_RATE:g}/s, ms", lambda r: m_latency(r, "p99_ms"), 1, "ours <= 10 ms",
     lambda o, ref, q: all(v is not None and v <= 10 for v in o) if o else None),
    (f"fan-out: messages lost at <= {FIXED_RATE:g}/s", m_loss_below, 0, "ours 0 (below saturation)",
     lambda o, ref, q: all(v == 0 for v in o) if o else None),
    (f"fan-out: % lost above {FIXED_RATE:g}/s (incl. overload)", m_loss_above, 2, "", None),
    (f"CPU per delivered message (server nodes, at {FIXED_RATE:g}/s), µs", m_cpu_per_msg, 2, "ratio <= 0.20",
     lambda o, ref, q: q <= 0.20 if q is not None else None),
    ("CPU per delivered message (server nodes, whole overload run incl. drain), µs", m_cpu_per_msg_over, 2,
     "ratio <= 0.20", lambda o, ref, q: q <= 0.20 if q is not None else None),
    ("memory per idle connection, per node, KB", m_mem_node, 1, "ratio <= 0.25",
     lambda o, ref, q: q <= 0.25 if q is not None else None),
    ("memory per idle connection, nginx, KB (same nginx for both)", m_mem_nginx, 1, "", None),
    ("dm cross-node: p50 latency, ms", lambda r: m_dm_latency(r, "cross-node", "p50_ms"), 2, "", None),
    ("dm cross-node: p99 latency, ms", lambda r: m_dm_latency(r, "cross-node", "p99_ms"), 2, "ratio <= 1",
     lambda o, ref, q: q <= 1.0 if q is not None else None),
    ("dm cross-node: messages lost", lambda r: m_dm_loss(r, "cross-node"), 0, "", None),
    ("dm same-node: p50 latency, ms", lambda r: m_dm_latency(r, "same-node", "p50_ms"), 2, "", None),
    ("dm same-node: p99 latency, ms", lambda r: m_dm_latency(r, "same-node", "p99_ms"), 2, "", None),
    ("dm same-node: messages lost", lambda r: m_dm_loss(r, "same-node"), 0, "", None),
]


def by_system_round(runs):
    """{system: {round: {kind: Run}}}. Runs done once (conns) count for every round."""
    out = {s: {} for s in SYSTEMS}
    for run in runs:
        out[run.system].setdefault(run.round, {})[run.kind] = run
    rounds = sorted({r for s in out.values() for r in s})
    return out, rounds


def values(grouped, system, rounds, fn):
    """The metric for every round that has the runs it needs (conns runs in round 1 only)."""
    vals = (fn(grouped[system][rd]) for rd in rounds if rd in grouped[system])
    return [v for v in vals if v is not None]


def render(runs, machine=""):
    grouped, rounds = by_system_round(runs)
    out = []
    out.append("## realtime-server vs Node.js socket.io 4 + @socket.io/redis-adapter (2 nodes each, same Redis and nginx ip_hash)\n")
    if machine:
        out += [f"- {line}" for line in machine.strip().splitlines()]
        out.append("")
    n = len(rounds)
    out.append(f"Means over {n} round(s), single rounds in parentheses (reference and ours interleaved); "
               "the ratio is ours/reference of the means.\n")
    out.append("| metric | reference | ours | ours/ref | issue 7 target | met? |")
    out.append("|---|---|---|---|---|---|")
    for label, fn, digits, target, verdict in METRICS:
        ref, ours = values(grouped, "ref", rounds, fn), values(grouped, "ours", rounds, fn)
        q = ratio(ours, ref)
        met = verdict(ours, ref, q) if verdict else None
        out.append(f"| {label} | {cell(ref, digits)} | {cell(ours, digits)} | {fmt(q, 2)} | {target} | "
                   f"{'' if verdict is None else ('met' if met else ('not met' if met is False else 'n/a'))} |")
    # the "limited by nginx and the load generator" target, from per-process CPU at saturation
    verdicts = []
    for rd in rounds:
        kinds = grouped["ours"].get(rd, {})
        if "over" in kinds:
            verdicts.append(limit_verdict(saturation_phase(kinds)))
    if verdicts:
        met = all(v[0] for v in verdicts)
        out.append(f"| through nginx, saturation limited by nginx / rtbench, not our nodes | | "
                   f"{'<br>'.join(v[1] for v in verdicts)} | | machine busy, nodes together use less CPU than nginx | "
                   f"{'met' if met else 'not met'} |")
    out.append("")
    out.append("### Where the CPU goes (% of one core during sending; nodes = sum of the server processes)\n")
    out.append("| system | round | phase | delivered msg/s | nodes | redis | nginx | rtbench | machine busy % |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for s in SYSTEMS:
        for rd in rounds:
            kinds = grouped[s].get(rd, {})
            for what, ph in ((f"{FIXED_RATE:g}/s", fixed_phase(kinds)), ("limit", saturation_phase(kinds))):
                if ph:
                    c = ph["cpu_pct_send"]
                    out.append(f"| {s} | {rd} | {what} ({ph['rate']:g}/s asked, {ph['achieved_send_rate']:.0f}/s sent) | "
                               f"{ph['delivered_per_s']:.0f} | {node_cpu_pct(ph):.0f} | {c.get('redis', 0):.0f} | "
                               f"{c.get('nginx', 0):.0f} | {c.get('rtbench', 0):.0f} | {c.get('machine_busy', 0):.0f} |")
    out.append("")
    out.append("### Fan-out phases (the first sweep phase is the warm-up)\n")
    out.append("| run | rate/s | sent/s | recv/expected | loss | drained | delivered msg/s | p50 ms | p99 ms | mean 1st/last quarter ms | CPU % per process |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in sorted(runs, key=lambda r: (r.round, r.kind, SYSTEMS.index(r.system))):
        for ph in fanout_phases(run, False):
            L = ph["latency"] or {}
            cpu = " / ".join(f"{k} {v:.0f}" for k, v in ph["cpu_pct_send"].items())
            out.append(f"| r{run.round}-{run.system}-{run.kind} | {ph['rate']:g} | {ph['achieved_send_rate']:.0f} | "
                       f"{ph['received']}/{ph['expected']} | {ph['loss']} | {'yes' if ph['drained'] else 'NO'} | "
                       f"{ph['delivered_per_s']:.0f} | {fmt(L.get('p50_ms'))} | {fmt(L.get('p99_ms'))} | "
                       f"{fmt(ph['mean_ms_first_quarter'])} / {fmt(ph['mean_ms_last_quarter'])} | {cpu} |")
    out.append("")
    out += checks(runs)
    return "\n".join(out) + "\n"


def checks(runs):
    """Sanity of the runs themselves: client balance over the nodes, connections, anomalies."""
    lines = []
    for run in sorted(runs, key=lambda r: (r.round, r.kind, SYSTEMS.index(r.system))):
        name = f"r{run.round}-{run.system}-{run.kind}"
        if not run.results:
            lines.append(f"- {name}: no RESULT line (rtbench failed? see {name}.txt)")
            continue
        first = run.results[0]
        b = balance(first.get("by_node"))
        if b is None or b < 0.8:
            lines.append(f"- {name}: clients by node {first.get('by_node')} (unbalanced or no hello)")
        if run.kind == "conns" and first["connected"] < first["wanted"]:
            lines.append(f"- {name}: connected {first['connected']}/{first['wanted']}, failures {first['failures']}")
        lines += [f"- {name}: {a}" for a in run.anomalies]
    return ["### Checks\n"] + (lines or ["- clients balanced over the nodes in every run; no anomalies reported"])


# ------------------------------------------------------------------ I/O

def load_dir(d):
    runs = []
    for path in sorted(glob.glob(os.path.join(d, "*.txt"))):
        parsed = parse_name(os.path.basename(path)[:-4])
        if not parsed:
            continue
        with open(path, encoding="utf-8") as f:
            results, anomalies, ticks = parse_output(f.read())
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
        print(f"no r<N>-<ref|ours>-<kind>.txt files in {argv[1]}", file=sys.stderr)
        return 1
    sys.stdout.write(render(runs, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

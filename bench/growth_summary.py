#!/usr/bin/env python3
"""Tables of `bench/growth.sh`: per node count, node CPU, Redis CPU and Redis deliveries per
message, PRIVATE_ROUTING=broadcast against PRIVATE_ROUTING=node.

Usage: python3 bench/growth_summary.py RESULTS_DIR

Reads every `MEASURE {json}` line (written by growth.sh after each rtbench run) and the rtbench
`RESULT {json}` line of the same file (loss). A MEASURE line carries four snapshots, each
"t node_cpu_ns redis_cpu_us redis_cmds redis_publish node_redis_msgs": idle0/idle1 around an
idle window just before the run, s0 once rtbench had connected, s1 after it exited. The cost of
a run is (s1 - s0) minus the idle rate times (s1.t - s0.t), divided by the messages sent.
"""

import json
import os
import sys
from collections import defaultdict
from statistics import mean

FIELDS = ("t", "node_ns", "redis_us", "cmds", "publish", "deliveries")


def parse_snapshot(s):
    parts = s.split()
    if len(parts) != len(FIELDS):
        raise ValueError(f"snapshot needs {len(FIELDS)} fields: {s!r}")
    return dict(zip(FIELDS, (float(p) for p in parts)))


def cost(m):
    """Per-message figures of one MEASURE record (idle-corrected)."""
    i0, i1 = parse_snapshot(m["idle0"]), parse_snapshot(m["idle1"])
    s0, s1 = parse_snapshot(m["s0"]), parse_snapshot(m["s1"])
    idle_dt = i1["t"] - i0["t"]
    dt = s1["t"] - s0["t"]
    if idle_dt <= 0 or dt <= 0:
        raise ValueError("snapshots out of order")
    msgs = m["messages"]
    if msgs <= 0:
        raise ValueError("no messages")

    def per_msg(field):
        busy = s1[field] - s0[field]
        idle = (i1[field] - i0[field]) / idle_dt * dt
        return (busy - idle) / msgs

    return {
        "node_us": per_msg("node_ns") / 1000.0,
        "redis_us": per_msg("redis_us"),
        "deliveries": per_msg("deliveries"),
        "publish": per_msg("publish"),
        "cmds": per_msg("cmds"),
        "window_s": dt,
    }


def loss_of(result):
    if result is None:
        return None
    if result.get("mode") == "dm":
        return sum(
            max(0, r["sent"] - r["received"]) for r in result.get("results", {}).values()
        )
    return result.get("loss")


def read_dir(path):
    """Every measurement: (MEASURE record, costs, loss) from the *.txt files under path."""
    out = []
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            if not f.endswith(".txt"):
                continue
            measure, result = None, None
            with open(os.path.join(root, f), encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    if line.startswith("MEASURE "):
                        measure = json.loads(line[len("MEASURE "):])
                    elif line.startswith("RESULT "):
                        result = json.loads(line[len("RESULT "):])
            if measure is not None:
                out.append((measure, cost(measure), loss_of(result)))
    return out


def fmt(values, digits):
    if not values:
        return "-"
    s = f"{mean(values):.{digits}f}"
    if len(values) > 1:
        s += " (" + ", ".join(f"{v:.{digits}f}" for v in values) + ")"
    return s


def ratio(a, b):
    if not a or not b or mean(b) == 0:
        return "-"
    return f"{mean(a) / mean(b):.2f}"


def tables(measures):
    # (kind, nodes, mode) -> list of costs, losses
    data = defaultdict(list)
    losses = defaultdict(list)
    loads = [m["load1"] for m, _, _ in measures]
    for m, c, loss in measures:
        key = (m["kind"], m["nodes"], m["mode"])
        data[key].append(c)
        losses[key].append(loss)
    lines = []
    titles = {
        "dm": "Private messages (rtbench dm), per message sent",
        "fanout": "Broadcasts (rtbench fanout), per broadcast",
    }
    for kind in ("dm", "fanout"):
        ns = sorted({n for k, n, _ in data if k == kind})
        if not ns:
            continue
        lines.append(f"### {titles[kind]}")
        lines.append("")
        lines.append(
            "| nodes | node CPU µs/msg: broadcast | node | node/broadcast "
            "| Redis CPU µs/msg: broadcast | node | node/broadcast "
            "| Redis deliveries/msg: broadcast | node "
            "| PUBLISH/msg: broadcast | node | lost: broadcast | node |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in ns:
            b = data.get((kind, n, "broadcast"), [])
            r = data.get((kind, n, "node"), [])

            def col(rows, f, d):
                return fmt([c[f] for c in rows], d)

            def rat(f):
                return ratio([c[f] for c in r], [c[f] for c in b])

            def lost(mode):
                ls = [x for x in losses.get((kind, n, mode), []) if x is not None]
                return str(sum(ls)) if ls else "-"

            lines.append(
                f"| {n} | {col(b, 'node_us', 1)} | {col(r, 'node_us', 1)} | {rat('node_us')} "
                f"| {col(b, 'redis_us', 2)} | {col(r, 'redis_us', 2)} | {rat('redis_us')} "
                f"| {col(b, 'deliveries', 2)} | {col(r, 'deliveries', 2)} "
                f"| {col(b, 'publish', 2)} | {col(r, 'publish', 2)} "
                f"| {lost('broadcast')} | {lost('node')} |"
            )
        lines.append("")
    if loads:
        lines.append(
            f"1-minute load average at the end of each measurement: {min(loads):.2f} - {max(loads):.2f}"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    measures = read_dir(argv[1])
    if not measures:
        print(f"no MEASURE lines under {argv[1]}", file=sys.stderr)
        return 1
    machine = os.path.join(argv[1], "machine.txt")
    if os.path.exists(machine):
        with open(machine, encoding="utf-8") as fh:
            for line in fh:
                print(f"- {line.strip()}")
        print()
    print(tables(measures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Tables of `bench/growth.sh`: per node count, node CPU, Redis CPU and Redis deliveries per
message, PRIVATE_ROUTING=broadcast against PRIVATE_ROUTING=node.

Usage: python3 bench/growth_summary.py RESULTS_DIR

Reads every `MEASURE {json}` line (written by growth.sh after each measurement) and the last
rtbench `RESULT {json}` line of the same file (the full run: loss). A MEASURE line carries six
snapshots, each "t node_cpu_ns redis_cpu_us redis_cmds redis_publish node_redis_msgs": idle0 and
idle1 around an idle window, b0 and b1 around the baseline rtbench run (`base_messages`
messages, the same clients), s0 and s1 around the full run (`messages`). Each run's cost is its
growth minus the idle rate times its duration; the figures are (full - baseline) /
(messages - base_messages), so connecting, `hello`, the drain wait and disconnecting cancel out.
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
    """Per-message figures of one MEASURE record (idle-corrected, baseline subtracted)."""
    i0, i1 = parse_snapshot(m["idle0"]), parse_snapshot(m["idle1"])
    b0, b1 = parse_snapshot(m["b0"]), parse_snapshot(m["b1"])
    s0, s1 = parse_snapshot(m["s0"]), parse_snapshot(m["s1"])
    idle_dt = i1["t"] - i0["t"]
    dt, bdt = s1["t"] - s0["t"], b1["t"] - b0["t"]
    if idle_dt <= 0 or dt <= 0 or bdt <= 0:
        raise ValueError("snapshots out of order")
    msgs = m["messages"] - m.get("base_messages", 0)
    if msgs <= 0:
        raise ValueError("no messages beyond the baseline")

    def per_msg(field):
        rate = (i1[field] - i0[field]) / idle_dt
        full = s1[field] - s0[field] - rate * dt
        base = b1[field] - b0[field] - rate * bdt
        return (full - base) / msgs

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


def cross_share(result):
    """Share of a dm run's messages whose sender and receiver were on different nodes."""
    if not result or result.get("mode") != "dm":
        return None
    r = result.get("results", {})
    cross = r.get("cross-node", {}).get("sent", 0)
    total = cross + r.get("same-node", {}).get("sent", 0)
    return cross / total if total else None


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
                c = cost(measure)
                c["cross"] = cross_share(result)
                out.append((measure, c, loss_of(result)))
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
        if kind == "dm":
            lines.extend(per_cross_node(data, ns))
    if loads:
        lines.append(
            f"1-minute load average at the end of each measurement: {min(loads):.2f} - {max(loads):.2f}"
        )
    return "\n".join(lines)


def per_cross_node(data, ns):
    """The dm figures per cross-node message. A same-node message never touches Redis (no
    PUBLISH), so Redis CPU and deliveries are divided by the cross-node share. Node CPU: the
    1-node runs (every message same-node) give the cost of a same-node message, c1; then
    (node CPU per message - (1 - share) * c1) / share."""
    local = [c["node_us"] for mode in ("broadcast", "node") for c in data.get(("dm", 1, mode), [])]
    c1 = mean(local) if local else None
    lines = [
        "Per cross-node private message (same-node messages: "
        + (f"{c1:.1f} µs of node CPU each, from the 1-node runs" if c1 is not None else "no 1-node run")
        + ")",
        "",
        "| nodes | cross-node share | node CPU µs (est.): broadcast | node | node/broadcast "
        "| Redis CPU µs: broadcast | node | node/broadcast | Redis deliveries: broadcast | node |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in ns:
        if n == 1:
            continue
        row = {}
        shares = []
        for mode in ("broadcast", "node"):
            rows = [c for c in data.get(("dm", n, mode), []) if c.get("cross")]
            shares += [c["cross"] for c in rows]
            row[mode] = {
                "node": [(c["node_us"] - (1 - c["cross"]) * c1) / c["cross"] for c in rows]
                if c1 is not None
                else [],
                "redis": [c["redis_us"] / c["cross"] for c in rows],
                "del": [c["deliveries"] / c["cross"] for c in rows],
            }
        b, r = row["broadcast"], row["node"]
        lines.append(
            f"| {n} | {(f'{mean(shares):.2f}' if shares else '-')} | {fmt(b['node'], 1)} | {fmt(r['node'], 1)} | {ratio(r['node'], b['node'])} "
            f"| {fmt(b['redis'], 2)} | {fmt(r['redis'], 2)} | {ratio(r['redis'], b['redis'])} "
            f"| {fmt(b['del'], 2)} | {fmt(r['del'], 2)} |"
        )
    lines.append("")
    return lines


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

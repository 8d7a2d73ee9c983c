#!/usr/bin/env python3
"""Unit tests of bench/summarize_floor.py on synthetic rtbench RESULT lines:
python3 -m unittest discover -s bench -p 'test_*.py'"""
import json
import unittest

import summarize as s
import summarize_floor as f


def phase(rate, received, cpu, secs=10.0, delivered=None, loss=0, receivers=1000, p50=2.0):
    return {
        "mode": "fanout", "rate": rate, "messages": int(rate * secs), "achieved_send_rate": rate,
        "receivers": receivers, "expected": received + loss, "received": received, "loss": loss, "drained": True,
        "delivered_per_s": delivered if delivered is not None else received / secs,
        "latency": {"p50_ms": p50, "p99_ms": 9.0, "max_ms": 20.0}, "mean_ms_first_quarter": 5.0,
        "mean_ms_last_quarter": 5.0, "cpu_pct_send": cpu, "by_node": {"n1": 500, "n2": 500},
    }


def run(name, *records, ticks=None):
    rnd, system, kind = f.parse_name(name)
    return f.Run(rnd, system, kind, results=list(records), cpu_ticks=ticks or [])


def ticks(n1, n2, hz=100):
    return {"hz": hz, "t": 0, "ticks": {"n1": n1, "n2": n2, "nginx": 999}}


class Test(unittest.TestCase):
    def test_names(self):
        self.assertEqual(f.parse_name("r2-floor-nginx-rate50"), (2, "floor", "nginx-rate50"))
        self.assertEqual(f.parse_name("ours-conns20k"), (0, "ours", "conns20k"))
        self.assertIsNone(f.parse_name("r1-ref-nginx-rate50"))
        self.assertIsNone(f.parse_name("summary"))

    def test_cpu_per_delivery_and_ratio(self):
        # 50/s x 10 s to 1000 receivers = 500k deliveries; nodes 30% + 20% of a core for 10 s = 5 s
        # -> 10 µs each; the warm-up phase (first) is ignored
        ours = run("r1-ours-nginx-rate50", phase(20, 1, {"n1": 99.0}),
                   phase(50, 500_000, {"n1": 30.0, "n2": 20.0, "redis": 10.0}))
        floor = run("r1-floor-nginx-rate50", phase(20, 1, {"n1": 99.0}),
                    phase(50, 500_000, {"n1": 20.0, "n2": 20.0, "redis": 10.0}))
        self.assertAlmostEqual(f.cpu50(ours), 10.0)
        self.assertAlmostEqual(f.cpu50(floor), 8.0)
        self.assertAlmostEqual(f.cpu50_with_redis(ours), 12.0)
        out = f.render([ours, floor])
        row = next(l for l in out.splitlines() if "server nodes, µs" in l and "50/s" in l)
        self.assertIn("| 1.25 | <= 1.3 | met |", row)

    def test_saturation_and_whole_run_cpu(self):
        over = run("r1-ours-direct-over", phase(400, 2_000_000, {"n1": 90.0}, secs=5, delivered=300_000),
                   phase(2000, 2_000_000, {"n1": 95.0}, secs=1, delivered=450_000),
                   ticks=[ticks(100, 100), ticks(300, 300)])
        self.assertEqual(f.saturation(over), 450_000)
        # 400 ticks at 100 Hz = 4 s over 4M deliveries = 1 µs
        self.assertAlmostEqual(f.over_cpu(over), 1.0)
        fl = run("r1-floor-direct-over", phase(400, 2_000_000, {"n1": 90.0}, secs=5, delivered=600_000))
        out = f.render([over, fl])
        row = next(l for l in out.splitlines() if "saturation" in l)
        self.assertIn("| 0.75 | >= 0.8 | not met |", row)
        self.assertIn("| ours | direct | 1 | 400/s", out)

    def test_rounds_are_averaged(self):
        a = run("r1-ours-single-over", phase(400, 1, {"n1": 1.0}, delivered=100.0))
        b = run("r2-ours-single-over", phase(400, 1, {"n1": 1.0}, delivered=300.0))
        c = run("r1-floor-single-over", phase(400, 1, {"n1": 1.0}, delivered=100.0))
        out = f.render([b, a, c])
        row = next(l for l in out.splitlines() if "saturation" in l)
        self.assertIn("| 200 (100, 300) |", row)
        self.assertIn("| 2.00 |", row)
        self.assertNotIn("nodes + Redis", out)  # a single node has no Redis row

    def test_conns(self):
        def conns(n, delta):
            return {"mode": "conns", "connected": n, "procs": {"n1": {"delta_kb": delta, "conns": n}}}
        runs = [run("ours-conns1k", conns(1000, 4300)), run("floor-conns1k", conns(1000, 1000)),
                run("ours-conns20k", conns(19900, 19900 * 4)), run("floor-conns20k", conns(19900, 19900)),
                run("ours-fan20k", phase(1, 1, {"n1": 1.0}), phase(2, 398_000, {"n1": 50.0}, receivers=19899, p50=40.0)),
                run("floor-fan20k", phase(1, 1, {"n1": 1.0}), phase(2, 398_000, {"n1": 25.0}, receivers=19899, p50=20.0))]
        self.assertEqual(f.conns_mem(runs[0]), (4.3, 1000))
        out = f.render(runs)
        self.assertIn("| memory per idle connection, 1000 connections on the node, KB | 1.00 | 4.30 | 4.30 |", out)
        self.assertIn("| memory per idle connection, 19900 connections on the node, KB | 1.00 | 4.00 | 4.00 |", out)
        self.assertIn("| broadcast to 19899 receivers (+1 publisher), latency p50, ms | 20.0 | 40.0 | 2.00 |", out)
        # 25% / 50% of a core over 10 s for 398k deliveries
        self.assertIn("node CPU per delivery, µs | 6.28 | 12.56 | 2.00 |", out)

    def test_anomalies_listed(self):
        text = "RESULT " + json.dumps(phase(50, 10, {"n1": 1.0})) + "\nanomalies: early connection ends {}\n"
        results, anomalies, _ = s.parse_output(text)
        r = f.Run(1, "ours", "nginx-rate50", results=results, anomalies=anomalies)
        self.assertIn("Anomalies:", f.render([r]))


if __name__ == "__main__":
    unittest.main()

#!/usr/bin/env python3
"""Unit tests of bench/summarize.py on synthetic rtbench RESULT lines:
python3 -m unittest discover -s bench -p 'test_*.py'"""
import json
import unittest

import summarize as s


def phase(rate, received, expected, cpu, secs=10.0, loss=None, drained=True, qf=5.0, ql=5.0, p99=8.0, delivered=None):
    return {
        "mode": "fanout", "rate": rate, "messages": int(rate * secs), "achieved_send_rate": rate,
        "expected": expected, "received": received, "loss": expected - received if loss is None else loss,
        "drained": drained, "delivered_per_s": delivered if delivered is not None else received / secs,
        "latency": {"p50_ms": 2.0, "p99_ms": p99}, "mean_ms_first_quarter": qf, "mean_ms_last_quarter": ql,
        "cpu_pct_send": cpu, "by_node": {"n1": 500, "n2": 500},
    }


def out(*records, extra=""):
    return "\n".join(f"RESULT {json.dumps(r)}" for r in records) + "\n" + extra


CPU50 = {"n1": 10.0, "n2": 15.0, "redis": 1.0, "nginx": 20.0, "rtbench": 30.0, "machine_busy": 60.0}


class ParseTest(unittest.TestCase):
    def test_names(self):
        self.assertEqual(s.parse_name("r2-ours-sweep"), (2, "ours", "sweep"))
        self.assertIsNone(s.parse_name("summary"))
        self.assertIsNone(s.parse_name("r1-other-sweep"))

    def test_output_keeps_results_and_anomalies(self):
        text = out(phase(50, 100, 100, CPU50), extra="anomalies: early connection ends {}\nrate 50/s | ok\n")
        text += 'CPUTICKS {"hz": 100, "t": 1.0, "ticks": {"n1": 5}}\n'
        results, anomalies, ticks = s.parse_output(text)
        self.assertEqual(len(results), 1)
        self.assertEqual(anomalies, ["anomalies: early connection ends {}"])
        self.assertEqual(ticks, [{"hz": 100, "t": 1.0, "ticks": {"n1": 5}}])


class MetricTest(unittest.TestCase):
    def test_cpu_per_delivered_uses_nodes_only(self):
        # nodes 25% of a core for 10 s = 2.5 s of CPU over 500,000 deliveries = 5 µs each
        r = phase(50, 500_000, 500_000, CPU50)
        self.assertAlmostEqual(s.cpu_us_per_delivered(r), 5.0)

    def test_whole_run_cpu_counts_node_ticks_over_all_phases(self):
        ticks = [{"hz": 100, "t": 0, "ticks": {"n1": 100, "n2": 100, "nginx": 0}},
                 {"hz": 100, "t": 9, "ticks": {"n1": 250, "n2": 350, "nginx": 9999}}]
        run = s.Run(1, "ours", "over", results=[phase(150, 600_000, 600_000, CPU50), phase(400, 400_000, 400_000, CPU50)],
                    cpu_ticks=ticks)
        # 400 ticks = 4 s of CPU over 1,000,000 deliveries
        self.assertAlmostEqual(s.run_node_cpu_us_per_delivered(run), 4.0)
        self.assertIsNone(s.run_node_cpu_us_per_delivered(s.Run(1, "ours", "over", results=run.results)))

    def test_limit_phase_prefers_a_steady_send_window(self):
        steady = phase(400, 2_000_000, 2_000_000, CPU50, secs=5.0, delivered=400_000)
        burst = phase(2000, 2_000_000, 2_000_000, CPU50, secs=1.0, delivered=450_000)
        runs = {"over": s.Run(1, "ours", "over", results=[steady, burst])}
        self.assertIs(s.saturation_phase(runs), steady)

    def test_sustained_needs_no_loss_and_flat_latency(self):
        self.assertTrue(s.is_sustained(phase(50, 10, 10, CPU50)))
        self.assertFalse(s.is_sustained(phase(50, 9, 10, CPU50)))
        self.assertFalse(s.is_sustained(phase(50, 10, 10, CPU50, qf=5.0, ql=40.0)))
        self.assertFalse(s.is_sustained(phase(50, 10, 10, CPU50, drained=False)))

    def test_fixed_phase_skips_the_warmup(self):
        warm = phase(50, 1, 1, CPU50, p99=99.0)
        real = phase(50, 1, 1, CPU50, p99=7.0)
        runs = {"sweep": s.Run(1, "ours", "sweep", results=[warm, real])}
        self.assertEqual(s.m_latency(runs, "p99_ms"), 7.0)

    def test_loss_below_counts_warmup_and_low_rates_only(self):
        runs = {"sweep": s.Run(1, "ours", "sweep", results=[
            phase(20, 9, 10, CPU50), phase(50, 10, 10, CPU50), phase(100, 5, 10, CPU50)])}
        self.assertEqual(s.m_loss_below(runs), 1)
        self.assertAlmostEqual(s.m_loss_above(runs), 50.0)

    def test_memory_per_connection_over_node_connections(self):
        rec = {"mode": "conns", "connected": 1000, "procs": {
            "n1": {"delta_kb": 5000, "conns": 500}, "n2": {"delta_kb": 3000, "conns": 500},
            "nginx": {"delta_kb": 18000, "conns": 1000}}}
        runs = {"conns": s.Run(1, "ref", "conns", results=[rec])}
        self.assertAlmostEqual(s.m_mem_node(runs), 8.0)
        self.assertAlmostEqual(s.m_mem_nginx(runs), 18.0)

    def test_balance(self):
        self.assertEqual(s.balance({"n1": 500, "n2": 500}), 1.0)
        self.assertIsNone(s.balance({"n1": 1000}))
        self.assertIsNone(s.balance({}))

    def test_limit_verdict(self):
        limited_elsewhere = phase(500, 1, 1, {"n1": 20.0, "n2": 20.0, "nginx": 60.0, "rtbench": 80.0, "machine_busy": 99.0})
        self.assertTrue(s.limit_verdict(limited_elsewhere)[0])
        nodes_busiest = phase(500, 1, 1, {"n1": 30.0, "n2": 30.0, "nginx": 50.0, "rtbench": 80.0, "machine_busy": 99.0})
        self.assertFalse(s.limit_verdict(nodes_busiest)[0])
        idle_machine = phase(500, 1, 1, {"n1": 5.0, "n2": 5.0, "nginx": 20.0, "rtbench": 30.0, "machine_busy": 40.0})
        self.assertFalse(s.limit_verdict(idle_machine)[0])


class RenderTest(unittest.TestCase):
    def runs(self, ours_p99, ours_cpu):
        out = []
        for sysname, p99, cpu in (("ref", 150.0, CPU50), ("ours", ours_p99, ours_cpu)):
            sweep = [phase(20, 200, 200, cpu), phase(50, 500_000, 500_000, cpu, p99=p99)]
            over = [phase(500, 1, 1, {"n1": 10.0, "n2": 10.0, "nginx": 60.0, "rtbench": 90.0, "machine_busy": 99.0},
                          delivered=90_000 if sysname == "ref" else 120_000)]
            out += [s.Run(1, sysname, "sweep", results=sweep), s.Run(1, sysname, "over", results=over)]
        return out

    def row(self, text, label):
        return next(line for line in text.splitlines() if line.startswith(f"| {label}"))

    def test_ratios_and_targets(self):
        cheap = {k: v / 10 if s.is_node(k) else v for k, v in CPU50.items()}
        text = s.render(self.runs(ours_p99=6.0, ours_cpu=cheap))
        self.assertIn("| 1.33 |", self.row(text, "fan-out: delivered msg/s at saturation"))
        self.assertTrue(self.row(text, "fan-out: p99 latency at 50/s").endswith("| met |"))
        self.assertTrue(self.row(text, "CPU per delivered message").endswith("| met |"))
        self.assertIn("| 0.10 |", self.row(text, "CPU per delivered message"))

    def test_targets_not_met(self):
        text = s.render(self.runs(ours_p99=25.0, ours_cpu=CPU50))
        self.assertTrue(self.row(text, "fan-out: p99 latency at 50/s").endswith("| not met |"))
        self.assertTrue(self.row(text, "CPU per delivered message").endswith("| not met |"))


if __name__ == "__main__":
    unittest.main()

"""Tests of growth_summary.py: `python3 -m unittest discover -s bench -p 'test_*.py'`."""

import json
import os
import tempfile
import unittest

import growth_summary as g


def snap(t, ns, us, cmds, pub, msgs):
    return f"{t} {ns} {us} {cmds} {pub} {msgs}"


def record(kind="dm", nodes=2, mode="node", messages=1001, busy_ns=5_000_000_000):
    # idle: 1 s, 10 ms of node CPU, 100 µs of Redis, 10 commands, 0 publishes, 1 delivery
    # baseline: 2 s (idle share 20 ms, 200 µs, 20, 0, 2) plus 300 ms, 50 µs, 5 commands,
    #   1 publish, 3 deliveries of its own (one message, connections)
    # full run: 10 s (idle share 100 ms, 1000 µs, 100, 0, 10) plus the baseline's own work
    #   plus 1000 messages: busy_ns, 4000 µs, 2000 commands, 1000 publishes, 3000 deliveries
    return {
        "label": "x",
        "nodes": nodes,
        "mode": mode,
        "kind": kind,
        "messages": messages,
        "base_messages": 1,
        "load1": 0.5,
        "idle0": snap(100.0, 0, 0, 0, 0, 0),
        "idle1": snap(101.0, 10_000_000, 100, 10, 0, 1),
        "b0": snap(102.0, 20_000_000, 200, 20, 0, 2),
        "b1": snap(104.0, 20_000_000 + 20_000_000 + 300_000_000, 200 + 200 + 50, 20 + 20 + 5, 1, 2 + 2 + 3),
        "s0": snap(105.0, 0, 0, 0, 0, 0),
        "s1": snap(115.0, 100_000_000 + 300_000_000 + busy_ns, 1000 + 50 + 4000, 100 + 5 + 2000, 1 + 1000, 10 + 3 + 3000),
    }


class CostTest(unittest.TestCase):
    def test_idle_share_and_baseline_are_subtracted_and_divided_by_messages(self):
        c = g.cost(record())
        self.assertAlmostEqual(c["node_us"], 5000.0)  # 5 s / 1000 msgs
        self.assertAlmostEqual(c["redis_us"], 4.0)
        self.assertAlmostEqual(c["deliveries"], 3.0)
        self.assertAlmostEqual(c["publish"], 1.0)
        self.assertAlmostEqual(c["cmds"], 2.0)
        self.assertAlmostEqual(c["window_s"], 10.0)

    def test_bad_snapshots_are_refused(self):
        r = record()
        r["s1"] = "1 2 3"
        with self.assertRaises(ValueError):
            g.cost(r)
        r = record()
        r["idle1"] = r["idle0"]
        with self.assertRaises(ValueError):
            g.cost(r)
        with self.assertRaises(ValueError):
            g.cost(record(messages=1))

    def test_loss_of_dm_and_fanout(self):
        dm = {"mode": "dm", "results": {"same-node": {"sent": 10, "received": 10},
                                        "cross-node": {"sent": 20, "received": 17}}}
        self.assertEqual(g.loss_of(dm), 3)
        self.assertEqual(g.loss_of({"mode": "fanout", "loss": 5}), 5)
        self.assertIsNone(g.loss_of(None))


class TableTest(unittest.TestCase):
    def test_tables_compare_modes_per_node_count(self):
        with tempfile.TemporaryDirectory() as d:
            for i, (mode, busy) in enumerate([("broadcast", 8_000_000_000), ("node", 2_000_000_000)]):
                sub = os.path.join(d, f"r1-n4-{mode}")
                os.makedirs(sub)
                with open(os.path.join(sub, "dm.txt"), "w") as fh:
                    fh.write("### header\n")
                    fh.write("RESULT " + json.dumps({"mode": "dm", "results": {
                        "same-node": {"sent": 1, "received": 1}}}) + "\n")
                    fh.write("MEASURE " + json.dumps(record(nodes=4, mode=mode, busy_ns=busy)) + "\n")
            ms = g.read_dir(d)
            self.assertEqual(len(ms), 2)
            out = g.tables(ms)
        # the per-message table, then the per-cross-node one
        row = [line for line in out.splitlines() if line.startswith("| 4 |")]
        self.assertEqual(len(row), 2)
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        self.assertEqual(cells[1], "8000.0")
        self.assertEqual(cells[2], "2000.0")
        self.assertEqual(cells[3], "0.25")
        self.assertEqual(cells[-2:], ["0", "0"])
        self.assertIn("Private messages", out)
        self.assertNotIn("Broadcasts", out)

    def test_per_cross_node_figures_use_the_one_node_cost_for_same_node_messages(self):
        def c(node_us, redis_us, deliveries, cross):
            return {"node_us": node_us, "redis_us": redis_us, "deliveries": deliveries, "cross": cross}

        data = {
            ("dm", 1, "node"): [c(100.0, 0.0, 0.0, 0.0)],
            ("dm", 1, "broadcast"): [c(100.0, 0.0, 0.0, 0.0)],
            # half cross-node: 0.5 * 100 + 0.5 * 300 = 200 (node); 0.5 * 100 + 0.5 * 500 = 300
            ("dm", 2, "node"): [c(200.0, 10.0, 0.5, 0.5)],
            ("dm", 2, "broadcast"): [c(300.0, 20.0, 1.0, 0.5)],
        }
        lines = g.per_cross_node(data, [1, 2])
        row = [x for x in lines if x.startswith("| 2 |")][0]
        cells = [x.strip() for x in row.strip("|").split("|")]
        self.assertEqual(cells[1], "0.50")
        self.assertEqual(cells[2:5], ["500.0", "300.0", "0.60"])
        self.assertEqual(cells[5:8], ["40.00", "20.00", "0.50"])
        self.assertEqual(cells[8:10], ["2.00", "1.00"])
        self.assertIn("100.0 µs", lines[0])
        self.assertFalse(any(x.startswith("| 1 |") for x in lines))
        self.assertEqual(g.cross_share({"mode": "dm", "results": {
            "same-node": {"sent": 1}, "cross-node": {"sent": 3}}}), 0.75)
        self.assertIsNone(g.cross_share({"mode": "fanout"}))

    def test_rounds_show_mean_and_each(self):
        self.assertEqual(g.fmt([1.0, 3.0], 1), "2.0 (1.0, 3.0)")
        self.assertEqual(g.fmt([], 1), "-")
        self.assertEqual(g.ratio([1.0], [4.0]), "0.25")
        self.assertEqual(g.ratio([1.0], []), "-")


if __name__ == "__main__":
    unittest.main()

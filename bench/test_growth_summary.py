"""Tests of growth_summary.py: `python3 -m unittest discover -s bench -p 'test_*.py'`."""

import json
import os
import tempfile
import unittest

import growth_summary as g


def snap(t, ns, us, cmds, pub, msgs):
    return f"{t} {ns} {us} {cmds} {pub} {msgs}"


def record(kind="dm", nodes=2, mode="node", messages=1000, busy_ns=5_000_000_000):
    # idle: 1 s, 10 ms of node CPU, 100 µs of Redis, 10 commands, 0 publishes, 1 delivery
    # run: 10 s; idle share over it: 100 ms, 1000 µs, 100 commands, 0 publishes, 10 deliveries
    return {
        "label": "x",
        "nodes": nodes,
        "mode": mode,
        "kind": kind,
        "messages": messages,
        "load1": 0.5,
        "idle0": snap(100.0, 0, 0, 0, 0, 0),
        "idle1": snap(101.0, 10_000_000, 100, 10, 0, 1),
        "s0": snap(102.0, 20_000_000, 200, 20, 0, 2),
        "s1": snap(112.0, 20_000_000 + busy_ns + 100_000_000, 200 + 4000 + 1000, 20 + 2000 + 100, 1000, 2 + 3000 + 10),
    }


class CostTest(unittest.TestCase):
    def test_idle_share_is_subtracted_and_divided_by_messages(self):
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
            g.cost(record(messages=0))

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
        row = [line for line in out.splitlines() if line.startswith("| 4 |")]
        self.assertEqual(len(row), 1)
        cells = [c.strip() for c in row[0].strip("|").split("|")]
        self.assertEqual(cells[1], "8000.0")
        self.assertEqual(cells[2], "2000.0")
        self.assertEqual(cells[3], "0.25")
        self.assertEqual(cells[-2:], ["0", "0"])
        self.assertIn("Private messages", out)
        self.assertNotIn("Broadcasts", out)

    def test_rounds_show_mean_and_each(self):
        self.assertEqual(g.fmt([1.0, 3.0], 1), "2.0 (1.0, 3.0)")
        self.assertEqual(g.fmt([], 1), "-")
        self.assertEqual(g.ratio([1.0], [4.0]), "0.25")
        self.assertEqual(g.ratio([1.0], []), "-")


if __name__ == "__main__":
    unittest.main()

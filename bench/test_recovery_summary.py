"""Tests of bench/recovery_summary.py on known inputs (python3 -m unittest discover -s bench -p 'test_*.py')."""
import json
import os
import tempfile
import unittest

import recovery_summary as rs


def rnd(k, nodes_ms, redis_ms, clients=100, recovered=100, lost=0, dups=0, p50=5.0, p99=9.0):
    return {
        "k": k, "clients": clients, "rate": 250, "wall_s": 1.0, "recovered": recovered, "not_back": 0,
        "lost": lost, "duplicated": dups, "replayed_expected": clients * k,
        "connect_ms": {"p50": p50, "p99": p99, "max": p99},
        "all_missed_ms": {"p50": p50 * 2, "p99": p99 * 2, "max": p99 * 2, "n": clients},
        "cpu_ms": {"n1": nodes_ms / 2, "n2": nodes_ms / 2, "redis": redis_ms},
    }


def fanout_result(rate, received, sent, cpu_nodes, cpu_redis, delivered, loss=0):
    return {
        "mode": "fanout", "rate": rate, "messages": sent, "achieved_send_rate": rate,
        "received": received, "loss": loss, "delivered_per_s": delivered, "drained": True,
        "mean_ms_first_quarter": 1.0, "mean_ms_last_quarter": 1.0,
        "latency": {"p50_ms": 2.0, "p99_ms": 4.0},
        "cpu_pct_send": {"n1": cpu_nodes / 2, "n2": cpu_nodes / 2, "redis": cpu_redis},
    }


class ReplayFigures(unittest.TestCase):
    def test_marginal_cpu_per_replayed_packet_subtracts_the_empty_restores(self):
        rep = {"rounds": [rnd(0, 100, 10), rnd(50, 600, 60), rnd(0, 120, 10), rnd(50, 620, 40)]}
        f = rs.replay_figures(rep)
        # per restore: mean(100, 120) ms / 100 clients = 1.1 ms = 1100 µs
        self.assertAlmostEqual(f["nodes_us_per_restore"], 1100)
        self.assertAlmostEqual(f["redis_us_per_restore"], 100)
        # marginal: (610 - 110) ms / (100 × 50) = 0.1 ms = 100 µs
        self.assertAlmostEqual(f["nodes_us_per_replayed"], 100)
        self.assertAlmostEqual(f["redis_us_per_replayed"], (50 - 10) * 1000 / 5000)
        self.assertEqual(f["k"], 50)
        self.assertEqual((f["recovered"], f["restores"], f["expected"]), (400, 400, 10000))

    def test_losses_and_failed_recoveries_are_counted(self):
        rep = {"rounds": [rnd(0, 1, 1), rnd(10, 2, 1, recovered=97, lost=30, dups=2)]}
        f = rs.replay_figures(rep)
        self.assertEqual((f["recovered"], f["lost"], f["duplicated"]), (197, 30, 2))
        self.assertEqual(f["connect_ms_p99"], 9.0)
        self.assertEqual(f["all_missed_ms_p50"], 10.0)

    def test_without_a_zero_round_there_is_no_marginal_figure(self):
        f = rs.replay_figures({"rounds": [rnd(10, 2, 1)]})
        self.assertIsNone(f["nodes_us_per_replayed"])
        self.assertIsNone(f["nodes_us_per_restore"])


class FanoutFigures(unittest.TestCase):
    def run_of(self, kind, results, ticks=()):
        return rs.Run(1, "ours-on", kind, list(results), [], list(ticks))

    def test_cpu_per_message_at_50_and_redis_per_broadcast(self):
        # 50/s × 10 s = 500 broadcasts, 500,000 deliveries; nodes 40 % for 10 s = 4 s -> 8 µs each
        sweep = self.run_of("sweep", [fanout_result(20, 1, 1, 0, 0, 1), fanout_result(50, 500_000, 500, 40, 5, 50_000)])
        sweep.results[1]["messages"] = 500
        sweep.results[1]["achieved_send_rate"] = 50
        over = self.run_of("over", [fanout_result(400, 1_000_000, 2000, 100, 10, 300_000)],
                           [{"hz": 100, "ticks": {"n1": 0, "n2": 0, "redis": 0}},
                            {"hz": 100, "ticks": {"n1": 100, "n2": 100, "redis": 50}}])
        f = rs.fanout_figures({"sweep": sweep, "over": over})
        self.assertAlmostEqual(f["cpu_us_50"], 8.0)
        # Redis 5 % for 10 s = 0.5 s over 500 broadcasts = 1000 µs
        self.assertAlmostEqual(f["redis_us_per_bcast_50"], 1000.0)
        self.assertEqual(f["saturation"], 300_000)
        # 200 ticks = 2 s over 1,000,000 deliveries = 2 µs
        self.assertAlmostEqual(f["cpu_us_over"], 2.0)
        # 50 Redis ticks = 0.5 s over 2000 broadcasts = 250 µs
        self.assertAlmostEqual(f["redis_us_per_bcast_over"], 250.0)
        self.assertEqual(f["loss"], 0)


class CommandStats(unittest.TestCase):
    def test_usec_of_every_command_is_summed(self):
        text = ("# Commandstats\r\ncmdstat_publish:calls=12,usec=100,usec_per_call=8.33,rejected_calls=0\r\n"
                "cmdstat_evalsha:calls=3,usec=250,usec_per_call=83.33,rejected_calls=0\r\n")
        self.assertEqual(rs.commandstats_usec(text), 350)
        self.assertEqual(rs.commandstats_usec(""), 0)


class Render(unittest.TestCase):
    def test_a_folder_renders_with_ratios(self):
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "state"))
            for sysname, conn, disc in (("ours", 300_000, 310_000), ("ref", 0, 150_000)):
                with open(os.path.join(d, "state", f"sessions-{sysname}-on-1000.json"), "w") as fh:
                    json.dump({"bytes_per_session_connected": conn / 1000, "bytes_per_session_disconnected": disc / 1000,
                               "bytes_per_logged_packet": 200.0}, fh)
                with open(os.path.join(d, "state", f"replay-{sysname}-on.json"), "w") as fh:
                    json.dump({"rounds": [rnd(0, 100, 10), rnd(50, 600, 60)]}, fh)
            out = rs.render(rs.load_dir(d))
        self.assertIn("| Redis memory per 1000 sessions after a recoverable disconnect, KB (1000 clients) | 302.7 | 146.5 | 2.07 |", out)
        self.assertIn("clients connected, KB (1000 clients) | 293.0 | 0.0 | - |", out)
        self.assertIn("| 200/200, lost 0 of 5000, duplicated 0 |", out)


class SessionMemory(unittest.TestCase):
    def test_marginal_memory_counts_sessions_only(self):
        def s(empty, conn, disc):
            return {"mem_empty": empty, "mem_connected": conn, "mem_disconnected": disc,
                    "bytes_per_session_connected": 0, "bytes_per_session_disconnected": 0,
                    "bytes_per_logged_packet": 0, "memory_usage_per_session_key": 100}
        data = {"sessions": {
            # ours: sessions from the connect on: 1000 -> 5000 adds 4000 × 256 B
            ("ours", 1000): s(1_000_000, 1_300_000, 1_300_000),
            ("ours", 5000): s(1_000_000, 2_324_000, 2_324_000),
            # ref: the growth while connected (logged hellos) does not count: 4000 × 512 B
            ("ref", 1000): s(1_000_000, 1_200_000, 1_400_000),
            ("ref", 5000): s(1_000_000, 1_900_000, 4_148_000),
        }}
        out = rs.render(data)
        self.assertIn("marginal from 1000 to 5000 clients, KB | 250.0 | 500.0 | 0.50 |", out)


if __name__ == "__main__":
    unittest.main()

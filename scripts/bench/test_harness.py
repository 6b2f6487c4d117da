"""Unit tests of the benchmark's parsers: `python3 scripts/bench/test_harness.py`.

The harness reads civicload's human output (summary table, stage line); these pin what
it extracts, including stages civicload does not print yet (spool, vectorize, index).
"""

import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness  # noqa: E402
import recipe_export  # noqa: E402

SUMMARY = """\
┌────────────────────┬──────────────┬─────────┬─────────┬─────────┬───────────┬──────────┬─────────┬─────────┬──────────────┐
│ job                ┆ status       ┆ fetched ┆ created ┆ updated ┆ unchanged ┆ rejected ┆ seconds ┆ pages/s ┆ verification │
╞════════════════════╪══════════════╪═════════╪═════════╪═════════╪═══════════╪══════════╪═════════╪═════════╪══════════════╡
│ alameda.ca/agenda  ┆ completed    ┆     130 ┆     130 ┆       0 ┆         0 ┆        0 ┆     0.2 ┆     623 ┆ verified: 1… │
│ TOTAL (400 jobs)   ┆ 400 verified ┆  200000 ┆  199990 ┆       0 ┆         0 ┆       10 ┆    67.9 ┆    2946 ┆              │
└────────────────────┴──────────────┴─────────┴─────────┴─────────┴───────────┴──────────┴─────────┴─────────┴──────────────┘
Stage time summed over jobs: fetch 47.1 s, transform 1.8 s, load 207.0 s, verify 22.6 s (bottleneck: load).
All 400 jobs completed and verified.
"""


class ParseSummary(unittest.TestCase):
    def test_total_row_by_header_names(self):
        total = harness.parse_summary(SUMMARY)
        self.assertEqual(total["job"], "TOTAL (400 jobs)")
        self.assertEqual(total["status"], "400 verified")
        self.assertEqual(total["fetched"], "200000")
        self.assertEqual(total["created"], "199990")
        self.assertEqual(total["rejected"], "10")
        self.assertEqual(total["seconds"], "67.9")

    def test_total_row_of_the_screen_sized_summary(self):
        # The end-of-run summary since issue 17: the totals in a table of their own.
        text = (
            "╭──────────────────────────────────────────┬─────────┬─────────┬─────────┬───────────┬──────────┬─────────┬─────────╮\n"
            "│                                          ┆ fetched ┆ created ┆ updated ┆ unchanged ┆ rejected ┆ seconds ┆ pages/s │\n"
            "╞══════════════════════════════════════════╪═════════╪═════════╪═════════╪═══════════╪══════════╪═════════╪═════════╡\n"
            "│ TOTAL (400 jobs: 400 verified, 0 failed) ┆  200000 ┆  199990 ┆       0 ┆         0 ┆       10 ┆    67.9 ┆    2946 │\n"
            "╰──────────────────────────────────────────┴─────────┴─────────┴─────────┴───────────┴──────────┴─────────┴─────────╯\n"
        )
        total = harness.parse_summary(text)
        self.assertEqual(total[""], "TOTAL (400 jobs: 400 verified, 0 failed)")
        self.assertEqual(total["fetched"], "200000")
        self.assertEqual(total["created"], "199990")
        self.assertEqual(total["rejected"], "10")

    def test_no_table(self):
        self.assertEqual(harness.parse_summary("error: cannot connect\n"), {})


class ParseStages(unittest.TestCase):
    def test_current_stages(self):
        stages, bottleneck = harness.parse_stages(SUMMARY)
        self.assertEqual(
            stages,
            [("fetch", 47.1), ("transform", 1.8), ("load", 207.0), ("verify", 22.6)],
        )
        self.assertEqual(bottleneck, "load")

    def test_any_stage_names(self):
        line = (
            "Stage time summed over jobs: fetch 40.0 s, transform 2.0 s, spool 3.5 s, "
            "load 30.0 s, vectorize 12 s, index 4.2 s, verify 1.0 s (bottleneck: fetch).\n"
        )
        stages, bottleneck = harness.parse_stages(line)
        self.assertEqual(
            [n for n, _ in stages],
            ["fetch", "transform", "spool", "load", "vectorize", "index", "verify"],
        )
        self.assertEqual(dict(stages)["vectorize"], 12.0)
        self.assertEqual(bottleneck, "fetch")

    def test_bottleneck_inferred_when_not_named(self):
        stages, bottleneck = harness.parse_stages("Stage time: fetch 1.0 s, load 2.0 s\n")
        self.assertEqual(bottleneck, "load")

    def test_absent(self):
        self.assertEqual(harness.parse_stages("nothing here\n"), ([], "-"))


class ParsePhases(unittest.TestCase):
    def test_load_phase_and_search_preparation_steps(self):
        text = """\
Vectorized 7357 pages in 1.9 s (3826/s, 1 pass, 1 VACUUM taking 0.2 s); 0 left without a vector.
search index meeting_pages_search_vector_gin     9.7 s  built (65.5 MB, fastupdate off)
search index meeting_documents_name_vector_gin     0.0 s  built (40.0 kB, fastupdate off)
VACUUM meeting_pages (analyzed during the load)     1.2 s
VACUUM (ANALYZE) meeting_documents               0.1 s
REFRESH MATERIALIZED VIEW meeting_page_stats     0.4 s  concurrently
Load phase (start to last commit, jobs verified): 25.3 s, 7905 pages/s; search preparation 17.0 s; total 42.4 s.
"""
        phases = dict(harness.parse_phases(text))
        self.assertEqual(phases["load"], 25.3)
        self.assertAlmostEqual(phases["vectorize"], 1.9)
        self.assertAlmostEqual(phases["index"], 9.7)
        self.assertAlmostEqual(phases["vacuum/analyze"], 1.3)
        self.assertAlmostEqual(phases["stats view"], 0.4)

    def test_absent(self):
        self.assertEqual(harness.parse_phases("nothing here"), [])


class CsvFields(unittest.TestCase):
    def test_postgres_csv_distinguishes_null_from_empty(self):
        self.assertEqual(recipe_export.field(None), "")
        self.assertEqual(recipe_export.field(""), '""')
        self.assertEqual(recipe_export.field(7), "7")
        self.assertEqual(recipe_export.field('a "b"\nc'), '"a ""b""\nc"')

    def test_blank_json_is_null_like_civicload(self):
        self.assertIsNone(recipe_export.blank_to_none("  "))
        self.assertEqual(recipe_export.blank_to_none("[]"), "[]")


class MachineCpu(unittest.TestCase):
    def test_counts_the_cpu_this_process_burns(self):
        before = harness.machine_cpu_seconds()
        mine = time.process_time()
        while time.process_time() - mine < 0.3:
            pass
        # The whole machine was busy at least as long as this process was (ticks are
        # 10 ms, so allow two of them).
        self.assertGreaterEqual(harness.machine_cpu_seconds() - before, 0.28)


if __name__ == "__main__":
    unittest.main()

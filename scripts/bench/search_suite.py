"""The search suite of scripts/bench-search.sh: every query class in both orders through
`civicload search-bench --json` (a warm-up run, then --runs timed runs), printed as a
Markdown table and appended to bench-results/search.csv.

    python3 scripts/bench/search_suite.py --civicload BIN --database-url URL --pages N
            [--runs R] [--municipality SUB] [--csv FILE] [--commit C] [--more]

--more adds MORE: other shapes the application may send (longer phrases, phrases with
filters, phrases in OR and negated, filters combined).
"""

import argparse
import csv
import datetime
import json
import os
import subprocess
import sys

# (class, query, extra flags). The municipality filter's subdomain is filled in at run time.
CLASSES = [
    ("common term", "budget", []),
    ("rare term", "arbor", []),
    ("phrase", '"fiscal year"', []),
    ("two ANDed terms", "budget parking", []),
    ("negation", "budget -parking", []),
    ("OR", "parking or bicycle", []),
    ("municipality filter", "budget", ["--municipality", None]),
    ("one-year range", "budget", ["--from", "2024-01-01", "--to", "2024-12-31"]),
    ("no match", "xyzzyplugh", []),
]

MORE = [
    ("3-word phrase", '"fiscal year budget"', []),
    ("phrase of common words", '"city council"', []),
    ("phrase, no match, common words", '"water main"', []),
    ("phrase across a stopword", '"city of"', []),
    ("phrase + municipality", '"fiscal year"', ["--municipality", None]),
    ("phrase + one year", '"fiscal year"', ["--from", "2024-01-01", "--to", "2024-12-31"]),
    ("term + type + one year", "budget", ["--document-type", "agenda", "--from", "2023-01-01",
                                          "--to", "2023-12-31"]),
    ("OR of common terms", "budget or council", []),
    ("negation of a common term", "council -budget", []),
    ("rare term + three years", "arbor", ["--from", "2020-01-01", "--to", "2022-12-31"]),
    ("municipality + one year", "budget", ["--municipality", None, "--from", "2024-01-01",
                                           "--to", "2024-12-31"]),
    ("municipality + minutes", "council", ["--municipality", None, "--document-type", "minutes"]),
    ("phrase, no match", '"xyzzy plugh"', []),
    ("negated phrase", 'budget -"fiscal year"', []),
    ("phrase or term", '"fiscal year" or bicycle', []),
]


def bench(a, query, extra, order, runs):
    cmd = [a.civicload, "--database-url", a.database_url, "search-bench", "--query", query,
           "--order", order, "--runs", str(runs), "--json"] + extra
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--civicload", required=True)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--pages", type=int, required=True)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--municipality", required=True)
    ap.add_argument("--csv", default="")
    ap.add_argument("--commit", default="")
    ap.add_argument("--more", action="store_true", help="also the shapes in MORE")
    a = ap.parse_args()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for name, query, extra in CLASSES + (MORE if a.more else []):
        extra = [a.municipality if x is None else x for x in extra]
        for order in ("date", "rank"):
            bench(a, query, extra, order, 1)  # warm-up
            r = bench(a, query, extra, order, a.runs)
            rows.append((name, query, " ".join(extra), order, r))
            print(f"search-bench: {name:20} {order:4} p50 {r['p50_ms']:8.1f} ms  p95 {r['p95_ms']:8.1f} ms  "
                  f"rows {r['rows']:3}  matches {r['matches']}  {r['route']}", file=sys.stderr, flush=True)
    target = {"date": 100.0, "rank": 500.0}
    print(f"\n{a.pages:,} pages, {a.runs} warm runs each (after one warm-up)\n")
    print("| class | query | filters | order | p50 ms | p95 ms | max ms | rows | matches (cap 10000) | plan | p95 target |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for name, query, extra, order, r in rows:
        ok = "ok" if r["p95_ms"] <= target[order] else "MISSED"
        m = f"{r['matches']}+" if r["matches"] >= r["count_cap"] else str(r["matches"])
        q = query.replace("|", "\\|")
        print(f"| {name} | `{q}` | {extra or '-'} | {order} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
              f"{r['max_ms']:.1f} | {r['rows']} | {m} | {r['route']} | ≤ {target[order]:.0f}: {ok} |")
    if a.csv:
        new = not os.path.exists(a.csv)
        with open(a.csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["timestamp", "git_commit", "pages", "class", "query", "filters", "order",
                            "runs", "p50_ms", "p95_ms", "max_ms", "rows", "matches", "route"])
            for name, query, extra, order, r in rows:
                w.writerow([stamp, a.commit, a.pages, name, query, extra, order, r["runs"],
                            f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['max_ms']:.2f}",
                            r["rows"], r["matches"], r["route"]])


if __name__ == "__main__":
    main()

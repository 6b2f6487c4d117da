"""The measuring half of scripts/bench.sh (which builds, generates and serves first).

Runs the contenders one after the other, each into a fresh PostgreSQL database on the
same local server (create, measure, check, record size, drop):
  a  recipe     the seeds' SQL recipe: psql \\copy of CSV exports, then
                UPDATE ... SET search_vector = ..., then CREATE INDEX ... USING gin
  b  ceiling    the source's ceiling: civicload's fetch stage alone, no database
                (examples/source_ceiling.rs)
  c  dlt        dlt's rest_api source, merge on id (scripts/bench/dlt_load.py)
  d  civicload  municipalities sync (untimed), then `backfill --subdomain all` (timed)
and prints a table, civicload's stage breakdown, the issue's targets, and appends one
row per contender to bench-results/bench.csv.

Standard library only (runs with the system python3).
"""

import argparse
import csv
import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time

# The server measured: the local one, or another (BENCH_PGHOST = its socket folder,
# BENCH_PGPORT = its port, also used for the TCP logins of the civic-observer role).
SOCKET = os.environ.get("BENCH_PGHOST", "/var/run/postgresql")
PGPORT = os.environ.get("BENCH_PGPORT", "5432")
CSV_COLUMNS = [
    "timestamp",
    "git_commit",
    "machine",
    "pages",
    "contender",
    "wall_s",
    "pages_per_s",
    "mb_per_s",
    "peak_rss_mb",
    "ratio_vs_civicload",
    "notes",
]
NAMES = {"a": "recipe", "b": "ceiling", "c": "dlt", "d": "civicload", "e": "civic-observer-g1", "f": "civic-observer-g2"}
LABELS = {
    "a": "(a) SQL recipe: \\copy + UPDATE + GIN",
    "b": "(b) source ceiling (fetch only)",
    "c": "(c) dlt rest_api, merge",
    "d": "(d) civicload backfill",
    "e": "(e) civicload into civic-observer G1",
    "f": "(f) civicload into civic-observer G2",
}

# civic-observer's tables (tests/fixtures), owned by this non-superuser role, which
# civicload connects as over TCP (the local socket takes peer logins only).
OBSERVER_ROLE = "bench_civic_observer"
OBSERVER_PASSWORD = "bench-only-password"

# Per-page digest of the search vectors: equal digests mean every page got exactly the
# same tsvector (the recipe's is PostgreSQL's own expression, so it is the reference).
VECTOR_DIGEST_SQL = """
SELECT count(*) FILTER (WHERE search_vector IS NULL),
       md5(string_agg(h, '' ORDER BY h))
FROM (SELECT search_vector,
             md5(source_id || chr(31) || coalesce(search_vector::text, chr(9216))) AS h
      FROM meeting_pages) x
"""

GIN_INDEX_SQL = """
SELECT count(*) FROM pg_indexes
WHERE tablename = 'meeting_pages' AND indexdef ILIKE '%USING gin%search_vector%'
"""


def log(msg):
    print(f"bench: {msg}", flush=True)


class Bench:
    def __init__(self, args):
        self.a = args
        self.started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        stamp = self.started.strftime("%Y%m%dT%H%M%SZ")
        self.scratch = os.path.join(args.scratch, f"{stamp}-{args.pages}")
        os.makedirs(self.scratch, exist_ok=True)
        self.results = {}
        self.cpu_timed = 0.0
        self.cores = os.cpu_count() or 1
        self.base = args.source_url.split("/{subdomain}")[0]
        self.sites_url = f"{self.base}/sites/sites.json"

    # ------------------------------------------------------------------ plumbing
    def db_url(self, name):
        return f"postgres:///{name}?host={SOCKET}&port={PGPORT}"

    def db_name(self, key):
        return f"{self.a.db_prefix}{NAMES[key]}"

    def psql(self, db, sql, check=True):
        out = subprocess.run(
            ["psql", "-h", SOCKET, "-p", PGPORT, "-d", db, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-At", "-c", sql],
            capture_output=True,
            text=True,
        )
        if check and out.returncode != 0:
            raise RuntimeError(f"psql on {db} failed: {out.stderr.strip()}\nSQL: {sql.strip()[:300]}")
        return out.stdout.strip()

    def drop_db(self, name):
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def create_db(self, name):
        self.drop_db(name)
        self.psql("postgres", f'CREATE DATABASE "{name}"')

    def finish_db(self, name):
        if self.a.keep_dbs:
            # A kept database must not work while the next contender is measured: the
            # recipe's UPDATE leaves a dead version of every page, and autovacuum would
            # vacuum gigabytes of it during civicload's run (seen at 1M pages).
            self.psql(name, """DO $$ DECLARE t record; BEGIN
                FOR t IN SELECT c.oid::regclass AS rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                         WHERE n.nspname = 'public' AND c.relkind = 'r' LOOP
                    EXECUTE format('ALTER TABLE %s SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)', t.rel);
                END LOOP; END $$""")
            log(f"kept database {name} (--keep-dbs), autovacuum off on its tables")
        else:
            self.drop_db(name)

    def db_size_mb(self, name):
        return int(self.psql("postgres", f"SELECT pg_database_size('{name}')")) / 1e6

    def measure(self, name, cmd, stdin=None, env=None, settle=True):
        """Runs cmd under /usr/bin/time -v; returns (wall_s, peak_rss_mb, rc, stdout_path).
        A CHECKPOINT first (untimed, before a contender's first step only), so no
        contender pays for writing out the previous one's dirty buffers."""
        out_path = os.path.join(self.scratch, f"{name}.out")
        time_path = os.path.join(self.scratch, f"{name}.time")
        if settle:
            self.psql("postgres", "CHECKPOINT", check=False)
        cpu_before = machine_cpu_seconds()
        started = time.monotonic()
        with open(out_path, "w") as out:
            rc = subprocess.run(
                ["/usr/bin/time", "-v", "-o", time_path] + cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                env=env,
            ).returncode
        wall = time.monotonic() - started
        self.cpu_timed += machine_cpu_seconds() - cpu_before
        rss_kb = 0
        try:
            with open(time_path) as f:
                for line in f:
                    if "Maximum resident set size" in line:
                        rss_kb = int(line.rsplit(":", 1)[1])
        except OSError:
            pass
        return wall, rss_kb / 1024, rc, out_path

    def civicload(self, db, *args):
        return [self.a.civicload, "--database-url", self.db_url(db), "--source-url", self.a.source_url, *args]

    def content_checks(self, db):
        """Pages held, NULL vectors, vector digest, content digest, GIN index present."""
        pages = int(self.psql(db, "SELECT count(*) FROM meeting_pages"))
        nulls, vdigest = self.psql(db, VECTOR_DIGEST_SQL).split("|")
        gin = int(self.psql(db, GIN_INDEX_SQL)) > 0
        out = subprocess.run(self.civicload(db, "digest"), capture_output=True, text=True)
        m = re.search(r"digest ([0-9a-f]{32})", out.stdout)
        return {
            "pages": pages,
            "null_vectors": int(nulls or 0),
            "vector_digest": vdigest,
            "digest": m.group(1) if m else None,
            "gin": gin,
        }

    @staticmethod
    def load_now():
        with open("/proc/loadavg") as f:
            return f.read().split()[0]

    # ------------------------------------------------------------------ contenders
    def run_recipe(self):
        csv_dir = os.path.join(self.a.corpus, "recipe-csv")
        done = os.path.join(csv_dir, "export.json")
        if not os.path.exists(done):
            log(f"exporting the corpus to CSV in {csv_dir} (not timed) ...")
            t = time.monotonic()
            subprocess.run([sys.executable, os.path.join(self.a.here, "recipe_export.py"), self.a.corpus, csv_dir], check=True, stdout=subprocess.DEVNULL)
            log(f"export took {time.monotonic() - t:.1f} s")
        else:
            log(f"reusing the CSV export in {csv_dir}")
        db = self.db_name("a")
        self.create_db(db)
        # civicload's own schema, so the recipe fills the same tables, constraints and
        # indexes civicload does (the database is created and migrated, not timed).
        subprocess.run(self.civicload(db, "migrate"), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        notes = []
        # If a migration already defines a GIN index on the vectors, the recipe would
        # maintain it row by row during \copy; the recipe builds its own afterwards.
        pre = self.psql(db, "SELECT string_agg(indexname, ',') FROM pg_indexes WHERE tablename = 'meeting_pages' AND indexdef ILIKE '%USING gin%search_vector%'")
        if pre:
            for ix in pre.split(","):
                self.psql(db, f'DROP INDEX "{ix}"')
            notes.append(f"dropped migration GIN {pre} before copy")
        # `civicload.bulk = on` makes civicload's vector trigger skip: the recipe computes
        # vectors in its own UPDATE, as the seeds do, not row by row during \copy.
        copy_sql = "\n".join(
            [
                "SET civicload.bulk = 'on';",
                f"\\copy municipalities (id, subdomain, name, state, country, kind, pages) FROM '{csv_dir}/municipalities.csv' WITH (FORMAT csv)",
                f"\\copy meeting_documents (id, municipality_id, meeting_name, meeting_date, document_type) FROM '{csv_dir}/documents.csv' WITH (FORMAT csv)",
                f"\\copy meeting_pages (document_id, municipality_id, source_id, page_number, text, page_image, entities, votes) FROM '{csv_dir}/pages.csv' WITH (FORMAT csv)",
            ]
        )
        steps = [
            ("copy", copy_sql),
            ("update", "SET civicload.bulk = 'on';\nUPDATE meeting_pages SET search_vector = to_tsvector('simple', unaccent(coalesce(text, '')));"),
            ("gin", "CREATE INDEX bench_recipe_search_vector ON meeting_pages USING gin (search_vector);"),
        ]
        total, rss, step_times = 0.0, 0.0, []
        for step, sql in steps:
            path = os.path.join(self.scratch, f"a-{step}.sql")
            with open(path, "w") as f:
                f.write(sql + "\n")
            wall, r, rc, out = self.measure(f"a-{step}", ["psql", "-h", SOCKET, "-p", PGPORT, "-d", db, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", path], settle=step == "copy")
            if rc != 0:
                raise RuntimeError(f"recipe step {step} failed (exit {rc}); see {out}")
            log(f"  (a) {step}: {wall:.1f} s")
            step_times.append((step, wall))
            total += wall
            rss = max(rss, r)
        checks = self.content_checks(db)
        size = self.db_size_mb(db)
        self.finish_db(db)
        notes.insert(0, " ".join(f"{s}={t:.1f}s" for s, t in step_times))
        notes.append("peak RSS is psql's: the work runs in the server")
        return {"wall": total, "rss": rss, "rc": 0, "pages": checks["pages"], "checks": checks, "db_mb": size, "steps": step_times, "notes": notes}

    def run_ceiling(self):
        wall, rss, rc, out = self.measure("b-ceiling", [self.a.ceiling, "--source-url", self.a.source_url, "--sites", self.sites_url, "--concurrency", str(self.a.concurrency)])
        info = {}
        with open(out) as f:
            for line in f:
                if line.startswith("source_ceiling "):
                    info = json.loads(line.split(" ", 1)[1])
        if rc != 0 or not info:
            raise RuntimeError(f"source_ceiling failed (exit {rc}); see {out}")
        notes = [f"requests={info['requests']}", f"concurrency={info['concurrency']}", "rust example, civicload's Fetch stage"]
        return {"wall": wall, "rss": rss, "rc": rc, "pages": info["rows"], "notes": notes}

    def run_dlt(self):
        db = self.db_name("c")
        self.create_db(db)
        work = os.path.join(self.scratch, "dlt-pipelines")
        shutil.rmtree(work, ignore_errors=True)
        env = dict(os.environ, EXTRACT__WORKERS=str(self.a.concurrency))
        cmd = [self.a.dlt_python, os.path.join(self.a.here, "dlt_load.py"), "--base", self.base, "--database", db, "--workdir", work, "--workers", str(self.a.concurrency)]
        wall, rss, rc, out = self.measure("c-dlt", cmd, env=env)
        info = {}
        with open(out) as f:
            for line in f:
                if line.startswith("dlt_result "):
                    info = json.loads(line.split(" ", 1)[1])
        notes = []
        if rc != 0 or not info:
            notes.append(f"FAILED exit {rc} (see {out})")
        counts = self.psql(
            db,
            "SELECT coalesce(sum(n), 0), coalesce(sum(d), 0) FROM ("
            " SELECT count(*) AS n, count(DISTINCT id) AS d FROM civicband.agendas"
            " UNION ALL SELECT count(*), count(DISTINCT id) FROM civicband.minutes) x",
            check=False,
        )
        pages, distinct = (int(x) for x in counts.split("|")) if "|" in counts else (0, 0)
        size = self.db_size_mb(db)
        self.finish_db(db)
        shutil.rmtree(work, ignore_errors=True)
        if info:
            notes.append(f"pipeline.run={info['wall_s']:.1f}s dlt {info['dlt_version']} workers={self.a.concurrency}")
        notes.append("no search vectors, no GIN")
        if distinct != pages:
            notes.append(f"{pages - distinct} duplicate ids")
        return {"wall": wall, "rss": rss, "rc": rc, "pages": pages, "db_mb": size, "notes": notes}

    def run_civicload(self):
        db = self.db_name("d")
        self.drop_db(db)
        sync = subprocess.run(self.civicload(db, "municipalities", "sync", "--from", self.sites_url), capture_output=True, text=True)
        if sync.returncode != 0:
            raise RuntimeError(f"civicload municipalities sync failed: {sync.stderr.strip()[-500:]}")
        extra = self.a.civicload_args.split() if self.a.civicload_args else []
        wall, rss, rc, out = self.measure("d-civicload", self.civicload(db, "backfill", "--subdomain", "all", *extra))
        with open(out) as f:
            text = f.read()
        summary = parse_summary(text)
        stages, bottleneck = parse_stages(text)
        phases = parse_phases(text)
        # civicload may report the wall time of its load phase (fetch to last commit, before
        # vectors and index); the ceiling target compares against that when present.
        m = re.search(r"(?i)load phase[^0-9\n]*([0-9.]+) s", text)
        load_phase = float(m.group(1)) if m else None
        checks = self.content_checks(db)
        size = self.db_size_mb(db)
        self.finish_db(db)
        notes = []
        if load_phase:
            notes.append(f"load phase={load_phase:.1f}s")
        if rc != 0:
            notes.append(f"exit {rc} (see {out})")
        if summary:
            notes.append(f"TOTAL fetched={summary.get('fetched')} created={summary.get('created')} rejected={summary.get('rejected')} {summary.get('status', summary.get(''))}")
        if phases:
            notes.append("phases: " + " ".join(f"{n}={s:.1f}s" for n, s in phases))
        if stages:
            notes.append("stages: " + " ".join(f"{n}={s:.1f}s" for n, s in stages) + f" bottleneck={bottleneck}")
        if extra:
            notes.append("args: " + " ".join(extra))
        return {"wall": wall, "rss": rss, "rc": rc, "pages": checks["pages"], "checks": checks, "db_mb": size, "summary": summary, "stages": stages, "bottleneck": bottleneck, "phases": phases, "load_phase_s": load_phase, "notes": notes}

    def run_observer(self, key):
        """`--target civic-observer` into tables created from the application's DDL
        (tests/fixtures/civic_observer_*.sql), owned by a non-superuser role."""
        gen = "g1" if key == "e" else "g2"
        db = self.db_name(key)
        self.drop_db(db)
        self.psql("postgres", f"""DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{OBSERVER_ROLE}') THEN
                CREATE ROLE {OBSERVER_ROLE} LOGIN NOSUPERUSER PASSWORD '{OBSERVER_PASSWORD}';
            END IF; END $$""")
        self.psql("postgres", f'CREATE DATABASE "{db}" OWNER {OBSERVER_ROLE}')
        if gen == "g1":
            self.psql(db, "CREATE EXTENSION IF NOT EXISTS unaccent")
        url = f"postgres://{OBSERVER_ROLE}:{OBSERVER_PASSWORD}@127.0.0.1:{PGPORT}/{db}"
        fixtures = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures")
        subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-X", "-q", "-1",
                        "-f", os.path.join(fixtures, "civic_observer_common.sql"),
                        "-f", os.path.join(fixtures, f"civic_observer_{gen}.sql")],
                       check=True, capture_output=True)
        cmd = [self.a.civicload, "--database-url", url, "--source-url", self.a.source_url, "--target", "civic-observer"]
        sync = subprocess.run(cmd + ["municipalities", "sync", "--from", self.sites_url], capture_output=True, text=True)
        if sync.returncode != 0:
            raise RuntimeError(f"civicload municipalities sync failed: {sync.stderr.strip()[-500:]}")
        extra = self.a.civicload_args.split() if self.a.civicload_args else []
        wall, rss, rc, out = self.measure(f"{key}-{NAMES[key]}", cmd + ["backfill", "--subdomain", "all", *extra])
        with open(out) as f:
            summary = parse_summary(f.read())
        pages = int(self.psql(db, "SELECT count(*) FROM meetings_meetingpage"))
        dig = subprocess.run(cmd + ["digest"], capture_output=True, text=True)
        m = re.search(r"digest ([0-9a-f]{32})", dig.stdout)
        notes = [f"digest={m.group(1) if m else None}"]
        if gen == "g1":
            wrong = self.psql(db, "SELECT count(*) FROM meetings_meetingpage WHERE search_vector IS DISTINCT FROM to_tsvector('simple', unaccent(coalesce(text, '')))")
            notes.append(f"vectors differing from the application's expression={wrong}")
        if rc != 0:
            notes.append(f"exit {rc} (see {out})")
        if summary:
            notes.append(f"TOTAL fetched={summary.get('fetched')} created={summary.get('created')} rejected={summary.get('rejected')} {summary.get('status', summary.get(''))}")
        size = self.db_size_mb(db)
        self.finish_db(db)
        return {"wall": wall, "rss": rss, "rc": rc, "pages": pages, "db_mb": size, "summary": summary, "notes": notes}

    # ------------------------------------------------------------------ reporting
    def run(self):
        runners = {"a": self.run_recipe, "b": self.run_ceiling, "c": self.run_dlt, "d": self.run_civicload,
                   "e": lambda: self.run_observer("e"), "f": lambda: self.run_observer("f")}
        for key in self.a.only:
            log(f"--- {LABELS[key]} (load average {self.load_now()}) ---")
            load_before = self.load_now()
            self.cpu_timed = 0.0
            try:
                r = runners[key]()
            except Exception as e:  # a contender that breaks is reported, the others still run
                log(f"{LABELS[key]} FAILED: {e}")
                r = {"wall": None, "rss": None, "rc": 1, "pages": 0, "notes": [f"FAILED: {str(e)[:200]}"]}
            r["notes"].append(f"load1={load_before}")
            if r["wall"] is not None:
                r["cpu_s"] = self.cpu_timed
                r["notes"].append(f"machine cpu={self.cpu_timed:.1f}s")
            if r.get("db_mb") is not None:
                r["notes"].append(f"db={r['db_mb']:.0f}MB")
            self.results[key] = r
            if r["wall"] is not None:
                log(f"{LABELS[key]}: {r['wall']:.1f} s, {r['pages']} pages")
        self.report()

    def report(self):
        n = self.a.pages
        text_mb = self.a.text_bytes / 1e6
        d = self.results.get("d")
        d_wall = d["wall"] if d and d["wall"] else None
        rows = []
        for key in self.a.only:
            r = self.results[key]
            wall = r["wall"]
            pps = r["pages"] / wall if wall else None
            mbps = text_mb / wall if wall else None
            ratio = wall / d_wall if wall and d_wall else None
            complete = r["pages"] == n
            if not complete and r["wall"] is not None:
                r["notes"].insert(0, f"PAGES {r['pages']} != {n} expected")
            rows.append((key, wall, pps, mbps, r["rss"], ratio, complete, r))
        print()
        print(f"civicload benchmark: {n:,} pages, {text_mb:,.0f} MB of page text, {self.a.machine}")
        print(f"commit {self.a.commit}, {self.started.isoformat()}; PostgreSQL: {self.server_settings()}")
        print("NOTE: shared, noisy machine (other jobs compile on the same cores): compare ratios within one run, not absolute numbers across runs.")
        hdr = f"{'contender':40} {'wall s':>8} {'pages/s':>9} {'MB/s':>7} {'peak RSS MB':>11} {'× civicload':>11} {'pages held':>11} {'db MB':>7}"
        print(hdr)
        print("-" * len(hdr))
        for key, wall, pps, mbps, rss, ratio, complete, r in rows:
            held = f"{r['pages']:,}" + ("" if complete else " !")
            if key == "b":
                held = f"{r['pages']:,} seen"
            print(
                f"{LABELS[key]:40} {fmt(wall, 1):>8} {fmt(pps, 0):>9} {fmt(mbps, 2):>7} {fmt(rss, 0):>11} {fmt(ratio, 2):>11} {held:>11} {fmt(r.get('db_mb'), 0):>7}"
            )
        print("(× civicload = contender wall / civicload wall: above 1 means civicload is faster. MB/s = page text bytes / wall. Peak RSS: the measured client process.)")
        a = self.results.get("a")
        if a and a.get("steps"):
            print("(a) steps: " + ", ".join(f"{s} {t:.1f} s" for s, t in a["steps"]))
        if d and d.get("stages"):
            print("(d) civicload stage time summed over jobs: " + ", ".join(f"{name} {s:.1f} s" for name, s in d["stages"]) + f" (bottleneck: {d['bottleneck']})")
        if d and d.get("phases"):
            print("(d) civicload wall time by phase: " + ", ".join(f"{name} {s:.1f} s" for name, s in d["phases"]))
        cpus = [(key, self.results[key]) for key in self.a.only if self.results[key].get("cpu_s")]
        if cpus:
            # Every process counts: PostgreSQL, the client and the source (Datasette serves
            # civicload and dlt during their runs; the recipe reads local CSV files).
            print(f"CPU time of the whole machine while timed ({self.cores} cores; wall ≥ CPU / cores): "
                  + ", ".join(f"{NAMES[key]} {r['cpu_s']:.1f} CPU-s ({r['cpu_s'] / r['wall']:.2f} cores busy)" for key, r in cpus))
        for key in ("a", "d"):
            r = self.results.get(key)
            if r and r.get("checks"):
                c = r["checks"]
                print(f"{LABELS[key]}: {c['pages']:,} pages held (expected {n:,}), {c['null_vectors']:,} without a search vector, GIN index {'present' if c['gin'] else 'ABSENT'}, digest {c['digest']}, vector digest {c['vector_digest']}")
        if a and d and a.get("checks") and d.get("checks"):
            same = a["checks"]["digest"] == d["checks"]["digest"]
            vsame = a["checks"]["vector_digest"] == d["checks"]["vector_digest"]
            print(f"content (a) vs (d): {'identical' if same else 'DIFFERENT'}; search vectors (a) vs (d): {'identical' if vsame else 'DIFFERENT'}")
            if not same:
                d["notes"].append("content digest differs from recipe")
            if not vsame:
                d["notes"].append("vectors differ from recipe")
        self.targets()
        self.write_csv(rows)

    def targets(self):
        r = self.results
        d = r.get("d")
        if not d or not d["wall"]:
            return
        print("Targets (issue 7):")
        if r.get("a") and r["a"]["wall"]:
            x = r["a"]["wall"] / d["wall"]
            print(f"  civicload ≥ 2× recipe (end to end):        {x:.2f}×  {'PASS' if x >= 2 else 'FAIL'}")
            print(f"  civicload ≥ 2.5× recipe (issue 16):        {x:.2f}×  {'PASS' if x >= 2.5 else 'FAIL'}")
        if r.get("c") and r["c"]["wall"] and r["c"]["pages"]:
            x = (d["pages"] / d["wall"]) / (r["c"]["pages"] / r["c"]["wall"])
            print(f"  civicload ≥ 10× dlt (pages/s):             {x:.2f}×  {'PASS' if x >= 10 else 'FAIL'}")
        if r.get("b") and r["b"]["wall"]:
            # civicload's load phase, when it reports one; otherwise its whole run (which
            # also includes vectors, index and verification: a lower bound).
            phase = d.get("load_phase_s") or d["wall"]
            x = r["b"]["wall"] / phase
            what = "load phase" if d.get("load_phase_s") else "whole run"
            print(f"  civicload ≥ 70% of source ceiling ({what}): {x * 100:.0f}%  {'PASS' if x >= 0.7 else 'FAIL'}")
        for key in ("e", "f"):
            o = r.get(key)
            if o and o["wall"]:
                x = d["wall"] / o["wall"]
                print(f"  {NAMES[key]} within 25% of the own schema (throughput): {x * 100:.0f}%  {'PASS' if x >= 0.75 else 'FAIL'}")
        if d["rss"]:
            tag = "" if self.a.pages >= 1_000_000 else " (target is at 1M pages)"
            print(f"  civicload peak RSS ≤ 256 MB:                {d['rss']:.0f} MB  {'PASS' if d['rss'] <= 256 else 'FAIL'}{tag}")
        other = self.other_size_rate()
        if other:
            pages, rate = other
            mine = d["pages"] / d["wall"]
            small, big = (rate, mine) if pages < self.a.pages else (mine, rate)
            drop = 1 - big / small
            print(f"  pages/s at the larger size within 15% ({pages:,}-page row of this commit: {rate:.0f}/s): {drop * 100:+.0f}% slower  {'PASS' if drop <= 0.15 else 'FAIL'}")

    def other_size_rate(self):
        """civicload's pages/s at another corpus size, same commit, from bench.csv."""
        try:
            with open(self.a.results_csv) as f:
                rows = [x for x in csv.DictReader(f) if x["contender"] == "civicload" and x["git_commit"] == self.a.commit and int(x["pages"]) != self.a.pages and x["pages_per_s"]]
        except (OSError, KeyError, ValueError):
            return None
        if not rows:
            return None
        last = rows[-1]
        return int(last["pages"]), float(last["pages_per_s"])

    def server_settings(self):
        out = self.psql("postgres", "SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name) FROM pg_settings WHERE name IN ('server_version', 'shared_buffers', 'maintenance_work_mem', 'max_wal_size', 'synchronous_commit', 'max_parallel_maintenance_workers')")
        return out

    def write_csv(self, rows):
        os.makedirs(os.path.dirname(self.a.results_csv) or ".", exist_ok=True)
        new = not os.path.exists(self.a.results_csv)
        with open(self.a.results_csv, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(CSV_COLUMNS)
            for key, wall, pps, mbps, rss, ratio, complete, r in rows:
                w.writerow([
                    self.started.isoformat(),
                    self.a.commit,
                    self.a.machine,
                    self.a.pages,
                    NAMES[key],
                    fmt(wall, 2, ""),
                    fmt(pps, 0, ""),
                    fmt(mbps, 3, ""),
                    fmt(rss, 0, ""),
                    fmt(ratio, 3, ""),
                    "; ".join(r["notes"]),
                ])
        log(f"appended {len(rows)} rows to {self.a.results_csv}; logs in {self.scratch}")


def machine_cpu_seconds():
    """CPU time the whole machine has spent busy since boot (user, nice, system, irq and
    softirq of every core; not idle, I/O wait or steal), in seconds."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:8]]
    user, nice, system, _idle, _iowait, irq, softirq = ticks
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def fmt(v, digits, empty="-"):
    return empty if v is None else f"{v:.{digits}f}"


def split_cells(line):
    return [c.strip() for c in re.split(r"[│┆|]", line)[1:-1]]


def parse_summary(text):
    """civicload's summary table: the TOTAL row, keyed by the header's column names."""
    header, total = None, None
    for line in text.splitlines():
        cells = split_cells(line)
        if not cells:
            continue
        if "fetched" in cells and "created" in cells:
            header = cells
        elif cells[0].startswith("TOTAL"):
            total = cells
    if not header or not total:
        return {}
    return dict(zip(header, total))


def parse_phases(text):
    """civicload's wall time by phase: the load phase (start to last commit), then the
    steps of the search preparation it prints (`Vectorized ... in N s`, index builds,
    VACUUM / ANALYZE, the stats view refresh)."""
    phases = []
    m = re.search(r"(?i)load phase[^0-9\n]*([0-9.]+) s", text)
    if m:
        phases.append(("load", float(m.group(1))))
    sums = {"vectorize": 0.0, "index": 0.0, "vacuum/analyze": 0.0, "stats view": 0.0}
    for line in text.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        v = re.match(r"Vectorized [0-9,]+ pages in ([0-9.]+) s", line)
        if v:
            sums["vectorize"] += float(v.group(1))
            continue
        step = re.match(r"(search index|REINDEX|VACUUM|REFRESH MATERIALIZED VIEW)\b.*?\s([0-9.]+) s\b", line)
        if step:
            kind = {"search index": "index", "REINDEX": "index", "VACUUM": "vacuum/analyze", "REFRESH MATERIALIZED VIEW": "stats view"}[step.group(1)]
            sums[kind] += float(step.group(2))
    if phases or any(sums.values()):
        phases += [(k, v) for k, v in sums.items()]
    return phases


def parse_stages(text):
    """`Stage time summed over jobs: fetch X s, transform Y s, ... (bottleneck: NAME)`:
    every `name N s` pair, whatever the stages are."""
    for line in text.splitlines():
        if line.startswith("Stage time"):
            body = line.split(":", 1)[1]
            pairs = [(m.group(1), float(m.group(2))) for m in re.finditer(r"([A-Za-z][\w-]*) ([0-9.]+) s\b", body)]
            m = re.search(r"bottleneck: ([^)]+)\)", line)
            return pairs, m.group(1).strip() if m else (max(pairs, key=lambda p: p[1])[0] if pairs else "-")
    return [], "-"


def corpus_text_bytes(corpus):
    """Sum of the UTF-8 bytes of every page's text (cached in the corpus directory)."""
    cache = os.path.join(corpus, "bench-stats.json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    total, rows = 0, 0
    dbs = os.path.join(corpus, "dbs")
    for name in sorted(os.listdir(dbs)):
        if not name.endswith(".db"):
            continue
        db = sqlite3.connect(f"file:{os.path.join(dbs, name)}?mode=ro", uri=True)
        for table in ("agendas", "minutes"):
            n, b = db.execute(f"SELECT count(*), coalesce(sum(length(CAST(text AS BLOB))), 0) FROM [{table}]").fetchone()
            rows += n
            total += b
        db.close()
    stats = {"rows": rows, "text_bytes": total}
    with open(cache, "w") as f:
        json.dump(stats, f)
    return stats


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--source-url", required=True)
    ap.add_argument("--civicload", required=True)
    ap.add_argument("--ceiling", required=True)
    ap.add_argument("--dlt-python", required=True)
    ap.add_argument("--only", default="a,b,c,d")
    ap.add_argument("--db-prefix", default="bench_")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--results-csv", default="bench-results/bench.csv")
    ap.add_argument("--scratch", default="bench-results/tmp")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--keep-dbs", action="store_true")
    ap.add_argument("--civicload-args", default="")
    args = ap.parse_args()
    args.here = os.path.dirname(os.path.abspath(__file__))
    args.only = [k.strip() for k in args.only.split(",") if k.strip()]
    bad = [k for k in args.only if k not in NAMES]
    if bad:
        ap.error(f"--only takes a,b,c,d,e,f; got {bad}")
    stats = corpus_text_bytes(args.corpus)
    if stats["rows"] != args.pages:
        log(f"note: the corpus holds {stats['rows']} rows (asked for {args.pages}); expecting {stats['rows']}")
        args.pages = stats["rows"]
    args.text_bytes = stats["text_bytes"]
    with open("/proc/meminfo") as f:
        mem_gb = int(f.readline().split()[1]) / 1024 / 1024
    args.machine = f"nproc={len(os.sched_getaffinity(0))} ram={mem_gb:.0f}GB"
    Bench(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

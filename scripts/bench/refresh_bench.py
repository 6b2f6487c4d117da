#!/usr/bin/env python3
"""The refresh benchmark (issue 15), driven by scripts/bench-refresh.sh.

On one corpus, server and database, one after the other:
  1. the id routes: bytes and requests to read every table's ids by the streamed CSV,
     keyset `_shape=arrayfirst` pages and keyset object pages;
  2. a full backfill (the initial load) and a second full pass over it;
  3. `refresh --subdomain all` with nothing changed;
  4. the application's incremental re-read (rows with date within +-180 days of --today,
     every column, keyset pages), for reference: it misses older changes and deletions;
  5. 1% of the pages changed upstream (fixtures/mutate.py: 60% re-OCR, 20% deleted, 20%
     added, in every municipality of >= 100 pages), then refresh again (must end verified)
     and the +-180-day re-read again;
  6. webhook-to-verified: `serve`, a municipality of ~10k pages, N times: 1% of it changes
     upstream, one webhook, the time until both its jobs have a verified refresh.
Bytes are response body bytes as civicload counts them (backfill_jobs.source_bytes,
refresh_runs.source_bytes), or as this script reads them for (1) and (4).
"""
import argparse, csv, json, os, signal, socket, statistics, subprocess, sys, time
import urllib.request
from datetime import date, timedelta


def say(*a):
    print("bench-refresh:", *a, file=sys.stderr, flush=True)


PGHOST = os.environ.get("BENCH_PGHOST", "/var/run/postgresql")
PGPORT = os.environ.get("BENCH_PGPORT", "5432")


def psql(db, q):
    out = subprocess.run(["psql", "-h", PGHOST, "-p", PGPORT, "-d", db, "-qAtc", q],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def run(cmd, env=None):
    t = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.monotonic() - t
    if p.returncode != 0:
        say("FAILED:", " ".join(cmd), "\n", p.stdout[-3000:], p.stderr[-3000:])
        sys.exit(1)
    return wall, p.stdout


def get(url):
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def id_routes(base, subs):
    """(bytes, requests) per route over every table."""
    res = {"csv_stream": [0, 0, 0.0], "keyset_arrayfirst": [0, 0, 0.0], "keyset_objects": [0, 0, 0.0]}
    for sub in subs:
        for t in ("agendas", "minutes"):
            url = f"{base}/{sub}/meetings/{t}"
            info = json.loads(get(f"{url}.json?_size=1&_extra=columns"))
            nocol = "".join(f"&_nocol={c}" for c in info["columns"] if c != "id")
            t = time.monotonic()
            body = get(f"{url}.csv?_stream=on&_sort=id{nocol}")
            res["csv_stream"][0] += len(body); res["csv_stream"][1] += 1
            res["csv_stream"][2] += time.monotonic() - t
            for shape, key in (("arrayfirst", "keyset_arrayfirst"), ("objects", "keyset_objects")):
                after = None
                while True:
                    q = f"{url}.json?_size=1000&_sort=id&_col=id&_shape={shape}"
                    if after:
                        q += f"&id__gt={after}"
                    t = time.monotonic()
                    body = get(q)
                    res[key][0] += len(body); res[key][1] += 1
                    res[key][2] += time.monotonic() - t
                    rows = json.loads(body)
                    if shape == "objects":
                        rows = [r["id"] for r in rows["rows"]] if isinstance(rows, dict) else [r["id"] for r in rows]
                    ids = [r for r in rows if r]
                    if not ids:
                        break
                    after = ids[-1]
    return res


def reread_180(base, subs, today):
    """The application's incremental refresh: every column of the rows dated within
    +-180 days, keyset pages. (wall s, bytes, requests, rows)."""
    lo, hi = (today - timedelta(days=180)).isoformat(), (today + timedelta(days=180)).isoformat()
    t = time.monotonic()
    b = n = rows = 0
    for sub in subs:
        for tb in ("agendas", "minutes"):
            after = None
            while True:
                q = (f"{base}/{sub}/meetings/{tb}.json?_size=1000&_sort=id&_shape=objects"
                     f"&date__gte={lo}&date__lte={hi}")
                if after:
                    q += f"&id__gt={after}"
                body = get(q)
                b += len(body); n += 1
                page = json.loads(body)
                rows += len(page["rows"])
                if not page.get("next") or not page["rows"]:
                    break
                after = page["rows"][-1]["id"]
    return time.monotonic() - t, b, n, rows


def spent_backfill(db):
    v = psql(db, "SELECT coalesce(sum(source_bytes),0), coalesce(sum(source_requests),0) FROM backfill_jobs")
    return tuple(int(x) for x in v.split("|"))


def spent_runs(db, after_id):
    v = psql(db, f"SELECT coalesce(sum(source_bytes),0), coalesce(sum(source_requests),0), count(*), "
                 f"count(*) FILTER (WHERE status = 'verified'), coalesce(max(id), {after_id}) "
                 f"FROM refresh_runs WHERE id > {after_id}")
    return tuple(int(x) for x in v.split("|"))


def mutate_share(corpus, share, seed, only=None):
    s = json.load(open(os.path.join(corpus, "summary.json")))
    changed = 0
    for sub, m in sorted(s["municipalities"].items()):
        if only and sub != only:
            continue
        if m["pages"] < 100:
            continue
        n = max(1, round(m["pages"] * share))
        re_, de, ad = round(n * 0.6), round(n * 0.2), n - round(n * 0.6) - round(n * 0.2)
        subprocess.run([sys.executable, "fixtures/mutate.py", corpus, "--subdomain", sub,
                        "--reocr", str(re_), "--delete", str(de), "--add", str(ad),
                        "--seed", str(seed)], check=True, capture_output=True)
        changed += re_ + de + ad
    return changed


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def webhook_latency(a, db, env, corpus, rounds):
    s = json.load(open(os.path.join(corpus, "summary.json")))
    # The smallest municipality of at least 10k pages (else the closest to 10k).
    big = [k for k, m in s["municipalities"].items() if m["pages"] >= 10_000]
    sub = (min(big, key=lambda k: s["municipalities"][k]["pages"]) if big else
           min(s["municipalities"], key=lambda k: abs(s["municipalities"][k]["pages"] - 10_000)))
    pages = s["municipalities"][sub]["pages"]
    port = free_port()
    secret = "bench-secret"
    senv = dict(env, CIVICLOAD_WEBHOOK_SECRET=secret)
    log = open(os.path.join(a.scratch, "serve.log"), "w")
    proc = subprocess.Popen([a.civicload, "serve", "--listen", f"127.0.0.1:{port}"], env=senv,
                            stdout=log, stderr=log)
    try:
        for _ in range(100):
            try:
                get(f"http://127.0.0.1:{port}/healthz"); break
            except Exception:
                time.sleep(0.1)
        lat = []
        for i in range(rounds):
            mutate_share(corpus, 0.01, 1000 + i, only=sub)
            last = int(psql(db, "SELECT coalesce(max(id), 0) FROM refresh_runs"))
            req = urllib.request.Request(f"http://127.0.0.1:{port}/munis/api/update/{sub}/",
                                         data=json.dumps({"name": sub}).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {secret}",
                                                  "Content-Type": "application/json"})
            t = time.monotonic()
            urllib.request.urlopen(req, timeout=30).read()
            while True:
                v = int(psql(db, f"SELECT count(*) FROM refresh_runs r JOIN backfill_jobs j ON j.id = r.job_id "
                                 f"JOIN municipalities m ON m.id = j.municipality_id "
                                 f"WHERE r.id > {last} AND m.subdomain = '{sub}' AND r.status = 'verified'"))
                if v >= 2:
                    break
                if time.monotonic() - t > 120:
                    say("webhook round", i, "not verified within 120 s"); sys.exit(1)
                time.sleep(0.05)
            lat.append(time.monotonic() - t)
        return sub, pages, lat
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)


def pct(xs, p):
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    f = int(k)
    return xs[f] if f + 1 >= len(xs) else xs[f] + (xs[f + 1] - xs[f]) * (k - f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--civicload", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--source-url", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--scratch", required=True)
    ap.add_argument("--today", default="2026-06-30")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--results-csv", required=True)
    ap.add_argument("--commit", default="unknown")
    a = ap.parse_args()
    os.makedirs(a.scratch, exist_ok=True)
    base = a.source_url.split("/{subdomain}")[0]
    today = date.fromisoformat(a.today)
    db = a.db
    subprocess.run(["psql", "-h", PGHOST, "-p", PGPORT, "-d", "postgres", "-qc",
                    f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'], check=True)
    env = dict(os.environ, DATABASE_URL=f"postgres:///{db}?host={PGHOST}&port={PGPORT}",
               CIVICLOAD_SOURCE_URL=a.source_url, RUST_LOG="warn")
    cl = [a.civicload]
    summary = json.load(open(os.path.join(a.corpus, "summary.json")))
    subs = sorted(summary["municipalities"])
    total = summary["totals"]["valid"]
    rows = []

    say("id routes over every table ...")
    routes = id_routes(base, subs)
    run(cl + ["municipalities", "sync", "--from", os.path.join(a.corpus, "sites.csv")], env)
    say(f"backfill of {total} pages ...")
    w, _ = run(cl + ["backfill", "--subdomain", "all"], env)
    b, r = spent_backfill(db)
    rows.append(("full backfill (initial load)", w, b, r))
    say("second full backfill pass ...")
    w, _ = run(cl + ["backfill", "--subdomain", "all"], env)
    b2, r2 = spent_backfill(db)
    rows.append(("full backfill pass (rerun)", w, b2, r2))
    full_bytes = b2
    last = 0
    say("refresh, nothing changed ...")
    w, _ = run(cl + ["refresh", "--subdomain", "all"], env)
    rb, rr, _, _, last = spent_runs(db, last)
    rows.append(("refresh, unchanged", w, rb, rr))
    say("+-180-day re-read ...")
    w, bb, rq, n180 = reread_180(base, subs, today)
    rows.append((f"app +-180-day re-read ({n180} rows)", w, bb, rq))
    say("1% of pages changed upstream ...")
    changed = mutate_share(a.corpus, 0.01, 77)
    w, _ = run(cl + ["refresh", "--subdomain", "all"], env)
    rb, rr, runs, verified, last = spent_runs(db, last)
    assert runs == verified, f"{runs - verified} refreshes not verified"
    rows.append((f"refresh, 1% changed ({changed} pages)", w, rb, rr))
    w, bb, rq, n180 = reread_180(base, subs, today)
    rows.append((f"app +-180-day re-read, 1% changed ({n180} rows)", w, bb, rq))
    say(f"webhook-to-verified, {a.rounds} rounds ...")
    sub, pages, lat = webhook_latency(a, db, env, a.corpus, a.rounds)

    out = [f"corpus {total} pages, {len(subs)} municipalities; commit {a.commit}", "",
           "| run | wall s | bytes | requests | bytes vs full pass |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, w, b, r in rows:
        out.append(f"| {name} | {w:.1f} | {b:,} | {r:,} | {b * 100 / full_bytes:.2f}% |")
    out += ["", "| id route (every table) | bytes | requests | source time s |", "| --- | ---: | ---: | ---: |"]
    for k, (b, r, t) in routes.items():
        out.append(f"| {k} | {b:,} | {r:,} | {t:.1f} |")
    p50, p95 = pct(lat, 0.5), pct(lat, 0.95)
    out += ["", f"webhook-to-verified, {sub} ({pages} pages), 1% changed per round, {len(lat)} rounds: "
                f"p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(lat):.2f} s"]
    print("\n".join(out))
    new = not os.path.exists(a.results_csv)
    with open(a.results_csv, "a", newline="") as f:
        wr = csv.writer(f)
        if new:
            wr.writerow(["when", "commit", "pages", "run", "wall_s", "bytes", "requests", "share_of_full_pass"])
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for name, w, b, r in rows:
            wr.writerow([when, a.commit, total, name, f"{w:.1f}", b, r, f"{b / full_bytes:.4f}"])
        wr.writerow([when, a.commit, total, f"webhook-to-verified p50/p95 s ({pages}-page municipality)",
                     f"{p50:.2f}/{p95:.2f}", "", "", ""])


if __name__ == "__main__":
    main()

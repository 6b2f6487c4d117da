"""A larger corpus from a generated one, without copying its pages: K copies of every
municipality, copy 1 under its own name and copy i (2..K) as `<city>-copy<i>.<state>`.

    python3 scripts/bench/replicate_corpus.py SRC DST K

DST/dbs/ holds hard links to SRC's SQLite files (Datasette refuses two symbolic links to
one file), so the copies cost no disk when DST is on SRC's file system; the
sites table (sites.db, sites.csv, sites.json), datasette.yaml and summary.json list every
copy. Served by scripts/fixture-server.sh like any generated corpus.

What it is good for: the size of the database and its indexes (scripts/bench-search.sh
--copies, when generating N x K pages would not fit the disk). What it is not: a new
vocabulary. Every page's text appears K times, so a term's or a phrase's match count is K
times the source corpus's, and the top results by date hold K pages of each date.
"""
import csv
import json
import os
import shutil
import sqlite3
import sys


def copy_name(subdomain, i):
    if i == 1:
        return subdomain
    city, _, state = subdomain.rpartition(".")
    return f"{city}-copy{i}.{state}"


def main():
    if len(sys.argv) != 4 or not sys.argv[3].isdigit() or int(sys.argv[3]) < 2:
        sys.exit("usage: replicate_corpus.py SRC DST K   (K >= 2 copies)")
    src, dst, k = os.path.abspath(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    summary = json.load(open(os.path.join(src, "summary.json")))
    if summary["totals"].get("bad"):
        sys.exit(f"{src} holds {summary['totals']['bad']} bad rows, which the copies would not "
                 "account for: replicate a corpus generated without bad rows (generate.py's default)")
    sites = sqlite3.connect(os.path.join(src, "sites.db"))
    sites.row_factory = sqlite3.Row
    rows = [dict(r) for r in sites.execute("SELECT * FROM sites ORDER BY subdomain")]
    columns = list(rows[0].keys()) if rows else []
    with open(os.path.join(src, "datasette.yaml")) as f:  # JSON after its comment lines
        config = json.loads("".join(line for line in f if not line.startswith("#")))

    tmp = dst.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "dbs"))
    out_rows, out_munis, out_dbs = [], {}, {}
    for i in range(1, k + 1):
        for r in rows:
            sub = r["subdomain"]
            name = copy_name(sub, i)
            db = os.path.join(src, "dbs", sub + ".db")
            if os.path.exists(db):
                link = os.path.join(tmp, "dbs", name + ".db")
                try:
                    os.link(db, link)
                except OSError:  # another file system: a real copy
                    shutil.copyfile(db, link)
            row = dict(r, subdomain=name)
            if i > 1:
                row["name"] = f"{r['name']} (copy {i})"
            out_rows.append(row)
            if sub in summary["municipalities"]:
                out_munis[name] = dict(summary["municipalities"][sub], name=row["name"])
            if sub in config.get("databases", {}):
                out_dbs[name] = config["databases"][sub]

    out = sqlite3.connect(os.path.join(tmp, "sites.db"))
    schema = sites.execute("SELECT sql FROM sqlite_master WHERE name = 'sites'").fetchone()[0]
    out.execute(schema)
    out.executemany(
        f"INSERT INTO sites ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",
        [tuple(r[c] for c in columns) for r in out_rows],
    )
    out.commit()
    out.close()
    with open(os.path.join(tmp, "sites.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(out_rows)
    with open(os.path.join(tmp, "sites.json"), "w") as f:
        json.dump(out_rows, f, indent=1)
    config["databases"] = out_dbs
    with open(os.path.join(tmp, "datasette.yaml"), "w") as f:
        f.write("# scripts/bench/replicate_corpus.py: %d copies of %s (JSON, valid YAML)\n" % (k, src))
        json.dump(config, f, indent=1)
    totals = dict(summary["totals"])
    for key in ("municipalities", "rows", "valid", "bad", "agendas", "minutes"):
        if isinstance(totals.get(key), int):
            totals[key] *= k
    totals["empty_municipalities"] = [
        copy_name(s, i) for i in range(1, k + 1) for s in summary["totals"].get("empty_municipalities", [])
    ]
    summary.update(totals=totals, municipalities=out_munis, replicated_from=src, copies=k)
    with open(os.path.join(tmp, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    shutil.rmtree(dst, ignore_errors=True)
    os.rename(tmp, dst)
    print(f"{dst}: {k} copies of {len(rows)} municipalities, {totals['valid']:,} pages")


if __name__ == "__main__":
    main()

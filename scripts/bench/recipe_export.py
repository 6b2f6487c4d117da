"""Untimed preparation for contender (a) of scripts/bench.sh: the corpus as CSV files
shaped like civicload's tables, ready for `psql \\copy`.

Reads the generated SQLite files directly (streaming, one municipality at a time, so 1M
pages need no more memory than 200k) and writes, into OUT:
  municipalities.csv  id, subdomain, name, state, country, kind, pages
  documents.csv       id, municipality_id, meeting_name, meeting_date, document_type
  pages.csv           document_id, municipality_id, source_id, page_number, text,
                      page_image, entities, votes
  export.json         row counts and text bytes (written last: its presence means done)

The rows are the ones civicload stores for a clean corpus: a document per (municipality,
document type, meeting, date), entities/votes as JSON text (blank -> NULL, like
civicload's transform). CSV quoting: every string is quoted, NULL is an unquoted empty
field, which is how PostgreSQL's CSV format tells '' from NULL.
"""

import argparse
import json
import os
import sqlite3
import sys


def blank_to_none(v):
    return None if v is None or not str(v).strip() else v


def field(v):
    # Python's csv module quotes None like '' under QUOTE_NONNUMERIC (3.11 has no
    # QUOTE_NOTNULL), so the fields are written by hand.
    if v is None:
        return ""
    if isinstance(v, int):
        return str(v)
    return '"' + str(v).replace('"', '""') + '"'


class Writer:
    def __init__(self, path):
        self.f = open(path, "w", encoding="utf-8", newline="")

    def writerow(self, values):
        self.f.write(",".join(field(v) for v in values) + "\n")

    def close(self):
        self.f.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", help="a fixtures/generate.py output directory")
    ap.add_argument("out", help="directory for the CSV files")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    done = os.path.join(args.out, "export.json")
    if os.path.exists(done):
        os.remove(done)

    sites = sqlite3.connect(f"file:{os.path.join(args.corpus, 'sites.db')}?mode=ro", uri=True)
    rows = sites.execute(
        "SELECT subdomain, name, state, country, kind, pages FROM sites ORDER BY subdomain"
    ).fetchall()
    sites.close()

    wm = Writer(os.path.join(args.out, "municipalities.csv"))
    wd = Writer(os.path.join(args.out, "documents.csv"))
    wp = Writer(os.path.join(args.out, "pages.csv"))
    doc_id = 0
    pages = 0
    text_bytes = 0
    for mid, (sub, name, state, country, kind, n) in enumerate(rows, start=1):
        wm.writerow([mid, sub, name, state, country, kind, n])
        path = os.path.join(args.corpus, "dbs", f"{sub}.db")
        if not os.path.exists(path):
            continue
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        for table, doc_type in (("agendas", "agenda"), ("minutes", "minutes")):
            cols = {r[1] for r in db.execute(f"PRAGMA table_info([{table}])")}
            ent = "entities_json" if "entities_json" in cols else "NULL"
            vot = "votes_json" if "votes_json" in cols else "NULL"
            docs = {}
            for sid, meeting, date, page, text, image, e, v in db.execute(
                f"SELECT id, meeting, date, page, text, page_image, {ent}, {vot} FROM [{table}]"
            ):
                key = (meeting, date)
                did = docs.get(key)
                if did is None:
                    doc_id += 1
                    did = docs[key] = doc_id
                    wd.writerow([did, mid, meeting, date, doc_type])
                text = text or ""
                wp.writerow(
                    [did, mid, sid, page, text, image, blank_to_none(e), blank_to_none(v)]
                )
                pages += 1
                text_bytes += len(text.encode("utf-8"))
        db.close()
    for w in (wm, wd, wp):
        w.close()
    summary = {
        "municipalities": len(rows),
        "documents": doc_id,
        "pages": pages,
        "text_bytes": text_bytes,
        "csv_bytes": os.path.getsize(os.path.join(args.out, "pages.csv")),
    }
    with open(done, "w") as f:
        json.dump(summary, f)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

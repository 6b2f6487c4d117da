"""Contender (c) of scripts/bench.sh: dlt's REST API source loading civic.band into PostgreSQL.

What a dlt user would write for this API: one `rest_api` resource per (municipality,
table), rows under `rows`, the `next` token passed back as `_next` (cursor paginator),
`_sort=id` so the keyset is on the unique id (the default date sort loses rows: see
fixtures/README.md, "pagination trap"), `_size=1000`, write_disposition merge on primary
key `id`. Every municipality's agendas go to table `agendas`, minutes to `minutes`, with a
`subdomain` column added. Resources are extracted in parallel (EXTRACT__WORKERS, 4 by
default: the concurrency civicload uses).

Runs inside .venv-bench (dlt[postgres]); prints one `dlt_result {json}` line at the end.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request


def sites(base):
    """Every subdomain in the source's sites table (keyset on subdomain)."""
    out, after = [], None
    while True:
        url = f"{base}/sites/sites.json?_size=1000&_sort=subdomain&_col=subdomain"
        if after:
            url += "&subdomain__gt=" + urllib.request.quote(after)
        with urllib.request.urlopen(url, timeout=120) as r:
            page = json.load(r)
        rows = page["rows"]
        out.extend(r["subdomain"] for r in rows)
        if not rows or not page.get("next"):
            return out
        after = rows[-1]["subdomain"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="http://127.0.0.1:PORT")
    ap.add_argument("--database", required=True)
    ap.add_argument("--host", default="/var/run/postgresql")
    ap.add_argument("--user", default=os.environ.get("USER") or "root")
    ap.add_argument("--workdir", required=True, help="dlt pipelines_dir (scratch)")
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()

    os.environ.setdefault("EXTRACT__WORKERS", str(args.workers))
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

    import dlt
    from dlt.sources.rest_api import rest_api_source

    subs = sites(args.base)
    resources = []
    for sub in subs:
        for table in ("agendas", "minutes"):
            resources.append(
                {
                    "name": f"{sub}__{table}".replace(".", "_").replace("-", "_"),
                    "table_name": table,
                    "primary_key": "id",
                    "write_disposition": "merge",
                    "endpoint": {
                        "path": f"{sub}/meetings/{table}.json",
                        "params": {"_size": 1000, "_sort": "id"},
                        "data_selector": "rows",
                        "paginator": {
                            "type": "cursor",
                            "cursor_path": "next",
                            "cursor_param": "_next",
                        },
                    },
                    "processing_steps": [
                        {"map": (lambda s: (lambda row: {**row, "subdomain": s}))(sub)}
                    ],
                }
            )
    source = rest_api_source(
        {"client": {"base_url": args.base + "/"}, "resources": resources},
        name="civicband",
        parallelized=True,
    )
    # The local server is reached through its unix socket (peer authentication): libpq
    # takes the socket directory from the `host` query parameter. dlt insists on a
    # password; peer authentication never asks for it, so the placeholder is never sent.
    credentials = (
        f"postgresql://{args.user}:peer-auth-unused@localhost:5432/{args.database}"
        f"?host={urllib.request.quote(args.host, safe='')}"
    )
    pipeline = dlt.pipeline(
        pipeline_name="civicband_bench",
        destination=dlt.destinations.postgres(credentials=credentials),
        dataset_name="civicband",
        pipelines_dir=args.workdir,
        progress=None,
    )
    started = time.monotonic()
    info = pipeline.run(source)
    wall = time.monotonic() - started
    failed = info.has_failed_jobs
    print(
        "dlt_result "
        + json.dumps(
            {
                "wall_s": round(wall, 3),
                "resources": len(resources),
                "dataset": "civicband",
                "failed_jobs": bool(failed),
                "dlt_version": dlt.__version__,
            }
        ),
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# The main job, end to end: set up what is missing, generate a civic.band-like corpus,
# serve it with a real Datasette 1.0a28 configured like civic.band, sync the municipality
# list, backfill every municipality into the local PostgreSQL, print the summary and status.
#
#   scripts/demo.sh [--pages N]        (default 50000 pages)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pages=50000
while [ $# -gt 0 ]; do
    case "$1" in
        --pages) pages="$2"; shift 2 ;;
        *) echo "usage: $0 [--pages N]" >&2; exit 2 ;;
    esac
done

scripts/setup.sh
echo "demo: building civicload (release)"
cargo build --release --locked --quiet
bin=target/release/civicload

corpus="fixtures/generated/demo-$pages"
if [ ! -f "$corpus/summary.json" ]; then
    echo "demo: generating a corpus of $pages pages in $corpus"
    rm -rf "$corpus.tmp"
    python3 fixtures/generate.py --out "$corpus.tmp" --pages "$pages" --bad-rows 12
    mv "$corpus.tmp" "$corpus"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
template=$(scripts/fixture-server.sh start "$corpus" "$port" | tail -n 1)
trap 'scripts/fixture-server.sh stop "$corpus" >/dev/null 2>&1 || true' EXIT

export CIVICLOAD_SOURCE_URL="$template"
echo "demo: source $template"
"$bin" municipalities sync --from "http://127.0.0.1:$port/sites/sites.json"
set +e
"$bin" backfill --subdomain all --concurrency 4
code=$?
set -e
"$bin" status
echo "demo: backfill exited with status $code (0 = every job completed and verified)."
echo "demo: the pages are in the local database 'civicload' (psql civicload)."
exit $code

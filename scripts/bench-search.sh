#!/usr/bin/env bash
# Search benchmark (issue 16): builds a database of N generated pages, then times the
# application's search (`civicload_search` through `civicload search-bench`) for every
# query class in both orders.
#
#   scripts/bench-search.sh --pages N [--copies K] [--seed S] [--vocabulary civic|large]
#                           [--runs R] [--more] [--port P] [--reuse] [--no-build]
#
#   --pages N   corpus size (fixtures/generate.py, cached in fixtures/generated/bench-N,
#               shared with scripts/bench.sh)
#   --copies K  serve the N-page corpus K times, under K sets of municipality names
#               (scripts/bench/replicate_corpus.py: hard links, no extra disk), and load N x K
#               pages: for sizes whose generated corpus would not fit beside the database.
#               Every text is then K times in it (K times the matches of each query)
#   --seed S    another generated corpus (fixtures/generated/bench-N-seed-S)
#   --vocabulary large  a corpus with a large Zipf vocabulary and OCR-like errors
#               (fixtures/generated/bench-N-vocab-large, database bench_search_N_large)
#   --runs R    timed runs per class and order, after one warm-up run (default 20)
#   --more      also the other shapes of scripts/bench/search_suite.py (MORE)
#   --reuse     keep the database of an earlier run when it holds N pages (no reload)
#   --no-build  use target/release/civicload as it is
#
# The database (bench_search_N[_sS]) is loaded by civicload itself: `municipalities sync`,
# then `backfill --subdomain all` from the corpus served by Datasette 1.0a28, which also
# builds the indexes, vacuums and analyzes; the load's summary is printed. The suite
# (scripts/bench/search_suite.py) prints a Markdown table (p50 / p95 / max per class and
# order, rows, capped match count, the plan the function chose) and appends to
# bench-results/search.csv. The database is kept for later runs (--reuse); drop it with
# `dropdb bench_search_N` (`bench_search_NxK` with --copies).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PAGES=""
SEED=1
VOCAB=civic
COPIES=1
RUNS=20
PORT="${BENCH_SEARCH_PORT:-8893}"
REUSE=0
MORE=()
BUILD=1
usage() { sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --pages) PAGES="${2:?}"; shift 2 ;;
        --copies) COPIES="${2:?}"; shift 2 ;;
        --seed) SEED="${2:?}"; shift 2 ;;
        --vocabulary) VOCAB="${2:?}"; shift 2 ;;
        --runs) RUNS="${2:?}"; shift 2 ;;
        --port) PORT="${2:?}"; shift 2 ;;
        --reuse) REUSE=1; shift ;;
        --more) MORE=(--more); shift ;;
        --no-build) BUILD=0; shift ;;
        -h|--help) usage ;;
        *) echo "bench-search: unknown argument $1" >&2; usage ;;
    esac
done
[[ "$PAGES" =~ ^[0-9]+$ ]] && [ "$PAGES" -gt 0 ] || { echo "bench-search: --pages takes a positive number" >&2; usage; }
[[ "$SEED" =~ ^[0-9]+$ && "$RUNS" =~ ^[0-9]+$ && "$COPIES" =~ ^[1-9][0-9]*$ ]] || { echo "bench-search: --seed, --runs and --copies take numbers" >&2; exit 2; }
[[ "$VOCAB" =~ ^(civic|large)$ ]] || { echo "bench-search: --vocabulary takes civic or large" >&2; exit 2; }
say() { echo "bench-search: $*" >&2; }

[ -x .venv/bin/datasette ] || { say "no .venv: running scripts/setup.sh"; scripts/setup.sh; }
if [ "$BUILD" = 1 ]; then
    say "building civicload (release) ..."
    cargo build --release --quiet --bin civicload
fi
CIVICLOAD="$ROOT/target/release/civicload"

CORPUS="$ROOT/fixtures/generated/bench-$PAGES"
DB="bench_search_$PAGES"
if [ "$SEED" != 1 ]; then CORPUS="$CORPUS-seed-$SEED"; DB="${DB}_s$SEED"; fi
if [ "$VOCAB" != civic ]; then CORPUS="$CORPUS-vocab-$VOCAB"; DB="${DB}_$VOCAB"; fi
if [ -f "$CORPUS/summary.json" ] && [ -f "$CORPUS/sites.db" ]; then
    say "reusing the corpus in $CORPUS"
else
    say "generating $PAGES pages (seed $SEED, $VOCAB vocabulary) into $CORPUS ..."
    rm -rf "$CORPUS"
    python3 fixtures/generate.py --out "$CORPUS" --pages "$PAGES" --seed "$SEED" --vocabulary "$VOCAB" >&2
fi
if [ "$COPIES" -gt 1 ]; then
    BASE="$CORPUS"
    CORPUS="${BASE}-x$COPIES"
    DB="${DB}x$COPIES"
    PAGES=$((PAGES * COPIES))
    say "serving $BASE $COPIES times ($PAGES pages) from $CORPUS"
    python3 scripts/bench/replicate_corpus.py "$BASE" "$CORPUS" "$COPIES" >&2
fi
URL="postgres:///$DB?host=/var/run/postgresql"
mkdir -p "$ROOT/bench-results/tmp"
LARGEST="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["totals"]["largest"])' "$CORPUS/summary.json")"

held=0
if [ "$REUSE" = 1 ] && psql -h /var/run/postgresql -d "$DB" -Atc 'SELECT 1' >/dev/null 2>&1; then
    held="$(psql -h /var/run/postgresql -d "$DB" -Atc 'SELECT count(*) FROM meeting_pages')"
fi
if [ "$held" = "$PAGES" ]; then
    say "reusing database $DB ($held pages)"
else
    if scripts/fixture-server.sh status "$CORPUS" >/dev/null 2>&1; then scripts/fixture-server.sh stop "$CORPUS"; fi
    TEMPLATE="$(scripts/fixture-server.sh start "$CORPUS" "$PORT" | tail -n 1)"
    trap 'scripts/fixture-server.sh stop "$CORPUS"' EXIT
    psql -h /var/run/postgresql -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
    "$CIVICLOAD" --database-url "$URL" municipalities sync --from "$CORPUS/sites.csv" >/dev/null
    say "loading $PAGES pages into $DB (civicload backfill) ..."
    /usr/bin/time -v "$CIVICLOAD" --database-url "$URL" --source-url "$TEMPLATE" backfill --subdomain all \
        > "$ROOT/bench-results/tmp/search-load.out" 2> "$ROOT/bench-results/tmp/search-load.time" || {
        say "the load failed: see bench-results/tmp/search-load.out"; exit 1; }
    grep -E "^(search index|Search ready|Load phase|All )" "$ROOT/bench-results/tmp/search-load.out" >&2 || true
    grep -E "Maximum resident|Elapsed" "$ROOT/bench-results/tmp/search-load.time" >&2 || true
    scripts/fixture-server.sh stop "$CORPUS"; trap - EXIT
fi

COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then COMMIT="$COMMIT-dirty"; fi
python3 scripts/bench/search_suite.py --civicload "$CIVICLOAD" --database-url "$URL" \
    --pages "$PAGES" --runs "$RUNS" --municipality "$LARGEST" \
    --csv "$ROOT/bench-results/search.csv" --commit "$COMMIT" "${MORE[@]}"

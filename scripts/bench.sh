#!/usr/bin/env bash
# End-to-end benchmark: civicload against the alternatives on the same corpus, server
# and machine (issue 7).
#
#   scripts/bench.sh [--pages N] [--only a,b,c,d] [--port P] [--keep-dbs]
#
#   a  recipe     the seeds' SQL recipe: psql \copy of CSV exports into civicload's
#                 schema, UPDATE ... SET search_vector = to_tsvector(...), CREATE INDEX gin
#   b  ceiling    the source's ceiling: civicload's fetch stage alone, no database
#                 (examples/source_ceiling.rs, 4 tables at a time like civicload)
#   c  dlt        dlt[postgres] rest_api source, cursor on `next`, _sort=id, merge on id
#                 (scripts/bench/dlt_load.py, in .venv-bench/, installed when missing)
#   d  civicload  `municipalities sync` (untimed), then `backfill --subdomain all` (timed)
#
# Steps: builds civicload and the ceiling example in release once; generates the corpus
# once into fixtures/generated/bench-N (reused when present); serves it with Datasette
# 1.0a28 (scripts/fixture-server.sh); runs the contenders one after the other, each into
# a fresh database (created, measured, checked, sized, dropped); prints the table, the
# civicload stage breakdown and the issue's targets; appends one row per contender to
# bench-results/bench.csv. Logs of every measured process: bench-results/tmp/.
#
# Environment: BENCH_PORT (default 8890), BENCH_DB_PREFIX (default bench_<port>_),
# BENCH_CIVICLOAD_ARGS (extra `backfill` flags for civicload, recorded in the notes).
# The machine is shared: run nothing else heavy meanwhile, and compare ratios within a
# run rather than absolute numbers across runs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PAGES=200000
ONLY="a,b,c,d"
PORT="${BENCH_PORT:-8890}"
KEEP=()
usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --pages) PAGES="${2:?}"; shift 2 ;;
        --pages=*) PAGES="${1#*=}"; shift ;;
        --only) ONLY="${2:?}"; shift 2 ;;
        --only=*) ONLY="${1#*=}"; shift ;;
        --port) PORT="${2:?}"; shift 2 ;;
        --port=*) PORT="${1#*=}"; shift ;;
        --keep-dbs) KEEP=(--keep-dbs); shift ;;
        -h|--help) usage ;;
        *) echo "bench: unknown argument $1" >&2; usage ;;
    esac
done
[[ "$PAGES" =~ ^[0-9]+$ ]] && [ "$PAGES" -gt 0 ] || { echo "bench: --pages takes a positive number" >&2; exit 2; }
[[ "$ONLY" =~ ^[abcd](,[abcd])*$ ]] || { echo "bench: --only takes letters among a,b,c,d (e.g. --only a,d)" >&2; exit 2; }
DB_PREFIX="${BENCH_DB_PREFIX:-bench_${PORT}_}"
say() { echo "bench: $*" >&2; }

[ -x .venv/bin/datasette ] || { say "no .venv: running scripts/setup.sh"; scripts/setup.sh; }
if [ ! -x /usr/bin/time ]; then
    say "installing GNU time (for peak RSS)"
    apt-get install -y -qq time >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
fi

# 1. Build once, in release.
say "building civicload and the source_ceiling example (release) ..."
cargo build --release --quiet --bin civicload --example source_ceiling
CIVICLOAD="$ROOT/target/release/civicload"
CEILING="$ROOT/target/release/examples/source_ceiling"

# 2. The corpus, generated once and cached.
CORPUS="$ROOT/fixtures/generated/bench-$PAGES"
if [ -f "$CORPUS/summary.json" ] && [ -f "$CORPUS/sites.db" ]; then
    say "reusing the corpus in $CORPUS"
else
    say "generating $PAGES pages into $CORPUS (once; cached for later runs) ..."
    rm -rf "$CORPUS"
    python3 fixtures/generate.py --out "$CORPUS" --pages "$PAGES" >&2
fi

# 3. dlt in its own venv, only when it is measured and missing.
DLT_PY="$ROOT/.venv-bench/bin/python"
if [[ "$ONLY" == *c* ]] && ! "$DLT_PY" -c 'import dlt, psycopg2' 2>/dev/null; then
    say "installing dlt[postgres] into .venv-bench/ ..."
    python3 -m venv .venv-bench
    .venv-bench/bin/pip install -q 'dlt[postgres]'
fi

# 4. Serve it; stop the server whatever happens.
if scripts/fixture-server.sh status "$CORPUS" >/dev/null 2>&1; then
    say "a fixture server already serves $CORPUS: restarting it on port $PORT"
    scripts/fixture-server.sh stop "$CORPUS"
fi
TEMPLATE="$(scripts/fixture-server.sh start "$CORPUS" "$PORT" | tail -n 1)"
trap 'scripts/fixture-server.sh stop "$CORPUS"' EXIT

COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then COMMIT="$COMMIT-dirty"; fi

# 5. Measure.
python3 scripts/bench/harness.py \
    --pages "$PAGES" --corpus "$CORPUS" --source-url "$TEMPLATE" \
    --civicload "$CIVICLOAD" --ceiling "$CEILING" --dlt-python "$DLT_PY" \
    --only "$ONLY" --db-prefix "$DB_PREFIX" --commit "$COMMIT" \
    --results-csv "$ROOT/bench-results/bench.csv" --scratch "$ROOT/bench-results/tmp" \
    --civicload-args "${BENCH_CIVICLOAD_ARGS:-}" "${KEEP[@]}"

#!/usr/bin/env bash
# Refresh benchmark (issue 15): what keeping the mirror exact costs, against a full
# backfill pass and the application's +-180-day re-read, on one corpus, server and database.
#
#   scripts/bench-refresh.sh [--pages N] [--seed S] [--rounds R] [--port P] [--debug]
#
# Generates the corpus once (fixtures/generated/bench-N[-seed-S]) and measures on a copy
# (the benchmark changes it upstream with fixtures/mutate.py). Runs, one after the other
# (scripts/bench/refresh_bench.py): the id routes; a full backfill and a second full pass;
# `refresh --subdomain all` unchanged; the +-180-day re-read; 1% of pages changed upstream,
# refresh (verified exact) and the re-read again; webhook-to-verified p50/p95 over R rounds
# for the municipality closest to 10k pages. Prints a table; appends to
# bench-results/refresh.csv. --debug uses the debug build (target/debug) instead of
# building in release.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PAGES=200000; SEED=1; ROUNDS=20; PORT="${BENCH_PORT:-8891}"; PROFILE=release
while [ $# -gt 0 ]; do
    case "$1" in
        --pages) PAGES="${2:?}"; shift 2 ;;
        --seed) SEED="${2:?}"; shift 2 ;;
        --rounds) ROUNDS="${2:?}"; shift 2 ;;
        --port) PORT="${2:?}"; shift 2 ;;
        --debug) PROFILE=debug; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
        *) echo "bench-refresh: unknown argument $1" >&2; exit 2 ;;
    esac
done
say() { echo "bench-refresh: $*" >&2; }
[ -x .venv/bin/datasette ] || { say "no .venv: running scripts/setup.sh"; scripts/setup.sh; }
if [ "$PROFILE" = release ]; then
    say "building civicload (release) ..."
    cargo build --release --quiet --bin civicload
else
    cargo build --quiet --bin civicload
fi
CIVICLOAD="$ROOT/target/$PROFILE/civicload"

CORPUS="$ROOT/fixtures/generated/bench-$PAGES"
[ "$SEED" = 1 ] || CORPUS="$CORPUS-seed-$SEED"
if [ ! -f "$CORPUS/summary.json" ]; then
    say "generating $PAGES pages (seed $SEED) into $CORPUS ..."
    rm -rf "$CORPUS"
    python3 fixtures/generate.py --out "$CORPUS" --pages "$PAGES" --seed "$SEED" >&2
fi
SCRATCH="$ROOT/bench-results/tmp/refresh"
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"
cp -r "$CORPUS" "$SCRATCH/corpus"
rm -f "$SCRATCH/corpus/datasette.pid" "$SCRATCH/corpus/datasette.log"
TEMPLATE="$(scripts/fixture-server.sh start "$SCRATCH/corpus" "$PORT" | tail -n 1)"
trap 'scripts/fixture-server.sh stop "$SCRATCH/corpus"' EXIT
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then COMMIT="$COMMIT-dirty"; fi
[ "$PROFILE" = release ] || COMMIT="$COMMIT-debug"
python3 scripts/bench/refresh_bench.py --civicload "$CIVICLOAD" --corpus "$SCRATCH/corpus" \
    --source-url "$TEMPLATE" --db "bench_refresh_$PORT" --scratch "$SCRATCH" \
    --rounds "$ROUNDS" --results-csv "$ROOT/bench-results/refresh.csv" --commit "$COMMIT"

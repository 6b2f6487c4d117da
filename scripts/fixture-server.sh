#!/usr/bin/env bash
# Serve a generated fixture corpus (fixtures/generate.py) like civic.band, with ONE
# Datasette 1.0a28 process and the fixtures/plugins/civicband.py URL rewriter.
#
#   scripts/fixture-server.sh start DIR PORT   # prints the source-URL template last:
#                                              #   http://127.0.0.1:PORT/{subdomain}/meetings/{table}.json
#   scripts/fixture-server.sh stop DIR         # kills exactly the PID in DIR/datasette.pid
#   scripts/fixture-server.sh status DIR
#
# Databases are opened MUTABLE by default (Datasette opens them ?mode=ro): a change made
# to DIR/dbs/*.db while the server runs (fixtures/mutate.py) is served at once, no
# restart needed. FIXTURE_IMMUTABLE=1 opens them with --immutable instead (SQLite
# immutable=1: slightly less work per request, but the server MUST be restarted after
# any change to a db file, or it may serve stale or inconsistent pages).
# A database file added or removed after start is only seen after a restart.
# Logs: DIR/datasette.log. Needs .venv (scripts/setup.sh).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATASETTE="$ROOT/.venv/bin/datasette"

usage() { echo "usage: $0 start DIR PORT | stop DIR | status DIR" >&2; exit 2; }
die() { echo "fixture-server: ERROR: $*" >&2; exit 1; }

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || usage
[ -d "$dir" ] || die "no such directory: $dir"
dir="$(cd "$dir" && pwd)"
pidfile="$dir/datasette.pid"

running_pid() {
    # Prints the PID from the pidfile if that process is alive and is our datasette.
    [ -f "$pidfile" ] || return 1
    local pid; pid="$(cat "$pidfile")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "datasette" || return 1
    echo "$pid"
}

case "$cmd" in
start)
    port="${3:-}"; [ -n "$port" ] || usage
    [ -x "$DATASETTE" ] || die "$DATASETTE missing: run scripts/setup.sh"
    [ -f "$dir/datasette.yaml" ] && [ -f "$dir/sites.db" ] && [ -f "$dir/summary.json" ] \
        || die "$dir is not a generated corpus (run fixtures/generate.py --out $dir ...)"
    if pid="$(running_pid)"; then
        die "already running in $dir with PID $pid (stop it first)"
    fi
    shopt -s nullglob
    dbs=("$dir"/dbs/*.db)
    shopt -u nullglob
    [ "${#dbs[@]}" -gt 0 ] || die "no databases in $dir/dbs"
    # Each database may hold a few SQLite connections (one per SQL thread): raise the
    # soft open-files limit to the hard limit for hundreds of databases.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    args=()
    if [ "${FIXTURE_IMMUTABLE:-0}" = "1" ]; then
        for f in "${dbs[@]}"; do args+=(--immutable "$f"); done
    else
        args=("${dbs[@]}")
    fi
    # A known non-empty table to probe for readiness.
    probe="$("$ROOT/.venv/bin/python" - "$dir/summary.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
for sub, m in sorted(s["municipalities"].items()):
    for t in ("agendas", "minutes"):
        if m["tables"][t]["rows"] > 0:
            print(f"/{sub}/meetings/{t}.json?_size=1")
            sys.exit(0)
print("/sites/sites.json?_size=1")
EOF
)"
    setsid "$DATASETTE" serve "${args[@]}" "$dir/sites.db" \
        --config "$dir/datasette.yaml" \
        --plugins-dir "$ROOT/fixtures/plugins" \
        --host 127.0.0.1 --port "$port" \
        > "$dir/datasette.log" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$pidfile"
    url="http://127.0.0.1:$port"
    ok=0
    for _ in $(seq 1 120); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$dir/datasette.log" >&2 || true
            rm -f "$pidfile"
            die "datasette exited during start-up (log: $dir/datasette.log)"
        fi
        if curl -fsS -o /dev/null --max-time 5 "$url$probe" 2>/dev/null; then ok=1; break; fi
        sleep 0.5
    done
    if [ "$ok" -ne 1 ]; then
        kill "$pid" 2>/dev/null || true
        rm -f "$pidfile"
        die "datasette did not answer $url$probe within 60 s (log: $dir/datasette.log)"
    fi
    echo "fixture-server: datasette PID $pid serving ${#dbs[@]} municipalities + sites at $url (log: $dir/datasette.log)" >&2
    echo "fixture-server: sites: $url/sites/sites.json" >&2
    echo "$url/{subdomain}/meetings/{table}.json"
    ;;
stop)
    if pid="$(running_pid)"; then
        kill "$pid"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
        echo "fixture-server: stopped PID $pid" >&2
    else
        echo "fixture-server: not running in $dir" >&2
    fi
    rm -f "$pidfile"
    ;;
status)
    if pid="$(running_pid)"; then echo "running PID $pid"; else echo "not running"; exit 1; fi
    ;;
*) usage ;;
esac

#!/usr/bin/env bash
# Prepare this machine for civicload development, tests and CI.
#
# Idempotent: installs / starts / creates only what is missing; prints one line per
# action taken and a final "setup: ready". Safe to run repeatedly, without a terminal
# (CI=true), as root on Debian 12.
#
#   - PostgreSQL 15 server (+ contrib: unaccent), cluster 15/main, started, ready
#   - a PostgreSQL SUPERUSER LOGIN role named like the OS user, and database `civicload`
#     (the Rust program connects via the unix socket in /var/run/postgresql, peer auth)
#   - pgbouncer (for tests/pgbouncer.rs, which runs a private instance of its own; the
#     system service the package may start is stopped)
#   - .venv/ with fixtures/requirements.txt (datasette 1.0a28, moto[server], pyarrow)
#   - checks that cargo exists (does not install Rust)
#   - .gitignore entries for generated files
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PG_VERSION=15
PG_CLUSTER=main
PG_BIN="/usr/lib/postgresql/${PG_VERSION}/bin"
DB_NAME="${CIVICLOAD_SETUP_DB:-civicload}"
OS_USER="$(id -un)"
export DEBIAN_FRONTEND=noninteractive

say() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "not root and no sudo: run as root"
    SUDO=(sudo -n)
fi

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        "${SUDO[@]}" apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    say "installed $*"
}

# Run a command as the postgres OS user.
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        sudo -n -u postgres -- "$@"
    fi
}

# ---------------------------------------------------------------- PostgreSQL 15
# On Debian 12 the contrib modules (unaccent, ...) ship inside postgresql-15;
# `postgresql-contrib` is the metapackage depending on the virtual postgresql-contrib-15.
if [ ! -x "$PG_BIN/postgres" ]; then
    apt_install "postgresql-${PG_VERSION}" postgresql-contrib
fi
if [ ! -f "/usr/share/postgresql/${PG_VERSION}/extension/unaccent.control" ]; then
    apt_install postgresql-contrib
fi

if ! pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {f=1} END {exit !f}'; then
    "${SUDO[@]}" pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >/dev/null
    say "created PostgreSQL cluster ${PG_VERSION}/${PG_CLUSTER}"
fi

cluster_status() {
    pg_lsclusters -h 2>/dev/null | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $4}'
}
PG_PORT="$(pg_lsclusters -h | awk -v v="$PG_VERSION" -v c="$PG_CLUSTER" '$1==v && $2==c {print $3}')"
if [ "$(cluster_status)" != "online" ]; then
    "${SUDO[@]}" pg_ctlcluster "$PG_VERSION" "$PG_CLUSTER" start
    say "started PostgreSQL ${PG_VERSION}/${PG_CLUSTER}"
fi

ready=0
for _ in $(seq 1 60); do
    if pg_isready -q -h /var/run/postgresql -p "$PG_PORT"; then ready=1; break; fi
    sleep 1
done
[ "$ready" -eq 1 ] || die "PostgreSQL ${PG_VERSION}/${PG_CLUSTER} not ready after 60 s (see /var/log/postgresql/postgresql-${PG_VERSION}-${PG_CLUSTER}.log)"

psql_pg() { as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@"; }

if [ "$(psql_pg -tAc "select 1 from pg_roles where rolname = '${OS_USER}'")" != "1" ]; then
    psql_pg -c "create role \"${OS_USER}\" superuser login"
    say "created PostgreSQL role ${OS_USER} (superuser)"
fi
if [ "$(psql_pg -tAc "select 1 from pg_database where datname = '${DB_NAME}'")" != "1" ]; then
    psql_pg -c "create database \"${DB_NAME}\" owner \"${OS_USER}\""
    say "created database ${DB_NAME} owned by ${OS_USER}"
fi

# ---------------------------------------------------------------- PgBouncer
# tests/pgbouncer.rs starts a private pgbouncer (its own ini, user list and loopback port)
# and stops it by its PID. Debian's package may start a system instance on port 6432 (not
# where policy-rc.d forbids it): stop it, nothing here uses it.
if [ ! -x /usr/sbin/pgbouncer ]; then
    apt_install pgbouncer
    if [ -x /etc/init.d/pgbouncer ] && "${SUDO[@]}" /etc/init.d/pgbouncer status >/dev/null 2>&1; then
        "${SUDO[@]}" /etc/init.d/pgbouncer stop >/dev/null 2>&1 || true
        say "stopped the pgbouncer service the package started (the tests run their own)"
    fi
fi

# ---------------------------------------------------------------- Python venv
REQ="fixtures/requirements.txt"
STAMP=".venv/.requirements.sha256"
if [ ! -x .venv/bin/python ]; then
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    python3 -m venv .venv
    say "created .venv"
fi
want="$(sha256sum "$REQ" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ] || [ ! -x .venv/bin/datasette ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r "$REQ"
    echo "$want" > "$STAMP"
    say "installed $REQ into .venv ($(.venv/bin/datasette --version))"
fi

# ---------------------------------------------------------------- Rust
if ! command -v cargo >/dev/null 2>&1; then
    for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
        if [ -x "$d/cargo" ]; then
            die "cargo is in $d but not on PATH: export PATH=\"$d:\$PATH\""
        fi
    done
    die "cargo not found: install a Rust toolchain (https://rustup.rs) and re-run"
fi

# ---------------------------------------------------------------- .gitignore
touch .gitignore
for line in ".venv/" "target/" "fixtures/generated/" "bench-results/tmp/"; do
    if ! grep -qxF "$line" .gitignore; then
        echo "$line" >> .gitignore
        say "added $line to .gitignore"
    fi
done

say "ready"

#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: sets up what is missing (PostgreSQL,
# the Datasette venv), builds once, then runs unit and integration tests against real
# PostgreSQL and a real Datasette 1.0a28. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
# One build for everything; the tests then run against the same artifacts.
cargo test --workspace --locked --no-run
cargo test --workspace --locked --no-fail-fast "$@"

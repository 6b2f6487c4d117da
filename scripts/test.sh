#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: sets up what is missing (PostgreSQL,
# the Datasette venv), checks formatting and lints, builds once, then runs unit and
# integration tests against real PostgreSQL and a real Datasette 1.0a28. Extra arguments
# go to `cargo test`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
# The gates CI enforces before any test runs: formatting, then lints with warnings denied
# (clippy.toml forbids sqlx's own query constructors: see stages/src/store/sql.rs).
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# One build for everything; the tests then run against the same artifacts.
cargo test --workspace --locked --no-run
cargo test --workspace --locked --no-fail-fast "$@"

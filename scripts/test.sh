#!/usr/bin/env bash
# The ONE test command of polytun (README, CI):  sudo scripts/test.sh
#   1. installs what the tests need (scripts/install-test-deps.sh)
#   2. cargo fmt --check, cargo clippy --all-targets -D warnings
#   3. cargo build --release (polytund, polytun, polytun-wg)
#   4. cargo nextest run --workspace (unit tests + end-to-end tests in network namespaces
#      against wireguard-go, boringtun-cli, wg-quick; profile in .config/nextest.toml), the test
#      binaries built with Cargo.toml's ci-test profile (release without LTO), the daemon they
#      run being step 3's
#   5. builds the cargo-fuzz targets (if fuzz/ exists)
# Needs root: network namespaces, TUN devices. Env: NEXTEST_PROFILE (default "ci"),
# SKIP_DEPS=1 (skip step 1), extra args are passed to nextest (e.g. a test filter).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

t0=$SECONDS
step() { echo; echo "==> [$((SECONDS - t0))s] $*"; }

[[ $EUID -eq 0 ]] || { echo "scripts/test.sh must run as root (network namespaces, TUN): sudo $0" >&2; exit 1; }

if [[ ${SKIP_DEPS:-0} != 1 ]]; then
  step "installing test dependencies"
  scripts/install-test-deps.sh
fi

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build --release"
cargo build --workspace --release --locked

step "cargo nextest run --workspace --cargo-profile ci-test"
cargo nextest run --workspace --cargo-profile ci-test --locked --profile "${NEXTEST_PROFILE:-ci}" "$@"

if [[ -f fuzz/Cargo.toml ]]; then
  step "building fuzz targets (cargo +nightly fuzz build)"
  (cd fuzz && cargo +nightly fuzz build)
else
  step "no fuzz/ directory: no fuzz targets to build"
fi

step "all green in $((SECONDS - t0))s"

#!/usr/bin/env bash
# Runs every test of the workspace (unit, e2e against the real binary, loadtest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
# The e2e suite runs the built-in policies through the gateway.
bash scripts/build-plugins.sh
cargo test --workspace --locked "$@"

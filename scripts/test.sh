#!/usr/bin/env bash
# Runs every test of the workspace (unit, e2e against the real binary, loadtest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
cargo test --workspace --locked "$@"

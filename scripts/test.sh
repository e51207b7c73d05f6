#!/usr/bin/env bash
# Runs every test of the workspace (unit, e2e against the real binary, loadtest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
# The e2e suite runs the built-in policies through the gateway.
bash scripts/build-plugins.sh
# The SDK's guest side in a second, independent proxy-wasm host (Node's WebAssembly):
# the SDK speaks the ABI itself, and this keeps it honest beyond Weir's host.
cargo build --locked -q --target wasm32-wasip1 --profile wasm -p weir-plugin-sdk --example require_header
node plugin-sdk/tools/smoke_host.mjs "${CARGO_TARGET_DIR:-target}/wasm32-wasip1/wasm"
cargo test --workspace --locked "$@"

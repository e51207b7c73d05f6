#!/usr/bin/env bash
# Builds every built-in policy in plugins/ for wasm32-wasip1 into plugins/dist/NAME.wasm
# (the folder the example configs point at). Installs the wasm target if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
names=()
for manifest in plugins/*/Cargo.toml; do
  names+=("$(basename "$(dirname "$manifest")")")
done
args=()
for n in "${names[@]}"; do args+=(-p "$n"); done
cargo build --locked --target wasm32-wasip1 --profile wasm "${args[@]}"
mkdir -p plugins/dist
for n in "${names[@]}"; do
  cp "target/wasm32-wasip1/wasm/${n//-/_}.wasm" "plugins/dist/$n.wasm"
done
ls -l plugins/dist/*.wasm

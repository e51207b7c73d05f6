#!/usr/bin/env bash
# Builds every built-in policy in plugins/ for wasm32-wasip1 into plugins/dist/NAME.wasm
# (the folder the example configs point at), and the plain proxy-wasm test filters of
# plugins/testdata/ into plugins/dist/test/. Installs the wasm target if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

names=()
for manifest in plugins/*/Cargo.toml; do
  dir="$(dirname "$manifest")"
  [ "$dir" = plugins/testdata ] && continue
  names+=("$(basename "$dir")")
done
args=()
for n in "${names[@]}"; do args+=(-p "$n"); done
cargo build --locked --target wasm32-wasip1 --profile wasm "${args[@]}"
mkdir -p plugins/dist/test
for n in "${names[@]}"; do
  cp "$target/wasm32-wasip1/wasm/${n//-/_}.wasm" "plugins/dist/$n.wasm"
done

cargo build --locked --release --target wasm32-wasip1 \
  --manifest-path plugins/testdata/Cargo.toml --target-dir "$target/testdata"
for manifest in plugins/testdata/*/Cargo.toml; do
  n="$(basename "$(dirname "$manifest")")"
  cp "$target/testdata/wasm32-wasip1/release/${n//-/_}.wasm" "plugins/dist/test/$n.wasm"
done
ls -l plugins/dist/*.wasm plugins/dist/test/*.wasm

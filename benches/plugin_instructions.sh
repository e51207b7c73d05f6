#!/usr/bin/env bash
# Instructions per request of plugin chains, host side (benches/examples/plugin_chain.rs
# under callgrind). Instruction counts repeat exactly on a busy machine where times do
# not: use them to compare two builds of the host, the SDK or a policy.
#
#   bash benches/plugin_instructions.sh                      # the standard chains
#   bash benches/plugin_instructions.sh "key-auth rate-limit" # one chain
#   KEEP=1 ...                                                # keep callgrind.*.out
#
# Needs valgrind, a release build of the example and `bash scripts/build-plugins.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${ITERATIONS:-2000}
bin=${CARGO_TARGET_DIR:-target}/release/examples/plugin_chain
[ -x "$bin" ] || cargo build --release -q -p weir-benches --example plugin_chain
if [ $# -eq 0 ]; then
  set -- "" "transform" "key-auth" "rate-limit" "key-auth rate-limit transform"
fi
for chain in "$@"; do
  out=$(mktemp /tmp/callgrind.XXXXXX.out)
  # shellcheck disable=SC2086 # the chain is a list of words
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    --toggle-collect='plugin_chain::main::{{closure}}' \
    "$bin" --once "$n" $chain >"$out.log" 2>&1 || { cat "$out.log"; exit 1; }
  ir=$(grep -o 'Collected : [0-9]*' "$out.log" | awk '{print $3}')
  printf '%-40s %8d instructions/request\n' "${chain:-(no plugins)}" $((ir / n))
  if [ -n "${KEEP:-}" ]; then echo "  $out"; else rm -f "$out"; fi
  rm -f "$out.log"
done

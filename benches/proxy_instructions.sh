#!/usr/bin/env bash
# Instructions per request of the whole proxy process (user space), under callgrind:
# pingora-baseline and Weir without plugins, with `transform`, and with key-auth +
# rate-limit + transform (the variants of compare.py). Instruction counts repeat within
# about 1% on a busy machine where times and CPU per request vary by 20%: use them to
# compare two builds. They are not time: kernel work (the syscalls, the same for every
# variant) is not counted, and a `rep movsb` counts one instruction per byte moved.
#
#   bash benches/proxy_instructions.sh                  # every variant, 4000 requests
#   bash benches/proxy_instructions.sh weir weir-1-plugin
#   REQUESTS=2000 KEEP=1 bash benches/proxy_instructions.sh   # keep the callgrind files
#   CALLGRIND_ARGS="--separate-callers5=*try_grow*" KEEP=1 bash benches/proxy_instructions.sh weir
#
# Needs valgrind, `cargo build --release -p weir -p weir-load -p weir-benches` and
# `bash scripts/build-plugins.sh`. Each variant: ~10 s.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
n=${REQUESTS:-4000}
bin=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d /tmp/weir-instructions.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
# Valgrind reads a binary's debug info at start (minutes for these): measure copies
# without it; the symbol table stays, so the profiles still name functions.
for b in weir pingora-baseline; do objcopy --strip-debug "$bin/$b" "$work/$b"; done
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# key-auth's key, which every request carries.
key=$(python3 -c 'import tomllib; p = tomllib.load(open("benches/plugins.toml", "rb"))["plugins"]
print(next(x for x in p if x["name"] == "key-auth")["config"]["consumers"][0]["keys"][0])')

up=$(free_port)
"$bin/weir-load" upstream --listen "127.0.0.1:$up" --body-size 13 >"$work/upstream.log" 2>&1 &
pids+=($!)

config() { # config NAME PORT CHAIN
  cat >"$work/$1.toml" <<EOF
[server]
listen = ["127.0.0.1:$2"]
threads = 1
watch_config = false
[admin]
listen = "127.0.0.1:$(free_port)"
[access_log]
output = "off"
[[upstreams]]
name = "echo"
targets = ["127.0.0.1:$up"]
[[routes]]
name = "all"
paths = ["/"]
upstream = "echo"
plugins = [$3]
EOF
  # The built-in policies as every benchmark configures them.
  sed "s|^wasm = \"|wasm = \"$repo/|" benches/plugins.toml >>"$work/$1.toml"
}

measure() { # measure NAME
  local name=$1 port cmd vpid out
  port=$(free_port)
  case $name in
    pingora-baseline)
      cmd=("$work/pingora-baseline" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$up" --threads 1) ;;
    weir) config "$name" "$port" "" ;;
    weir-1-plugin) config "$name" "$port" '"transform"' ;;
    weir-3-plugins) config "$name" "$port" '"key-auth", "rate-limit", "transform"' ;;
    *) echo "unknown variant $name (pingora-baseline, weir, weir-1-plugin, weir-3-plugins)" >&2; exit 2 ;;
  esac
  [ "$name" = pingora-baseline ] || cmd=("$work/weir" run --config "$work/$name.toml")
  out="$work/$name.callgrind"
  # shellcheck disable=SC2086 # CALLGRIND_ARGS: extra options, split on spaces
  valgrind --tool=callgrind ${CALLGRIND_ARGS:-} --callgrind-out-file="$out" "${cmd[@]}" >"$work/$name.log" 2>&1 &
  vpid=$!
  pids+=($vpid)
  local ready=
  for _ in $(seq 600); do
    if curl -sf -o /dev/null -H "x-api-key: $key" "http://127.0.0.1:$port/"; then ready=1; break; fi
    sleep 0.2
  done
  [ -n "$ready" ] || { echo "$name did not start:"; tail -20 "$work/$name.log"; exit 1; }
  local load=("$bin/weir-load" -q -t1 -c10 -H "x-api-key: $key" "http://127.0.0.1:$port/")
  "${load[@]}" -n 500 >/dev/null # warm-up: JIT, pools, caches
  callgrind_control -z "$vpid" >/dev/null 2>&1
  "${load[@]}" -n "$n" --json >"$work/$name.json"
  callgrind_control -d "$vpid" >/dev/null 2>&1
  kill -9 "$vpid" 2>/dev/null || true
  wait "$vpid" 2>/dev/null || true
  local dump ir ok
  dump=$(ls -t "$out".* | head -1)
  ir=$(awk '/^summary:/ {print $2}' "$dump")
  ok=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['status'].get('200', 0))" "$work/$name.json")
  [ "$ok" = "$n" ] || { echo "$name: only $ok of $n requests got 200"; exit 1; }
  printf '%-18s %8d instructions/request\n' "$name" $((ir / n))
  [ -z "${KEEP:-}" ] || echo "  $dump"
}

[ $# -gt 0 ] || set -- pingora-baseline weir weir-1-plugin weir-3-plugins
for v in "$@"; do measure "$v"; done

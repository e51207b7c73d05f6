#!/usr/bin/env bash
# Builds Weir, starts a demo upstream on 127.0.0.1:9001 and Weir on 127.0.0.1:8080 with
# config/quickstart.toml. Then, in another terminal:
#   curl -i localhost:8080/hello      (proxied to the demo upstream)
#   curl -i localhost:8080/ping       (answered by Weir itself)
#   curl localhost:9901/metrics       (admin API)
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/prereqs.sh
cargo build --release --locked -p weir -p weir-load
target/release/weir-load upstream --listen 127.0.0.1:9001 --body-size 32 &
UPSTREAM=$!
trap 'kill $UPSTREAM 2>/dev/null || true' EXIT
target/release/weir run --config config/quickstart.toml

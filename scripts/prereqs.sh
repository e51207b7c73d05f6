#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test Weir: cmake (pingora's
# zlib-ng build needs it), a C compiler, and node (the SDK's second test host).
# Idempotent; uses sudo only when not root.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
# plugin-sdk/tools/smoke_host.mjs, run by scripts/test.sh.
command -v node >/dev/null 2>&1 || need+=(nodejs)

if ((${#need[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

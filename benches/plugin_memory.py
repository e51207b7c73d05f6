#!/usr/bin/env python3
"""Resident memory of Weir with 10 plugins loaded, against Weir without plugins.

    python3 benches/plugin_memory.py [--threads 2] [--requests 20000]

Needs release binaries (`cargo build --release -p weir -p weir-load`) and the built-in
plugins (`bash scripts/build-plugins.sh`). Starts the echo upstream and, one after the
other, Weir without plugins and Weir with ten plugins (the seven built-in policies,
transform four times with different configs; nine of them on the measured route, in
one chain), sends the same closed-loop load through each, and prints VmRSS after
start-up and after the load, and the peak (VmHWM), as a markdown table. Loopback only;
every process it starts is stopped.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target" / "release"
DIST = REPO / "plugins" / "dist"
KEY = "memory-bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ok(port: int, headers: dict, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/", headers=headers)
            with urllib.request.urlopen(req, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"nothing answered 200 on port {port} within {timeout}s")


def status_kib(pid: int) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])
    return out


def plugins_toml() -> str:
    def plugin(name: str, wasm: str, config: str) -> str:
        return f'[[plugins]]\nname = "{name}"\nwasm = "{DIST / wasm}"\nconfig = {config}\n'

    parts = [
        plugin("cors", "cors.wasm", '{ allow_origins = ["https://app.example.com"] }'),
        plugin("ip", "ip-restriction.wasm", '{ allow = ["127.0.0.0/8", "::1/128"] }'),
        plugin("key-auth", "key-auth.wasm", f'{{ consumers = [{{ name = "bench", keys = ["{KEY}"] }}] }}'),
        plugin("rate-limit", "rate-limit.wasm", '{ key = "consumer", limit = 100000000, window = "1h" }'),
        plugin("size", "request-size-limit.wasm", '{ max_size = "1MiB" }'),
        plugin("jwt", "jwt-auth.wasm",
               '{ keys = [{ kid = "k", alg = "HS256", secret = "0123456789abcdef0123456789abcdef" }] }'),
    ]
    for i in range(1, 5):
        parts.append(plugin(f"transform-{i}", "transform.wasm",
                            f'{{ request = {{ headers = {{ set = {{ x-step-{i} = "{i}" }} }} }} }}'))
    chain = ["cors", "ip", "key-auth", "rate-limit", "size"] + [f"transform-{i}" for i in range(1, 5)]
    routes = (
        '[[routes]]\nname = "jwt"\npaths = ["/jwt"]\nupstream = "echo"\nplugins = ["jwt"]\n'
        f'[[routes]]\nname = "all"\npaths = ["/"]\nupstream = "echo"\nplugins = {chain!r}\n'
    ).replace("'", '"')
    return "\n".join(parts) + routes


def run_weir(tmp: Path, name: str, up_port: int, threads: int, extra: str,
             headers: dict, requests: int) -> dict:
    port = free_port()
    conf = tmp / f"{name}.toml"
    conf.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nthreads = {threads}\nwatch_config = false\n'
        f'[admin]\nlisten = "off"\n[access_log]\noutput = "off"\n'
        f'[[upstreams]]\nname = "echo"\ntargets = ["127.0.0.1:{up_port}"]\n'
        + (extra or '[[routes]]\nname = "all"\npaths = ["/"]\nupstream = "echo"\n'))
    log = open(tmp / f"{name}.log", "w")
    p = subprocess.Popen([str(BIN / "weir"), "run", "--config", str(conf)],
                         stdout=log, stderr=subprocess.STDOUT,
                         env=dict(os.environ, WEIR_PLUGIN_CACHE=str(tmp / "cache")))
    try:
        wait_ok(port, headers)
        started = status_kib(p.pid)
        argv = [str(BIN / "weir-load"), "-c", "32", "-d", "5s", "--quiet"]
        for k, v in headers.items():
            argv += ["-H", f"{k}: {v}"]
        subprocess.run(argv + [f"http://127.0.0.1:{port}/"], check=True, timeout=60,
                       stdout=subprocess.DEVNULL)
        loaded = status_kib(p.pid)
        return {"start": started["VmRSS"], "after": loaded["VmRSS"], "peak": loaded["VmHWM"]}
    finally:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=20000, help="unused; the load runs 5 s")
    args = ap.parse_args()
    for b in ("weir", "weir-load"):
        if not (BIN / b).is_file():
            sys.exit(f"{BIN / b} is missing: cargo build --release -p weir -p weir-load")
    if not (DIST / "jwt-auth.wasm").is_file():
        sys.exit("plugins/dist is missing: bash scripts/build-plugins.sh")
    with tempfile.TemporaryDirectory(prefix="weir-mem-") as t:
        tmp = Path(t)
        up_port = free_port()
        up = subprocess.Popen([str(BIN / "weir-load"), "upstream", "--listen", f"127.0.0.1:{up_port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ok(up_port, {})
            base = run_weir(tmp, "weir", up_port, args.threads, "", {}, args.requests)
            # First with an empty module cache (every module compiled at start), then
            # again with the cache the first run wrote (a restart).
            cold = run_weir(tmp, "weir-10-plugins", up_port, args.threads, plugins_toml(),
                            {"x-api-key": KEY}, args.requests)
            warm = run_weir(tmp, "weir-10-plugins-again", up_port, args.threads, plugins_toml(),
                            {"x-api-key": KEY}, args.requests)
        finally:
            up.kill()
            up.wait()
    mib = lambda k: f"{k / 1024:.1f} MiB"
    print(f"threads = {args.threads} (one VM per plugin per thread: {10 * args.threads} VMs)\n")
    print("| | RSS after start | RSS after 5 s of load | peak RSS |")
    print("|---|--:|--:|--:|")
    for name, r in (("weir, no plugins", base),
                    ("weir, 10 plugins (9 in the chain), modules compiled at start", cold),
                    ("weir, 10 plugins, restarted with the module cache", warm)):
        print(f"| {name} | {mib(r['start'])} | {mib(r['after'])} | {mib(r['peak'])} |")
    print(f"\nper plugin, restarted: {(warm['after'] - base['after']) / 10 / 1024:.2f} MiB")


if __name__ == "__main__":
    main()

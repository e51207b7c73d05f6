#!/usr/bin/env python3
"""End-to-end comparison harness for Weir (issue 4): Weir side by side with nginx,
nginx + Lua, a bare pingora-proxy and the echo upstream itself, on one machine, in one
run, interleaved.

    python3 benches/compare.py                       # full run, rewrites BENCHMARKS.md
    python3 benches/compare.py --smoke               # CI: one short round, debug build
    python3 benches/compare.py --no-build --rounds 5 --duration 10s --rates 5000,20000

What it does:
  1. builds the binaries (cargo, release; debug with --smoke) unless --no-build, and
     copies them to a temp dir so a concurrent rebuild cannot change them mid-run;
  2. installs nginx, its Lua module and wrk with apt-get when missing (needs root);
  3. pins CPUs: every proxy under test on the first CPU, the client (wrk / weir-load)
     and the echo upstream on the second; one worker/thread per proxy;
  4. starts the echo upstream and every variant on its own free loopback port, waits
     until each answers GET / with 200;
  5. per round (a discarded warm-up round first, then --rounds; the order of the
     variants rotates every round) and per variant: a warm-up of --warmup, closed-loop
     max throughput with wrk and with weir-load, open-loop latency at each --rates
     (weir-load -r, coordinated-omission corrected; the achieved rate is checked to be
     within 5% of the asked one), the proxy's CPU time per request from /proc/PID/stat;
     peak RSS (VmHWM) at the end;
  6. reports medians of the per-round values and of the per-round ratios (vs nginx, vs
     pingora-baseline, plugin variants vs weir) with their min-max spread: a markdown
     table on stdout, JSON (--json), and the results section of BENCHMARKS.md (--out,
     not with --smoke).

Exit status: 0 when everything started and every request succeeded; 1 when a process
failed to start or a request failed (non-2xx, connect/read errors, timeouts) - the
results are still printed and written; 2 for bad usage; 130 when interrupted.

Standard library only (Python 3.11+). Loopback only. Every process it starts is
stopped by PID at the end (also on SIGINT/SIGTERM); its temp dir is removed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
RESULTS_BEGIN = "<!-- compare.py results: begin (rewritten by benches/compare.py) -->"
RESULTS_END = "<!-- compare.py results: end -->"
BODY_SIZE = 13
RATE_TOLERANCE = 0.05
READY_TIMEOUT = 30.0  # seconds for a server to answer GET / with 200
STOP_TIMEOUT = 5.0  # seconds between the polite signal and SIGKILL


class Fatal(Exception):
    """Something the run cannot continue without (a server that does not start...)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM received."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------
# Processes: everything started goes through Procs so that it is stopped by PID.


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    stop_signal: int
    log_path: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 20) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))
        return "\n".join("    " + l for l in text.splitlines()[-n:])


class Procs:
    def __init__(self) -> None:
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        stop_signal: int = signal.SIGTERM,
        cwd: Path | None = None,
    ) -> Proc:
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                # Own session: a Ctrl-C on the terminal reaches only this script, which
                # then stops its children itself, in order.
                start_new_session=True,
            )
        p = Proc(name, popen, stop_signal, log_path)
        self.procs.append(p)
        return p

    def stop(self, p: Proc) -> None:
        if p.alive():
            try:
                os.kill(p.pid, p.stop_signal)
            except ProcessLookupError:
                pass
            try:
                p.popen.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log(f"{p.name} (pid {p.pid}) did not stop in {STOP_TIMEOUT}s; SIGKILL")
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.popen.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    log(f"{p.name} (pid {p.pid}) survived SIGKILL?")
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self) -> None:
        for p in reversed(list(self.procs)):
            self.stop(p)


def run_bounded(argv: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with a timeout; the child is killed on timeout or interrupt."""
    try:
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )
    except subprocess.TimeoutExpired as e:
        raise Fatal(f"timed out after {timeout:.0f}s: {shlex.join(argv)}") from e


# ----------------------------------------------------------------------------------------
# Small helpers.


def parse_duration(s: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", s)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {s!r} (e.g. 10s, 500ms, 1m)")
    v = float(m.group(1))
    return v * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def fmt_secs(secs: float) -> str:
    return f"{secs:g}s" if secs >= 1 or secs == 0 else f"{secs * 1000:g}ms"


def cli_duration(secs: float) -> str:
    """A duration weir-load's humantime parser accepts."""
    return f"{secs:.0f}s" if secs == int(secs) else f"{secs * 1000:.0f}ms"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str = "/", timeout: float = 1.0,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def wait_ready(p: Proc, port: int, check: Callable[[dict[str, str]], str | None] | None = None,
               headers: dict[str, str] | None = None) -> None:
    """Polls GET / until 200 (bounded); fails at once if the process exits."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if not p.alive():
            raise Fatal(
                f"{p.name} exited with status {p.popen.returncode} before it was ready\n"
                f"{p.log_tail()}"
            )
        try:
            status, got = http_get(port, headers=headers)
            if status == 200:
                problem = check(got) if check else None
                if problem is None:
                    return
                raise Fatal(f"{p.name} answered 200 but {problem}")
            last = f"status {status}"
        except (OSError, http.client.HTTPException) as e:
            last = str(e) or type(e).__name__
        time.sleep(0.05)
    raise Fatal(f"{p.name} not ready after {READY_TIMEOUT:.0f}s ({last})\n{p.log_tail()}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def median(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def spread(xs: list[float]) -> dict | None:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


# ----------------------------------------------------------------------------------------
# Machine, tools, binaries.


@dataclass
class Pinning:
    proxy_cpu: int | None
    client_cpu: int | None
    note: str

    def prefix(self, cpu: int | None) -> list[str]:
        if cpu is None:
            return []
        return ["taskset", "-c", str(cpu)]


def plan_pinning() -> Pinning:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return Pinning(None, None, f"only {len(cpus)} CPU available: nothing pinned")
    if not shutil.which("taskset"):
        return Pinning(None, None, "taskset not found (util-linux): nothing pinned")
    return Pinning(
        cpus[0],
        cpus[1],
        f"proxy under test alone on CPU {cpus[0]}; client and echo upstream on CPU {cpus[1]}"
        + (f" ({len(cpus)} CPUs, the others unused)" if len(cpus) > 2 else ""),
    )


def machine_description() -> dict:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        loadavg = []
    return {
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "cpus_allowed": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": " ".join(loadavg),
    }


def find_nginx() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_module_dirs(nginx: str | None) -> list[Path]:
    dirs = []
    if nginx:
        try:
            out = run_bounded([nginx, "-V"], 20).stderr
            m = re.search(r"--modules-path=(\S+)", out)
            if m:
                dirs.append(Path(m.group(1)))
        except Fatal:
            pass
    dirs += [Path("/usr/lib/nginx/modules"), Path("/usr/share/nginx/modules"),
             Path("/usr/lib64/nginx/modules")]
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def find_lua_modules(nginx: str | None) -> list[Path] | None:
    """Absolute paths of the modules to load for Lua (NDK first), or None."""
    for d in nginx_module_dirs(nginx):
        lua = d / "ngx_http_lua_module.so"
        if lua.exists():
            ndk = d / "ndk_http_module.so"
            return ([ndk] if ndk.exists() else []) + [lua]
    return None


def apt_candidate(pkg: str) -> bool:
    try:
        out = run_bounded(["apt-cache", "policy", pkg], 60).stdout
    except Fatal:
        return False
    m = re.search(r"Candidate:\s*(\S+)", out)
    return bool(m and m.group(1) != "(none)")


def ensure_tools(want_lua: bool) -> list[str]:
    """Installs nginx, its Lua module and wrk with apt-get when missing. Returns notes."""
    notes = []
    nginx = find_nginx()
    missing = []
    if not nginx:
        missing.append("nginx")
    if want_lua and not find_lua_modules(nginx):
        missing.append("nginx-lua")
    if not shutil.which("wrk"):
        missing.append("wrk")
    if not missing:
        return notes
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Fatal(
            f"missing: {', '.join(missing)}; run as root on Debian/Ubuntu so the script can "
            "apt-get install them (nginx-light or nginx, libnginx-mod-http-lua, wrk)"
        )
    log(f"installing {', '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = run_bounded(["apt-get", "update"], 600, env=env)
    if r.returncode != 0:
        raise Fatal(f"apt-get update failed:\n{r.stderr[-2000:]}")
    pkgs = []
    if "nginx" in missing:
        # nginx-light is the smallest build (Debian 12); later releases ship only nginx.
        pkgs.append(next((p for p in ("nginx-light", "nginx") if apt_candidate(p)), "nginx"))
    if "nginx-lua" in missing:
        pkgs.append("libnginx-mod-http-lua")
    if "wrk" in missing:
        pkgs.append("wrk")
    r = run_bounded(["apt-get", "install", "-y", "--no-install-recommends", *pkgs], 1200, env=env)
    if r.returncode != 0:
        raise Fatal(f"apt-get install {' '.join(pkgs)} failed:\n{r.stderr[-2000:]}")
    notes.append(f"installed with apt-get: {' '.join(pkgs)}")
    if not find_nginx() or not shutil.which("wrk"):
        raise Fatal("nginx or wrk still missing after apt-get install")
    if want_lua and not find_lua_modules(find_nginx()):
        raise Fatal("the nginx Lua module is still missing after apt-get install")
    return notes


def tool_versions(nginx: str) -> dict:
    v = {}
    try:
        v["nginx"] = run_bounded([nginx, "-v"], 20).stderr.strip().replace("nginx version: ", "")
    except Fatal:
        pass
    try:
        r = run_bounded(["wrk", "-v"], 20)
        m = re.search(r"wrk\s+(\S+)", r.stdout + r.stderr)
        v["wrk"] = m.group(1) if m else "?"
    except Fatal:
        pass
    try:
        v["git"] = run_bounded(["git", "-C", str(REPO), "describe", "--always", "--dirty"], 20).stdout.strip()
    except Fatal:
        pass
    return v


def build(smoke: bool) -> None:
    argv = ["cargo", "build", "-p", "weir", "-p", "weir-load", "-p", "weir-benches"]
    if not smoke:
        argv.insert(2, "--release")
    log(f"building: {shlex.join(argv)}")
    # Output goes straight to the terminal; cargo waits on its own lock if another build
    # of the same workspace is running.
    try:
        r = subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL, timeout=3600)
    except subprocess.TimeoutExpired as e:
        raise Fatal("cargo build did not finish within an hour") from e
    if r.returncode != 0:
        raise Fatal(f"cargo build failed (status {r.returncode})")


def stage_binaries(bin_dir: Path, tmp: Path) -> dict[str, Path]:
    out = {}
    for name in ("weir", "weir-load", "pingora-baseline"):
        src = bin_dir / name
        if not src.exists():
            raise Fatal(f"{src} not found (build it, or point --bin-dir at the right profile)")
        dst = tmp / "bin" / name
        dst.parent.mkdir(exist_ok=True)
        shutil.copy2(src, dst)
        out[name] = dst
    return out


# ----------------------------------------------------------------------------------------
# The variants under test.


@dataclass
class Ctx:
    tmp: Path
    bins: dict[str, Path]
    pin: Pinning
    procs: Procs
    upstream_port: int
    upstream: Proc
    nginx: str | None
    lua_modules: list[Path] | None


@dataclass
class Server:
    """A running variant: the port to load, the process whose CPU and RSS are measured."""

    port: int
    proc: Proc
    argv: list[str]
    truncate: Path | None = None  # a log file emptied between measurements
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request


@dataclass
class Variant:
    key: str
    label: str
    start: Callable[[Ctx], Server]
    needs_lua: bool = False
    plugin: bool = False  # also compared with plain weir


def start_echo_upstream(procs: Procs, bins: dict[str, Path], pin: Pinning,
                        tmp: Path) -> tuple[Proc, int]:
    """weir-load's echo upstream on the client's CPU, on a free port; its process and port."""
    up_log = tmp / "upstream.log"
    upstream = procs.start(
        "echo-upstream",
        pin.prefix(pin.client_cpu) + [str(bins["weir-load"]), "upstream", "--listen", "127.0.0.1:0",
                                      "--body-size", str(BODY_SIZE)],
        up_log)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", up_log.read_text(errors="replace"))
        if m:
            port = int(m.group(1))
            wait_ready(upstream, port)
            return upstream, port
        if not upstream.alive():
            break
        time.sleep(0.05)
    raise Fatal(f"the echo upstream did not start:\n{upstream.log_tail()}")


def start_with_retry(ctx: Ctx, name: str, make: Callable[[int], tuple[list[str], int]],
                     check=None, stop_signal=signal.SIGTERM,
                     headers: dict[str, str] | None = None) -> Server:
    """Starts a server on a fresh free port, retrying with another port if it loses a race."""
    last: Exception | None = None
    for attempt in range(3):
        port = free_port()
        argv, _ = make(port)
        p = ctx.procs.start(name, argv, ctx.tmp / f"{name}.log", stop_signal=stop_signal)
        try:
            wait_ready(p, port, check, headers)
            return Server(port, p, argv, headers=dict(headers or {}))
        except Fatal as e:
            last = e
            ctx.procs.stop(p)
            if "Address already in use" not in str(e) and "in use" not in str(e):
                break
            log(f"{name}: port {port} was taken; retrying")
    raise Fatal(f"{name} failed to start: {last}")


def start_direct(ctx: Ctx) -> Server:
    # The echo upstream itself: the ceiling. Its process is the one measured.
    return Server(ctx.upstream_port, ctx.upstream, ctx.upstream.popen.args)


NGINX_CONF = """\
{load_modules}
daemon off;
master_process off;     # one process: it is the worker, and the PID measured
worker_processes 1;
pid {tmp}/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # Pingora and Weir keep client and upstream connections for any number of requests;
    # nginx's default of 1000 would make it reconnect, so lift it on both sides.
    keepalive_requests 1000000;
    upstream echo {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
{lua}        }}
    }}
}}
"""


def start_nginx(ctx: Ctx, lua: bool = False) -> Server:
    name = "nginx-lua" if lua else "nginx"
    d = ctx.tmp / name
    d.mkdir(exist_ok=True)
    if not ctx.nginx:
        raise Fatal("nginx not found")
    if lua and not ctx.lua_modules:
        raise Fatal("the nginx Lua module (ngx_http_lua_module.so) was not found")

    def make(port: int):
        conf = NGINX_CONF.format(
            load_modules="\n".join(f"load_module {m};" for m in ctx.lua_modules) if lua else "",
            tmp=d,
            upstream_port=ctx.upstream_port,
            port=port,
            lua='            header_filter_by_lua_block { ngx.header["x-lua"] = "1" }\n' if lua else "",
        )
        (d / "nginx.conf").write_text(conf)
        argv = ctx.pin.prefix(ctx.pin.proxy_cpu) + [
            ctx.nginx, "-p", f"{d}/", "-c", str(d / "nginx.conf"), "-e", "stderr"]
        return argv, port

    check = (lambda h: None if h.get("x-lua") == "1" else "without the x-lua header") if lua else None
    return start_with_retry(ctx, name, make, check=check, stop_signal=signal.SIGTERM)


def start_pingora(ctx: Ctx) -> Server:
    def make(port: int):
        return ctx.pin.prefix(ctx.pin.proxy_cpu) + [
            str(ctx.bins["pingora-baseline"]),
            "--listen", f"127.0.0.1:{port}",
            "--upstream", f"127.0.0.1:{ctx.upstream_port}",
            "--threads", "1",
        ], port

    # SIGINT: Pingora's fast shutdown (SIGTERM would wait out its grace period).
    return start_with_retry(ctx, "pingora-baseline", make, stop_signal=signal.SIGINT)


WEIR_CONF = """\
# written by benches/compare.py
[server]
listen = ["127.0.0.1:{port}"]
threads = 1
watch_config = false
grace_period = "1s"

[admin]
listen = "127.0.0.1:{admin_port}"

[access_log]
output = "{access_log}"

[[upstreams]]
name = "echo"
targets = ["127.0.0.1:{upstream_port}"]

[[routes]]
name = "all"
paths = ["/"]
upstream = "echo"
{route_extra}
{extra}
"""


BENCH_PLUGINS = REPO / "benches" / "plugins.toml"


def bench_plugins(*names: str) -> str:
    """The `[[plugins]]` tables of benches/plugins.toml (the configurations every
    benchmark gives the built-in policies) named `names`, with absolute wasm paths."""
    blocks = BENCH_PLUGINS.read_text().split("[[plugins]]\n")[1:]
    by_name = {re.search(r'^name = "([^"]+)"', b, re.M).group(1): b for b in blocks}
    return "".join(
        "\n[[plugins]]\n" + by_name[n].replace('wasm = "', f'wasm = "{REPO}/', 1)
        for n in names)


PLUGIN_TRANSFORM = bench_plugins("transform")
# key-auth + rate-limit + transform, the chain of a typical authenticated API route.
PLUGINS_3 = bench_plugins("transform", "key-auth", "rate-limit")
# The key every request to it carries: key-auth's only consumer's.
BENCH_KEY = next(p for p in tomllib.loads(BENCH_PLUGINS.read_text())["plugins"]
                 if p["name"] == "key-auth")["config"]["consumers"][0]["keys"][0]


def start_weir(ctx: Ctx, name: str = "weir", access_log_file: bool = False,
               route_extra: str = "", extra: str = "",
               headers: dict[str, str] | None = None) -> Server:
    """Weir with one route "/" to the echo upstream. `route_extra` is appended to the
    route table (e.g. a plugin list), `extra` to the file (e.g. plugin definitions)."""
    d = ctx.tmp / name
    d.mkdir(exist_ok=True)
    access_log = d / "access.log" if access_log_file else None

    def make(port: int):
        conf = WEIR_CONF.format(
            port=port,
            admin_port=free_port(),
            access_log=str(access_log) if access_log else "off",
            upstream_port=ctx.upstream_port,
            route_extra=route_extra,
            extra=extra,
        )
        (d / "weir.toml").write_text(conf)
        return ctx.pin.prefix(ctx.pin.proxy_cpu) + [
            str(ctx.bins["weir"]), "run", "--config", str(d / "weir.toml")], port

    s = start_with_retry(ctx, name, make, stop_signal=signal.SIGTERM, headers=headers)
    s.truncate = access_log
    return s


# ======================================================================================
# THE VARIANTS, in the order of the tables. References for ratios: "nginx" and
# "pingora-baseline"; variants with plugin=True are also compared with "weir".
# ======================================================================================
VARIANTS: list[Variant] = [
    Variant("direct", "direct (echo upstream, the ceiling)", start_direct),
    Variant("nginx", "nginx", partial(start_nginx, lua=False)),
    Variant("nginx-lua", "nginx + Lua header filter", partial(start_nginx, lua=True), needs_lua=True),
    Variant("pingora-baseline", "pingora-baseline (bare ProxyHttp)", start_pingora),
    Variant("weir", "weir (no plugins)", partial(start_weir, name="weir")),
    Variant("weir-log", "weir (access log to file)",
            partial(start_weir, name="weir-log", access_log_file=True)),
    # One header-setting plugin: the built-in `transform` policy (built with the SDK)
    # setting one request header. Needs `bash scripts/build-plugins.sh` first.
    Variant("weir-1-plugin", "weir + 1 header plugin (transform)",
            partial(start_weir, name="weir-1-plugin", route_extra='plugins = ["transform"]',
                    extra=PLUGIN_TRANSFORM), plugin=True),
    # The chain of an authenticated API route; every request carries the API key.
    Variant("weir-3-plugins", "weir + key-auth + rate-limit + transform",
            partial(start_weir, name="weir-3-plugins",
                    route_extra='plugins = ["key-auth", "rate-limit", "transform"]',
                    extra=PLUGINS_3, headers={"x-api-key": BENCH_KEY}), plugin=True),
]
REFERENCES = ["nginx", "pingora-baseline"]


# ----------------------------------------------------------------------------------------
# Load generators.

_WRK_UNITS = {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}


def _wrk_us(s: str) -> float | None:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s)
    return float(m.group(1)) * _WRK_UNITS[m.group(2)] if m else None


def parse_wrk(out: str) -> dict:
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+),", out)
    rps = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if not m or not rps:
        raise ValueError("unrecognised wrk output")
    res = {
        "requests": int(m.group(1)),
        "duration_secs": float(m.group(2)) * {"s": 1, "ms": 1e-3, "us": 1e-6, "m": 60}.get(m.group(3), 1),
        "throughput_rps": float(rps.group(1)),
        "latency_us": {},
        "errors": 0,
        "non_2xx_3xx": 0,
    }
    for pct, val in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M):
        res["latency_us"][f"p{pct}"] = _wrk_us(val)
    se = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if se:
        res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, se.groups())))
        res["errors"] = sum(map(int, se.groups()))
    n2 = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if n2:
        res["non_2xx_3xx"] = int(n2.group(1))
    return res


@dataclass
class Load:
    bins: dict[str, Path]
    pin: Pinning
    connections: int

    def wrk(self, server: Server, secs: float) -> dict:
        d = max(1, round(secs))
        argv = self.pin.prefix(self.pin.client_cpu) + [
            "wrk", "-t1", f"-c{self.connections}", f"-d{d}s", "--latency"]
        for k, v in server.headers.items():
            argv += ["-H", f"{k}: {v}"]
        argv.append(f"http://127.0.0.1:{server.port}/")
        r = run_bounded(argv, d + 60)
        if r.returncode != 0:
            raise Fatal(f"wrk failed (status {r.returncode}): {r.stderr.strip()[-500:]}")
        try:
            res = parse_wrk(r.stdout)
        except ValueError as e:
            raise Fatal(f"{e}:\n{r.stdout}\n{r.stderr}") from e
        res["failed"] = res["errors"] + res["non_2xx_3xx"]
        return res

    def weir_load(self, server: Server, secs: float, rate: float | None = None) -> dict:
        argv = self.pin.prefix(self.pin.client_cpu) + [
            str(self.bins["weir-load"]), "-t1", "-c", str(self.connections),
            "-d", cli_duration(secs), "--json", "--quiet"]
        if rate:
            argv += ["-r", f"{rate:g}"]
        for k, v in server.headers.items():
            argv += ["-H", f"{k}: {v}"]
        argv.append(f"http://127.0.0.1:{server.port}/")
        r = run_bounded(argv, secs + 60)
        if r.returncode != 0 and not r.stdout.strip().startswith("{"):
            raise Fatal(f"weir-load failed (status {r.returncode}): {r.stderr.strip()[-500:]}")
        try:
            res = json.loads(r.stdout)
        except json.JSONDecodeError as e:
            raise Fatal(f"weir-load printed no JSON: {r.stdout[-500:]} {r.stderr[-500:]}") from e
        non2xx = sum(n for cls, n in res.get("status_class", {}).items() if cls != "2xx")
        res["failed"] = res["errors"]["total"] + non2xx
        return res


def cpu_busy_secs(cpu: int | None) -> float | None:
    """Busy (non-idle) time of one CPU from /proc/stat, in seconds."""
    if cpu is None:
        return None
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    v = [int(x) for x in line.split()[1:]]
                    # user nice system idle iowait irq softirq steal (guest* are in user).
                    # irq and softirq are left out: much of them is the proxy's own traffic.
                    return (v[0] + v[1] + v[2] + v[7]) / CLK_TCK
    except OSError:
        pass
    return None


HEAVY = ("rustc", "cargo", "cc1", "cc1plus", "ld", "lld", "mold", "clang", "gcc", "rust-lld")


def heavy_processes() -> list[str]:
    """Names of compiler-like processes running now (other work on a shared machine)."""
    seen = set()
    me = os.getpid()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            comm = (d / "comm").read_text().strip()
        except OSError:
            continue
        if comm in HEAVY:
            seen.add(comm)
    return sorted(seen)


def measured(server: Server, fn: Callable[[], dict], proxy_cpu: int | None = None) -> dict:
    """Runs one load, with the proxy's CPU time over it, per completed request, and how
    busy the proxy's CPU was with anything else meanwhile (noise from other work)."""
    if server.truncate and server.truncate.exists():
        os.truncate(server.truncate, 0)  # the access log would otherwise grow by GBs
    if not server.proc.alive():
        raise Fatal(f"{server.proc.name} died (status {server.proc.popen.returncode})\n{server.proc.log_tail()}")
    c0 = cpu_seconds(server.proc.pid)
    b0, t0 = cpu_busy_secs(proxy_cpu), time.monotonic()
    res = fn()
    c1 = cpu_seconds(server.proc.pid)
    b1, t1 = cpu_busy_secs(proxy_cpu), time.monotonic()
    res["proxy_cpu_secs"] = c1 - c0
    if b0 is not None and b1 is not None:
        # Share of the proxy's CPU used by other processes (the proxy may run elsewhere
        # when unpinned; then this is meaningless and left out).
        res["other_load_on_proxy_cpu"] = max(0.0, (b1 - b0) - (c1 - c0)) / (t1 - t0)
    res["cpu_us_per_req"] = (c1 - c0) * 1e6 / res["requests"] if res["requests"] else None
    return res


# ----------------------------------------------------------------------------------------
# Running the rounds.


def run_variant_block(v: Variant, server: Server, load: Load, args, rates: list[float],
                      problems: list[str], failures: list[str], label: str) -> dict:
    out: dict = {}

    def note_failures(what: str, res: dict) -> None:
        if res.get("failed"):
            if "socket_errors" in res or "non_2xx_3xx" in res:  # wrk
                detail = dict(res.get("socket_errors", {}), non_2xx_3xx=res.get("non_2xx_3xx", 0))
            else:
                detail = dict(res["errors"], status=res.get("status"))
            detail = ", ".join(f"{k} {n}" for k, n in detail.items() if n and k != "total")
            problems.append(f"{label}: {v.key} {what}: {res['failed']} failed requests ({detail})")
            failures.append(problems[-1])
            log(f"  !! {v.key} {what}: {res['failed']} failed requests")

    if args.warmup > 0:
        w = load.weir_load(server, args.warmup)
        note_failures("warm-up", w)
    pc = load.pin.proxy_cpu if v.key != "direct" else None  # direct: nothing on that CPU
    wrk = measured(server, lambda: load.wrk(server, args.duration), pc)
    note_failures("wrk", wrk)
    out["wrk"] = wrk
    wl = measured(server, lambda: load.weir_load(server, args.duration), pc)
    note_failures("weir-load", wl)
    out["weir_load"] = wl
    out["rates"] = {}
    for rate in rates:
        ol = measured(server, lambda: load.weir_load(server, args.duration, rate), pc)
        ol["rate_ok"] = abs(ol["throughput_rps"] - rate) <= RATE_TOLERANCE * rate
        note_failures(f"rate {rate:g}", ol)
        out["rates"][f"{rate:g}"] = ol
    lat = " ".join(
        f"{r}/s p99 {o['latency_us']['p99']}us{'' if o['rate_ok'] else ' (rate missed)'}"
        for r, o in out["rates"].items())
    other = [r.get("other_load_on_proxy_cpu") for r in (wrk, wl)]
    other_txt = "" if None in other else f"  other load on proxy CPU {max(other):.0%}"
    log(f"  {v.key:<17} wrk {wrk['throughput_rps']:>9.0f}/s  weir-load {wl['throughput_rps']:>9.0f}/s  "
        f"cpu {wrk['cpu_us_per_req'] or 0:.1f}/{wl['cpu_us_per_req'] or 0:.1f} us/req  {lat}{other_txt}")
    return out


def summarize(variants: list[Variant], rounds: list[dict], rates: list[float],
              rss: dict[str, dict]) -> dict:
    keys = [v.key for v in variants]
    present = set(keys)

    def series(key: str, get: Callable[[dict], float | None]) -> list[float | None]:
        vals = []
        for rd in rounds:
            r = rd["results"].get(key)
            try:
                vals.append(get(r) if r else None)
            except (KeyError, TypeError):
                vals.append(None)
        return vals

    metrics: dict[str, Callable[[dict], float | None]] = {
        "wrk_rps": lambda r: r["wrk"]["throughput_rps"],
        "weir_load_rps": lambda r: r["weir_load"]["throughput_rps"],
        "cpu_us_per_req_wrk": lambda r: r["wrk"]["cpu_us_per_req"],
        "cpu_us_per_req_weir_load": lambda r: r["weir_load"]["cpu_us_per_req"],
    }
    for rate in rates:
        k = f"{rate:g}"
        metrics[f"rate_{k}_achieved"] = lambda r, k=k: r["rates"][k]["throughput_rps"]
        metrics[f"rate_{k}_cpu_us_per_req"] = lambda r, k=k: r["rates"][k]["cpu_us_per_req"]
        for p in ("p50", "p99", "p99_9"):
            metrics[f"rate_{k}_{p}_us"] = lambda r, k=k, p=p: r["rates"][k]["latency_us"][p]

    ratio_metrics = ["wrk_rps", "weir_load_rps", "cpu_us_per_req_wrk", "cpu_us_per_req_weir_load"] + [
        f"rate_{r:g}_p99_us" for r in rates]

    out: dict = {}
    for v in variants:
        s: dict = {"label": v.label, "values": {}, "ratios": {}, "rss": rss.get(v.key)}
        vals = {m: series(v.key, get) for m, get in metrics.items()}
        for m, xs in vals.items():
            s["values"][m] = spread(xs)
        refs = [r for r in REFERENCES if r in present and r != v.key]
        if v.plugin and "weir" in present:
            refs.append("weir")
        for ref in refs:
            s["ratios"][ref] = {}
            ref_vals = {m: series(ref, metrics[m]) for m in ratio_metrics}
            for m in ratio_metrics:
                per_round = [a / b if a is not None and b else None
                             for a, b in zip(vals[m], ref_vals[m])]
                s["ratios"][ref][m] = spread(per_round)
        s["rate_missed_rounds"] = {
            f"{r:g}": sum(1 for rd in rounds
                          if rd["results"].get(v.key) and not rd["results"][v.key]["rates"][f"{r:g}"]["rate_ok"])
            for r in rates}
        s["failed_requests"] = sum(
            (rd["results"][v.key]["wrk"]["failed"] + rd["results"][v.key]["weir_load"]["failed"]
             + sum(o["failed"] for o in rd["results"][v.key]["rates"].values()))
            for rd in rounds if rd["results"].get(v.key))
        out[v.key] = s
    return out


# ----------------------------------------------------------------------------------------
# Reporting.


def f_rps(s: dict | None) -> str:
    return "–" if not s else f"{s['median']:,.0f}"


def f_ratio(s: dict | None, spread_too: bool = True) -> str:
    if not s:
        return "–"
    if not spread_too or s["n"] < 2:
        return f"{s['median']:.2f}x"
    return f"{s['median']:.2f}x ({s['min']:.2f}–{s['max']:.2f})"


def f_us(x: float | None) -> str:
    if x is None:
        return "–"
    if x < 1000:
        return f"{x:.0f} µs"
    if x < 1e6:
        return f"{x / 1000:.2f} ms"
    return f"{x / 1e6:.2f} s"


def f_cpu(s: dict | None) -> str:
    return "–" if not s else f"{s['median']:.1f}"


def f_mib(kib: int | None) -> str:
    return "–" if kib is None else f"{kib / 1024:.1f} MiB"


def targets_lines(summary: dict, rates: list[float]) -> list[str]:
    """DESIGN.md "Performance budget" / issue 4 targets, checked against the medians."""
    lines = []

    def ratio(key, ref, m):
        return summary.get(key, {}).get("ratios", {}).get(ref, {}).get(m)

    def verdict(s, goal, higher=True):
        """Met or missed by the median; and whether every round agrees. When the rounds
        fall on both sides of the goal, the median alone decides nothing on a noisy
        machine: benches/paired.py measures such ratios with both proxies loaded at once."""
        if s is None:
            return "not measured"
        x = s["median"]
        ok = x >= goal if higher else x <= goal
        if ok:
            out = f"{x:.2f}x: met"
        else:
            miss = (goal - x) / goal if higher else (x - goal) / goal
            out = f"{x:.2f}x: missed by {miss:.0%}"
        lo, hi = s["min"], s["max"]
        if s["n"] > 1:
            if (lo >= goal) if higher else (hi <= goal):
                out += ", in every round"
            elif (hi < goal) if higher else (lo > goal):
                out += ", in every round"
            else:
                out += (f" at the median, but rounds ranged {lo:.2f}x–{hi:.2f}x across the goal: "
                        "inconclusive here (benches/paired.py measures it with both loaded at once)")
        return out

    if "weir" in summary:
        for m, tool in (("wrk_rps", "wrk"), ("weir_load_rps", "weir-load")):
            lines.append(f"weir / pingora-baseline throughput ({tool}) ≥ 0.95x — "
                         f"{verdict(ratio('weir', 'pingora-baseline', m), 0.95)}")
        for m, tool in (("wrk_rps", "wrk"), ("weir_load_rps", "weir-load")):
            x = ratio("weir", "nginx", m)
            lines.append(f"weir / nginx throughput ({tool}): next mark 0.6x — {verdict(x, 0.6)}; "
                         f"aim 1.0x — {verdict(x, 1.0)}")
        for r in rates:
            k = f"{r:g}"
            missed = {key: summary[key]["rate_missed_rounds"][k] for key in ("weir", "nginx")
                      if key in summary}
            if any(2 * n > summary[key]["values"]["wrk_rps"]["n"] for key, n in missed.items()
                   if summary[key]["values"]["wrk_rps"]):
                who = " and ".join(key for key, n in missed.items() if n)
                lines.append(f"weir p99 at {r:g} req/s ≤ 1.5x nginx's — not comparable: {who} "
                             "could not sustain the rate in most rounds (overloaded)")
            else:
                lines.append(f"weir p99 at {r:g} req/s ≤ 1.5x nginx's — "
                             f"{verdict(ratio('weir', 'nginx', f'rate_{k}_p99_us'), 1.5, higher=False)}")
    for key, goal in (("weir-1-plugin", 0.9), ("weir-3-plugins", 0.8)):
        if key in summary:
            lines.append(f"{key} / weir throughput (wrk) ≥ {goal}x — "
                         f"{verdict(ratio(key, 'weir', 'wrk_rps'), goal)}")
    if "weir-3-plugins" in summary:
        s = summary["weir-3-plugins"]["values"]["wrk_rps"]
        lines.append(f"weir-3-plugins ≥ 20k req/s — {f_rps(s)} req/s")
        rss = (summary["weir-3-plugins"].get("rss") or {}).get("hwm_kib")
        lines.append(f"weir-3-plugins peak RSS < 64 MiB — {f_mib(rss)}")
    return lines


def render_markdown(meta: dict, summary: dict, variants: list[Variant], rates: list[float],
                    problems: list[str]) -> str:
    L = []
    m = meta["machine"]
    if meta["smoke"]:
        L.append("**Smoke run** (`--smoke`): one short round, usually of a debug build; it shows "
                 "the harness works, the numbers mean nothing.")
        L.append("")
    L.append(f"Machine: {m['cpu_model']}, {m['nproc']} CPUs, Linux {m['kernel']}; {m['date']}. "
             f"Load average at start {m['loadavg_start']}, at end {meta.get('loadavg_end', '?')}.")
    L.append("")
    tv = meta["versions"]
    L.append(f"Command: `{meta['command']}`  ")
    built = meta.get("binaries_built") or {}
    built_txt = ", ".join(f"{k} {t}" for k, t in built.items())
    L.append(f"Build: {meta['bin_dir']} ({built_txt}; working tree at git {tv.get('git', '?')}); "
             f"nginx {tv.get('nginx', '?')}; "
             f"wrk {tv.get('wrk', '?')}.  ")
    L.append(f"Pinning: {meta['pinning']}.  ")
    L.append(f"Rounds: {meta['rounds']} measured"
             + (" after a discarded warm-up round" if meta["warmup_round"] else "")
             + f", the order of the variants rotated each round; {fmt_secs(meta['duration'])} per "
             f"measurement, {meta['connections']} connections, one client thread"
             + (f", {fmt_secs(meta['warmup'])} of warm-up load before each variant's block"
                if meta["warmup"] else "") + ".  ")
    noise = meta.get("noise") or {}
    ol = noise.get("other_load_on_proxy_cpu")
    hp = noise.get("heavy_processes_by_round") or {}
    L.append("Noise: "
             + (f"other processes kept the proxy's CPU busy {ol['median']:.0%} of the time in the "
                f"median closed-loop measurement (min–max {ol['min']:.0%}–{ol['max']:.0%}; "
                "from /proc/stat: that CPU's user+system+steal time minus the proxy's own); "
                if ol else "")
             + ("compilers running: " + "; ".join(f"{r}: {', '.join(n)}" for r, n in hp.items())
                if hp else "no compiler processes seen during the rounds") + ".")
    L.append("")
    L.append("#### Max throughput (closed loop)")
    L.append("")
    L.append("Requests/s: median over rounds. Ratios: median of the per-round ratios, (min–max) "
             "across rounds. CPU: the measured process's user+system CPU time over the run "
             "divided by the requests completed (wrk run / weir-load run). For *direct* the "
             "measured process is the echo upstream.")
    L.append("")
    L.append("| variant | wrk req/s | weir-load req/s | vs nginx (wrk) | vs nginx (weir-load) "
             "| vs pingora-baseline (wrk) | vs pingora-baseline (weir-load) | CPU µs/req (wrk / weir-load) "
             "| CPU vs nginx | peak RSS |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for v in variants:
        s = summary[v.key]
        def rat(ref: str, m: str, spread_too: bool = True) -> str:
            if v.key == ref:
                return "1"
            return f_ratio(s["ratios"].get(ref, {}).get(m), spread_too)

        L.append(
            f"| {v.label} | {f_rps(s['values']['wrk_rps'])} | {f_rps(s['values']['weir_load_rps'])} "
            f"| {rat('nginx', 'wrk_rps')} | {rat('nginx', 'weir_load_rps')} "
            f"| {rat('pingora-baseline', 'wrk_rps')} | {rat('pingora-baseline', 'weir_load_rps')} "
            f"| {f_cpu(s['values']['cpu_us_per_req_wrk'])} / {f_cpu(s['values']['cpu_us_per_req_weir_load'])} "
            f"| {rat('nginx', 'cpu_us_per_req_wrk', False)} "
            f"| {f_mib((s.get('rss') or {}).get('hwm_kib'))} |")
    plugin_vs = [v for v in variants if v.plugin]
    if plugin_vs:
        L.append("")
        L.append("| variant | vs weir (wrk) | vs weir (weir-load) | CPU vs weir |")
        L.append("|---|--:|--:|--:|")
        for v in plugin_vs:
            r = summary[v.key]["ratios"].get("weir", {})
            L.append(f"| {v.label} | {f_ratio(r.get('wrk_rps'))} | {f_ratio(r.get('weir_load_rps'))} "
                     f"| {f_ratio(r.get('cpu_us_per_req_wrk'), False)} |")
    L.append("")
    L.append("#### Latency at fixed rates (open loop)")
    L.append("")
    L.append(f"weir-load -r RATE, {meta['connections']} connections, latency corrected for "
             "coordinated omission; medians over rounds. *achieved* is the median achieved rate; "
             f"a rate more than {RATE_TOLERANCE:.0%} off in some round is flagged with the "
             "number of such rounds.")
    L.append("")
    L.append("| variant | rate | achieved | p50 | p99 | p99.9 | p99 vs nginx | CPU µs/req |")
    L.append("|---|--:|--:|--:|--:|--:|--:|--:|")
    for rate in rates:
        k = f"{rate:g}"
        for v in variants:
            s = summary[v.key]
            vals = s["values"]
            ach = vals[f"rate_{k}_achieved"]
            missed = s["rate_missed_rounds"][k]
            ach_txt = f_rps(ach) + (f" ⚠ missed in {missed}/{meta['rounds']}" if missed else "")
            med = lambda name: (vals[name] or {}).get("median")  # noqa: E731
            r_ng = s["ratios"].get("nginx", {}).get(f"rate_{k}_p99_us")
            L.append(f"| {v.label} | {rate:,.0f} | {ach_txt} | {f_us(med(f'rate_{k}_p50_us'))} "
                     f"| {f_us(med(f'rate_{k}_p99_us'))} | {f_us(med(f'rate_{k}_p99_9_us'))} "
                     f"| {(f_ratio(r_ng) + (' ⚠' if missed else '')) if v.key != 'nginx' else '1'} "
                     f"| {f_cpu(vals[f'rate_{k}_cpu_us_per_req'])} |")
    tl = targets_lines(summary, rates)
    if tl:
        L.append("")
        L.append("#### Against the targets (DESIGN.md, \"Performance budget\")")
        L.append("")
        L += [f"- {t}" for t in tl]
    L.append("")
    L.append("#### Problems seen in this run")
    L.append("")
    # First lines only; log tails are on stderr and in the JSON.
    lines = [f"- {p.splitlines()[0]}" for p in problems]
    for rate in rates:
        k = f"{rate:g}"
        for v in variants:
            missed = summary[v.key]["rate_missed_rounds"][k]
            if missed:
                a = summary[v.key]["values"][f"rate_{k}_achieved"]
                lines.append(
                    f"- {v.label}: {rate:,.0f} req/s not achieved (within {RATE_TOLERANCE:.0%}) in "
                    f"{missed} of {meta['rounds']} rounds; achieved {a['min']:,.0f}–{a['max']:,.0f} "
                    "req/s: its latencies in those rounds are those of an overloaded proxy.")
    if lines:
        L += lines
    else:
        L.append("- none (every process started, every request succeeded, every rate achieved)")
    return "\n".join(L) + "\n"


BENCHMARKS_TEMPLATE = f"""# Benchmarks

## Results

{RESULTS_BEGIN}
{RESULTS_END}
"""


def write_benchmarks(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else BENCHMARKS_TEMPLATE
    block = f"{RESULTS_BEGIN}\n{body}{RESULTS_END}"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        pre = text.split(RESULTS_BEGIN, 1)[0]
        post = text.split(RESULTS_END, 1)[1]
        text = pre + block + post
    else:
        text = text.rstrip("\n") + "\n\n## Results\n\n" + block + "\n"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# ----------------------------------------------------------------------------------------


def parse_args(argv: list[str]):
    ap = argparse.ArgumentParser(
        description="Weir vs nginx, nginx+Lua and a bare Pingora proxy, measured side by side.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("What it does:")[1] if __doc__ else None,
    )
    ap.add_argument("--rounds", type=int, default=None, help="measured rounds (default 5; 1 with --smoke)")
    ap.add_argument("--duration", type=parse_duration, default=None,
                    help="length of each measurement (default 10s; 2s with --smoke)")
    ap.add_argument("--warmup", type=parse_duration, default=None,
                    help="warm-up load before each variant's block in a round, not counted "
                         "(default 3s; 0 with --smoke)")
    ap.add_argument("--connections", type=int, default=50, help="client connections (default 50)")
    ap.add_argument("--rates", default=None,
                    help="open-loop rates, comma-separated req/s (default 5000,20000; 1000 with --smoke)")
    ap.add_argument("--smoke", action="store_true",
                    help="CI mode: 1 short round, 1 rate, no warm-up round, debug build, no BENCHMARKS.md")
    ap.add_argument("--bin-dir", type=Path, default=None,
                    help="where the binaries are (default target/release; target/debug with --smoke)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md",
                    help="markdown file whose results section is rewritten (not with --smoke)")
    ap.add_argument("--json", type=Path, default=None, help="write every number as JSON here")
    ap.add_argument("--variants", default=None,
                    help="comma-separated subset of: " + ", ".join(v.key for v in VARIANTS))
    ap.add_argument("--no-warmup-round", action="store_true", help="skip the discarded warm-up round")
    a = ap.parse_args(argv)
    a.rounds = a.rounds if a.rounds is not None else (1 if a.smoke else 5)
    a.duration = a.duration if a.duration is not None else (2.0 if a.smoke else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (0.0 if a.smoke else 3.0)
    if a.rates is None:
        a.rates = "1000" if a.smoke else "5000,20000"
    try:
        a.rate_list = [float(x) for x in a.rates.split(",") if x.strip()]
    except ValueError:
        ap.error(f"bad --rates {a.rates!r}")
    if a.smoke:
        a.rate_list = a.rate_list[:1]
    if a.rounds < 1 or a.duration <= 0 or a.connections < 1 or any(r <= 0 for r in a.rate_list):
        ap.error("--rounds, --duration, --connections and --rates must be positive")
    if a.bin_dir is None:
        target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
        a.bin_dir = target / ("debug" if a.smoke else "release")
    elif not a.bin_dir.is_absolute():
        a.bin_dir = (Path.cwd() / a.bin_dir).resolve()
    a.warmup_round = not a.smoke and not a.no_warmup_round
    keys = [v.key for v in VARIANTS]
    if a.variants:
        want = [k.strip() for k in a.variants.split(",") if k.strip()]
        bad = [k for k in want if k not in keys]
        if bad:
            ap.error(f"unknown variant(s) {', '.join(bad)}; known: {', '.join(keys)}")
        a.variant_list = [v for v in VARIANTS if v.key in want]
    else:
        a.variant_list = list(VARIANTS)
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = "python3 benches/compare.py" + ("" if not argv else " " + shlex.join(argv))
    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="weir-compare-"))
    problems: list[str] = []
    failures: list[str] = []  # failed requests (the exit status)
    start_failed = False

    def on_signal(signum, _frame):
        raise Interrupted(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not args.no_build:
            build(args.smoke)
        variants = args.variant_list
        want_lua = any(v.needs_lua for v in variants)
        problems += ensure_tools(want_lua)
        nginx = find_nginx()
        lua_modules = find_lua_modules(nginx)
        bins = stage_binaries(args.bin_dir, tmp)
        pin = plan_pinning()
        log(f"pinning: {pin.note}")
        if pin.proxy_cpu is None:
            problems.append(f"CPU pinning off: {pin.note}")
        else:
            # Keep this script's own polling off the proxy's CPU.
            os.sched_setaffinity(0, {pin.client_cpu})
        meta = {
            "command": command,
            "machine": machine_description(),
            "versions": tool_versions(nginx) if nginx else {},
            "bin_dir": os.path.relpath(args.bin_dir, REPO) if args.bin_dir.is_relative_to(REPO) else str(args.bin_dir),
            # copy2 kept the mtimes: when each binary was built (the tree may have moved on)
            "binaries_built": {k: dt.datetime.fromtimestamp(b.stat().st_mtime, dt.timezone.utc)
                               .strftime("%Y-%m-%d %H:%M UTC") for k, b in bins.items()},
            "pinning": pin.note,
            "rounds": args.rounds,
            "warmup_round": args.warmup_round,
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "rates": args.rate_list,
            "smoke": args.smoke,
            "variants": {v.key: v.label for v in variants},
            "lua_modules": [str(m) for m in lua_modules or []],
        }

        # The echo upstream, then each variant.
        try:
            upstream, up_port = start_echo_upstream(procs, bins, pin, tmp)
        except Fatal:
            start_failed = True
            raise
        log(f"echo upstream on 127.0.0.1:{up_port} (pid {upstream.pid})")

        ctx = Ctx(tmp, bins, pin, procs, up_port, upstream, nginx, lua_modules)
        servers: dict[str, Server] = {}
        for v in variants:
            try:
                servers[v.key] = v.start(ctx)
            except Fatal as e:
                start_failed = True
                raise Fatal(f"{v.key}: {e}") from e
            s = servers[v.key]
            log(f"{v.key} on 127.0.0.1:{s.port} (pid {s.proc.pid}): {shlex.join(map(str, s.argv))}")
        meta["commands"] = {k: shlex.join(map(str, s.argv)) for k, s in servers.items()}

        load = Load(bins, pin, args.connections)
        total = args.rounds + (1 if args.warmup_round else 0)
        rounds: list[dict] = []
        dead: set[str] = set()
        n = len(variants)
        for i in range(total):
            warm = args.warmup_round and i == 0
            label = "warm-up round" if warm else f"round {i if args.warmup_round else i + 1}"
            order = variants[i % n:] + variants[:i % n]
            log(f"{label}/{args.rounds}: {' '.join(v.key for v in order)}")
            rd = {"round": label, "discarded": warm, "order": [v.key for v in order], "results": {},
                  "heavy_processes": heavy_processes()}
            if rd["heavy_processes"]:
                log(f"  other heavy processes running: {', '.join(rd['heavy_processes'])}")
            for v in order:
                if v.key in dead:
                    continue
                try:
                    rd["results"][v.key] = run_variant_block(
                        v, servers[v.key], load, args, args.rate_list, problems, failures, label)
                except Fatal as e:
                    # One variant failing does not throw away the others' numbers.
                    p = servers[v.key].proc
                    msg = f"{label}: {v.key}: {e}"
                    if p.alive() and p is not upstream:
                        try:
                            s = servers[v.key]
                            ok = http_get(s.port, headers=s.headers)[0] == 200
                        except (OSError, http.client.HTTPException):
                            ok = False
                        if not ok:
                            msg += f" (alive but no longer answering; log:\n{p.log_tail()})"
                            dead.add(v.key)
                    else:
                        dead.add(v.key)
                    problems.append(msg)
                    failures.append(msg)
                    log(f"  !! {msg}")
                    if v.key in dead:
                        log(f"  !! {v.key} dropped from the remaining rounds")
                rd["heavy_processes"] = sorted(set(rd["heavy_processes"]) | set(heavy_processes()))
            if warm:
                meta["warmup_round_results"] = rd
            else:
                rounds.append(rd)

        rss = {}
        for k, s in servers.items():
            rss[k] = {"hwm_kib": proc_status_kib(s.proc.pid, "VmHWM"),
                      "rss_kib": proc_status_kib(s.proc.pid, "VmRSS")}
            if not s.proc.alive() and k not in dead:
                problems.append(f"{k} died during the run (status {s.proc.popen.returncode}):\n"
                                f"{s.proc.log_tail()}")
                start_failed = True
        try:
            meta["machine"]["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            meta["loadavg_end"] = meta["machine"]["loadavg_end"]
        except OSError:
            pass

        others = [m["other_load_on_proxy_cpu"] for rd in rounds for res in rd["results"].values()
                  for m in (res["wrk"], res["weir_load"]) if m.get("other_load_on_proxy_cpu") is not None]
        meta["noise"] = {
            "other_load_on_proxy_cpu": spread(others),
            "heavy_processes_by_round": {rd["round"]: rd["heavy_processes"] for rd in rounds
                                         if rd["heavy_processes"]},
        }
        summary = summarize(variants, rounds, args.rate_list, rss)
        md = render_markdown(meta, summary, variants, args.rate_list, problems)
        print(md)
        if args.json:
            args.json.write_text(json.dumps(
                {"meta": meta, "summary": summary, "rounds": rounds, "problems": problems},
                indent=2, default=str) + "\n")
            log(f"wrote {args.json}")
        if not args.smoke:
            write_benchmarks(args.out, md)
            log(f"rewrote the results section of {args.out}")
        if start_failed or failures:
            log("FAILED: " + ("a process failed" if start_failed else "some requests failed"))
            return 1
        return 0
    except Fatal as e:
        log(f"FAILED: {e}")
        return 1
    except Interrupted as e:
        log(f"interrupted ({e}); stopping everything")
        return 130
    finally:
        # Ignore further signals while cleaning up, so cleanup itself is not cut short.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

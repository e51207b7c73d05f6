#!/usr/bin/env python3
"""Paired, concurrent comparison of two proxies' CPU cost per request: a measure that
holds still on a shared, noisy machine where compare.py's one-after-the-other rounds
do not (there, one variant's throughput moves by 30% between rounds as neighbours come
and go, and ratios of 5% drown).

    python3 benches/paired.py --no-build                  # the default pairs, 15 windows
    python3 benches/paired.py --no-build --pairs weir/pingora-baseline --windows 30
    python3 benches/paired.py --no-build --pairs weir/weir   # A/A: how much the method errs
    python3 benches/paired.py --smoke                     # CI: one short window, debug build

For a pair A/B, both proxies run pinned to the same CPU (the first), each loaded by its
own wrk (closed loop, `--connections` connections) on the second CPU for the same
window, at the same time. Whatever else the machine does during the window (steal time,
a neighbour's cache traffic, frequency changes) falls on both alike. Per window, each
proxy's CPU time (all its threads' run time, user and system, in ns from
/proc/PID/task/*/schedstat) is divided by the requests its wrk completed; the pair's
ratio is B's CPU per request over A's, that is A's throughput relative to B's at equal
CPU (above 1: A is cheaper). The scheduler shares the CPU between the two fairly, so the
ratio of their request rates in the window says the same; both are reported.

The ratio is the median over windows (pairs take turns within a window, in rotating
order), with its min-max and interquartile range. An A/A pair (`weir/weir`, two
instances of the same build) shows the method's own error. What it does not see:
anything that would make one proxy slower without using more CPU (waiting on locks or
timers), and the proxies share one CPU's caches, which may favour the smaller one.

Standard library only; reuses compare.py's variants (the same configurations, the same
echo upstream). Every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402  (the harness this one shares its variants with)
from compare import Fatal, log  # noqa: E402

DEFAULT_PAIRS = "weir/pingora-baseline,weir-1-plugin/weir,weir-3-plugins/weir,weir-log/weir,weir/weir"
# The throughput targets of issues 2 and 3 that are ratios of two variants.
TARGETS = {"weir/pingora-baseline": 0.95, "weir/nginx": 0.6, "weir-1-plugin/weir": 0.9,
           "weir-3-plugins/weir": 0.8}
# How far two runs of the same code may differ (BENCHMARKS.md, "Paired runs").
ERROR = 0.02


def run_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far (user and system), in ns."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between the listing and the read
    return total


def wrk_argv(pin: compare.Pinning, server: compare.Server, connections: int, secs: int) -> list[str]:
    argv = pin.prefix(pin.client_cpu) + ["wrk", "-t1", f"-c{connections}", f"-d{secs}s"]
    for k, v in server.headers.items():
        argv += ["-H", f"{k}: {v}"]
    return argv + [f"http://127.0.0.1:{server.port}/"]


@dataclass
class Side:
    key: str
    server: compare.Server


def window(pin: compare.Pinning, a: Side, b: Side, connections: int, secs: int,
           first: str = "a") -> dict:
    """Loads A and B at once for `secs` (A's load started first, or B's with
    `first="b"`); each one's CPU per request and request rate."""
    for s in (a, b):
        if not s.server.proc.alive():
            raise Fatal(f"{s.key} died:\n{s.server.proc.log_tail()}")
        if s.server.truncate and s.server.truncate.exists():
            os.truncate(s.server.truncate, 0)  # an access log would otherwise grow by GBs
    c0 = [run_ns(s.server.proc.pid) for s in (a, b)]
    busy0, t0 = compare.cpu_busy_secs(pin.proxy_cpu), time.monotonic()
    # Started in turns (`first`), so that neither side always gets the head start.
    procs = [subprocess.Popen(wrk_argv(pin, s.server, connections, secs), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in ((a, b) if first == "a" else (b, a))]
    if first != "a":
        procs.reverse()
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=secs + 60)
            if p.returncode != 0:
                raise Fatal(f"wrk failed (status {p.returncode}): {err.strip()[-500:]}")
            outs.append(compare.parse_wrk(out))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    c1 = [run_ns(s.server.proc.pid) for s in (a, b)]
    busy1, t1 = compare.cpu_busy_secs(pin.proxy_cpu), time.monotonic()
    res = {}
    for s, r, x0, x1 in zip((a, b), outs, c0, c1):
        failed = r["errors"] + r["non_2xx_3xx"]
        if failed or not r["requests"]:
            raise Fatal(f"{s.key}: {failed} failed requests, {r['requests']} in all, in the window")
        res[s.key] = {"requests": r["requests"], "rps": r["throughput_rps"],
                      "cpu_us_per_req": (x1 - x0) / 1e3 / r["requests"]}
    ra, rb = res[a.key], res[b.key]
    return {
        "a": ra, "b": rb,
        "cpu_ratio": rb["cpu_us_per_req"] / ra["cpu_us_per_req"],
        "rps_ratio": ra["rps"] / rb["rps"],
        # How busy the proxies' CPU was, all processes: near 1 when the proxies, not the
        # clients, set the pace.
        "proxy_cpu_busy": None if busy0 is None or busy1 is None else (busy1 - busy0) / (t1 - t0),
    }


def stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q1": q[0], "q3": q[2],
            "n": len(xs)}


def twin(v: compare.Variant) -> compare.Variant:
    """A second instance of a Weir variant (for A/A pairs): same config, own directory."""
    start = v.start
    if not isinstance(start, partial) or start.func is not compare.start_weir:
        raise Fatal(f"an A/A pair needs a Weir variant; {v.key} is not one")
    return compare.Variant(v.key + "#2", v.label + " (second instance)",
                           partial(start.func, *start.args, **{**start.keywords, "name": v.key + "-2"}))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", default=DEFAULT_PAIRS,
                    help=f"comma-separated A/B pairs of compare.py variants (default {DEFAULT_PAIRS})")
    ap.add_argument("--windows", type=int, default=15, help="measured windows per pair (default 15)")
    ap.add_argument("--window", type=compare.parse_duration, default=3.0,
                    help="length of a window, whole seconds (default 3s)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections per proxy (default 50)")
    ap.add_argument("--bin-dir", type=Path, default=None,
                    help="where the binaries are (default $CARGO_TARGET_DIR or target, "
                         "then release; debug with --smoke)")
    ap.add_argument("--no-build", action="store_true", help="do not run cargo build")
    ap.add_argument("--smoke", action="store_true",
                    help="CI: one 1 s window per pair, debug build; shows the script works, "
                         "the numbers mean nothing")
    ap.add_argument("--json", type=Path, help="write every window's numbers as JSON here")
    args = ap.parse_args(argv)
    if args.bin_dir is None:
        target = Path(os.environ.get("CARGO_TARGET_DIR") or compare.REPO / "target")
        args.bin_dir = target / ("debug" if args.smoke else "release")
    if args.smoke:
        args.windows, args.window = 1, 1.0
    known = {v.key: v for v in compare.VARIANTS}
    pairs = []
    for p in args.pairs.split(","):
        a, _, b = p.strip().partition("/")
        if a not in known or b not in known:
            ap.error(f"unknown variant in pair {p!r}; known: {', '.join(known)}")
        if a == "direct" or b == "direct":
            ap.error("direct has no proxy to measure")
        pairs.append((a, b))
    secs = max(1, round(args.window))
    if args.windows < 1:
        ap.error("--windows must be at least 1")

    procs = compare.Procs()
    tmp = Path(tempfile.mkdtemp(prefix="weir-paired-"))

    def on_signal(signum, _frame):
        raise compare.Interrupted(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    try:
        if not args.no_build:
            compare.build(smoke=args.smoke)
        want_lua = any(known[k].needs_lua for pair in pairs for k in pair)
        for problem in compare.ensure_tools(want_lua):
            log(problem)
        pin = compare.plan_pinning()
        if pin.proxy_cpu is None:
            raise Fatal(f"paired runs need two CPUs: {pin.note}")
        os.sched_setaffinity(0, {pin.client_cpu})
        bins = compare.stage_binaries(args.bin_dir, tmp)
        upstream, up_port = compare.start_echo_upstream(procs, bins, pin, tmp)
        nginx = compare.find_nginx()
        ctx = compare.Ctx(tmp, bins, pin, procs, up_port, upstream, nginx,
                          compare.find_lua_modules(nginx))
        servers: dict[str, compare.Server] = {}
        sides = []
        for a, b in pairs:
            keys = (a, b) if a != b else (a, a + "#2")
            for k in keys:
                if k not in servers:
                    v = twin(known[a]) if k.endswith("#2") else known[k]
                    servers[k] = v.start(ctx)
                    log(f"{k} on 127.0.0.1:{servers[k].port} (pid {servers[k].proc.pid})")
            sides.append((Side(keys[0], servers[keys[0]]), Side(keys[1], servers[keys[1]])))
        # Warm-up: every pair once, not counted.
        for a, b in sides:
            window(pin, a, b, args.connections, 1)
        results: dict[str, list[dict]] = {f"{a.key}/{b.key}": [] for a, b in sides}
        for i in range(args.windows):
            order = sides[i % len(sides):] + sides[:i % len(sides)]
            for a, b in order:
                w = window(pin, a, b, args.connections, secs, "ab"[i % 2])
                results[f"{a.key}/{b.key}"].append(w)
                log(f"window {i + 1}/{args.windows} {a.key}/{b.key}: cpu ratio {w['cpu_ratio']:.3f}, "
                    f"rps ratio {w['rps_ratio']:.3f} ({w['a']['cpu_us_per_req']:.1f} vs "
                    f"{w['b']['cpu_us_per_req']:.1f} us/req, proxy CPU busy "
                    f"{(w['proxy_cpu_busy'] or 0):.0%})")
        summary = {}
        print(f"\n`python3 benches/paired.py {' '.join(argv)}`: {args.windows} windows of {secs} s "
              f"per pair, {args.connections} connections per proxy.\n")
        print("| A / B | A's throughput relative to B at equal CPU (median, IQR, min–max) "
              "| request-rate ratio (median) | CPU µs/req A / B (median) | proxy CPU busy |")
        print("|---|--:|--:|--:|--:|")
        for name, ws in results.items():
            c = stats([w["cpu_ratio"] for w in ws])
            r = stats([w["rps_ratio"] for w in ws])
            ua = statistics.median(w["a"]["cpu_us_per_req"] for w in ws)
            ub = statistics.median(w["b"]["cpu_us_per_req"] for w in ws)
            busy = [w["proxy_cpu_busy"] for w in ws if w["proxy_cpu_busy"] is not None]
            busy_txt = f"{statistics.median(busy):.0%}" if busy else "–"
            summary[name] = {"cpu_ratio": c, "rps_ratio": r, "cpu_us_per_req": [ua, ub]}
            print(f"| {name} | {c['median']:.3f}x ({c['q1']:.3f}–{c['q3']:.3f}; {c['min']:.3f}–{c['max']:.3f}) "
                  f"| {r['median']:.3f}x | {ua:.1f} / {ub:.1f} | {busy_txt} |")
        lines = []
        for name in results:
            goal = TARGETS.get(name)
            if goal is None:
                continue
            c = summary[name]["cpu_ratio"]
            x = c["median"]
            if abs(x - goal) <= ERROR * goal:
                how = f"within the method's ±{ERROR:.0%} of it: at the line"
            elif x > goal:
                how = "met"
            else:
                how = f"missed by {(goal - x) / goal:.0%}"
            lines.append(f"- {name} ≥ {goal}x — {x:.3f}x (IQR {c['q1']:.3f}–{c['q3']:.3f}): {how}")
        if args.smoke:
            print("\nSmoke run (--smoke): one short window of a debug build; it shows the "
                  "script works, the numbers mean nothing.")
        elif lines:
            print("\nAgainst the targets:\n")
            print("\n".join(lines))
        if args.json:
            args.json.write_text(json.dumps({"args": vars(args) | {"bin_dir": str(args.bin_dir),
                                                                    "json": str(args.json)},
                                             "summary": summary, "windows": results}, indent=1))
        return 0
    except Fatal as e:
        log(f"!! {e}")
        return 1
    except compare.Interrupted:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

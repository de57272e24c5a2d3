#!/usr/bin/env python3
"""heapsight over jemalloc side by side with jemalloc's own heap profiler, on the real workloads.

    python3 dev/benches/jemalloc.py                       # everything below
    python3 dev/benches/jemalloc.py --only json,seed --rounds 3 --skip-callgrind

Three configurations of the same workload code (`workloads/mod.rs`), over one jemalloc build
(tikv-jemallocator with its `profiling` feature, i.e. jemalloc's --enable-prof):

* `jemalloc`: `wl_jemalloc`, the profiler compiled in but off (jemalloc's default `prof:false`);
* `jemalloc prof`: the same binary with `_RJEM_MALLOC_CONF=prof:true,lg_prof_sample:19`, jemalloc's
  heap profiler sampling every 512 KiB on average (what `jemalloc_pprof` reads);
* `HeapSight<Jemalloc>`: `wl_hs_jemalloc`, heapsight at its default rate (512 KiB) over the same
  jemalloc, with exact counters, sites, labels and the rest.

Measured, in one run:
1. instructions per iteration (one request for axum) with valgrind's callgrind, the slope between
   two iteration counts (start-up and input generation cancel);
2. wall clock, `--rounds` interleaved rounds (each round runs every configuration once, starting
   with a different one), the ratio to jemalloc alone per round: median (range);
3. peak RSS (the kernel's `ru_maxrss` of each wall-clock run): median over the rounds.

Writes nothing outside target/workloads/ and the system temporary directory.
"""
import argparse
import concurrent.futures
import json
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402  (dev/benches/workloads.py: the build)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
OUT = os.path.join(TARGET, "workloads")
PROF = "prof:true,lg_prof_sample:19"

CONFIGS = [  # (label, binary, extra environment)
    ("jemalloc", "wl_jemalloc", {}),
    ("jemalloc prof", "wl_jemalloc", {"_RJEM_MALLOC_CONF": PROF}),
    ("HeapSight<Jemalloc>", "wl_hs_jemalloc", {}),
]
# workload: (callgrind iteration counts, wall-clock iterations); as in workloads.py
WORKLOADS = {"json": ((1, 2), 10), "syn": ((1, 2), 6), "seed": ((1, 2), 3), "axum": ((200, 700), None)}


def build():
    return workloads.build(["wl_jemalloc", "wl_hs_jemalloc"])


def run(cmd, env, timeout):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                       env=dict(os.environ, **env))
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr[-2000:]}")
    return p


def instructions(exe, env, workload, n):
    p = run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", exe, workload, str(n)],
            env, timeout=7200)
    m = re.search(r"==\d+== I\s+refs:\s+([\d,]+)", p.stderr)
    if not m:
        raise RuntimeError(f"no instruction count:\n{p.stderr[-2000:]}")
    return int(m.group(1).replace(",", ""))


def wall(exe, env, workload, n):
    """(ns per iteration, peak RSS in KiB) of one run."""
    t0 = time.time()
    proc = subprocess.Popen([exe, workload, str(n)], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, **env))
    out = proc.stdout.read()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or time.time() - t0 > 900:
        raise RuntimeError(f"{exe} {workload} failed")
    m = re.search(r"elapsed_ns=(\d+)", out)
    return int(m.group(1)) / n, ru.ru_maxrss


def ratio(values):
    med = statistics.median(values)
    return f"{med:.3f}x ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else f"{med:.3f}x"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2, help="callgrind runs at a time")
    ap.add_argument("--skip-callgrind", action="store_true")
    ap.add_argument("--skip-wall", action="store_true")
    a = ap.parse_args()
    workloads = a.only.split(",")
    os.makedirs(OUT, exist_ok=True)
    exes = build()
    results = {"callgrind": {}, "wall": {}, "rss": {}}
    if not a.skip_callgrind:
        print("\n## Instructions per iteration (callgrind, slope between two iteration counts)\n")
        jobs = [(label, w, n) for w in workloads for label, _, _ in CONFIGS for n in WORKLOADS[w][0]]
        by_label = {label: (exes[b], env) for label, b, env in CONFIGS}
        with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
            futs = {j: pool.submit(instructions, *by_label[j[0]], j[1], j[2]) for j in jobs}
            print("| workload | jemalloc instr | jemalloc prof | HeapSight<Jemalloc> | HeapSight / jemalloc prof |")
            print("|---|---|---|---|---|")
            for w in workloads:
                lo, hi = WORKLOADS[w][0]
                per = {label: (futs[label, w, hi].result() - futs[label, w, lo].result()) / (hi - lo)
                       for label, _, _ in CONFIGS}
                results["callgrind"][w] = per
                base = per["jemalloc"]
                print(f"| {w} | {base:,.0f} | {100 * (per['jemalloc prof'] / base - 1):+.1f}% "
                      f"| {100 * (per['HeapSight<Jemalloc>'] / base - 1):+.1f}% "
                      f"| {per['HeapSight<Jemalloc>'] / per['jemalloc prof']:.3f}x |", flush=True)
    if not a.skip_wall:
        print(f"\n## Wall clock and peak RSS, {a.rounds} interleaved rounds\n")
        print("| workload | jemalloc ms/iter | jemalloc prof / jemalloc | HeapSight<Jemalloc> / jemalloc "
              "| peak RSS MiB: jemalloc, prof, HeapSight |")
        print("|---|---|---|---|---|")
        for w in [w for w in workloads if WORKLOADS[w][1]]:
            times = {label: [] for label, _, _ in CONFIGS}
            rss = {label: [] for label, _, _ in CONFIGS}
            for rnd in range(a.rounds):
                order = CONFIGS[rnd % len(CONFIGS):] + CONFIGS[:rnd % len(CONFIGS)]
                for label, b, env in order:
                    t, r = wall(exes[b], env, w, WORKLOADS[w][1])
                    times[label].append(t)
                    rss[label].append(r)
            results["wall"][w], results["rss"][w] = times, rss
            rel = {label: [x / y for x, y in zip(times[label], times["jemalloc"])] for label, _, _ in CONFIGS}
            print(f"| {w} | {statistics.median(times['jemalloc']) / 1e6:.1f} | {ratio(rel['jemalloc prof'])} "
                  f"| {ratio(rel['HeapSight<Jemalloc>'])} | "
                  + ", ".join(f"{statistics.median(rss[label]) / 1024:.1f}" for label, _, _ in CONFIGS) + " |",
                  flush=True)
    with open(os.path.join(OUT, "jemalloc.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Runs every allocator benchmark binary in one go and prints the ratio table.

    python3 dev/benches/compare.py                       # ~12-15 min on 2 cores
    python3 dev/benches/compare.py --quick               # shorter warm-up/measurement, for a smoke test
    python3 dev/benches/compare.py --report-only         # re-print the table from target/criterion
    python3 dev/benches/compare.py --rounds 3            # then the goal kernels again, interleaved
    python3 dev/benches/compare.py --skip-full --rounds 3   # only the interleaved goal kernels

On a shared machine, load that comes and goes while the binaries run one after another moves
whole columns of the table. `--rounds N` reruns the kernels the goals are about
(`pair_32B_1t`, `pair_32B_2t`, `nested_50k`, `nested_500k`) N more times, cycling through all
binaries each round, and judges the goals on the fastest of the N+1 measurements of each
configuration (interference only ever adds time).

Each `dev/benches/alloc_*.rs` binary has its own `#[global_allocator]` and runs the same kernels
(`dev/benches/kernels/mod.rs`); criterion writes `target/criterion/<kernel>/<config>/new/estimates.json`.
Times are criterion's slope estimate (time per iteration from the linear fit over samples of
1, 2, 3... x iterations; fixed per-sample costs such as spawning threads drop out), or the mean
for the slow kernels that use flat sampling. Ratios are taken between configurations measured in
this one run: heapsight over its inner allocator alone, peers over System and over heapsight.
"""
import json
import os
import subprocess
import sys
import time

# The workspace root (this file is dev/benches/X.py): cargo runs there, target/ is there.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRIT = os.environ.get("CRITERION_HOME", os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "criterion"))
# cargo runs bench binaries in dev/; criterion and the kernels write here, where this script reads.
os.environ["CRITERION_HOME"] = CRIT

BINARIES = [
    "alloc_system",
    "alloc_heapsight_system",
    "alloc_mimalloc",
    "alloc_heapsight_mimalloc",
    "alloc_stats_alloc",
    "alloc_tracking",
    "alloc_dhat",
]

KERNELS = [
    "pair_16B_1t", "pair_32B_1t", "pair_64B_1t", "pair_256B_1t", "pair_4096B_1t", "pair_32B_2t",
    "batch_64B_1t", "batch_64B_2t", "larson_1t", "larson_2t", "xfree_2t", "churn_1t", "churn_2t",
    "realloc_1t", "realloc_2t", "large_1t", "large_2t", "nested_50k", "nested_500k",
]

# (column title, configuration, baseline configuration)
COLUMNS = [
    ("hs/sys r0", "hs_system_r0", "system"),
    ("hs/sys 512k", "hs_system_r512k", "system"),
    ("hs/sys r1", "hs_system_r1", "system"),
    ("hs/mi r0", "hs_mimalloc_r0", "mimalloc"),
    ("hs/mi 512k", "hs_mimalloc_r512k", "mimalloc"),
    ("hs/mi r1", "hs_mimalloc_r1", "mimalloc"),
    ("stats/sys", "stats_alloc", "system"),
    ("track/sys", "tracking", "system"),
    ("dhat/sys", "dhat", "system"),
    ("track/hs", "tracking", "hs_system_r512k"),
    ("dhat/hs", "dhat", "hs_system_r512k"),
]


def estimate(kernel, config, stat="slope"):
    path = os.path.join(CRIT, kernel, config, "new", "estimates.json")
    try:
        with open(path) as f:
            e = json.load(f)
    except FileNotFoundError:
        return None
    s = e.get(stat) or e.get("mean")
    return s["point_estimate"] if s else None


def fmt_time(ns):
    if ns is None:
        return "-"
    for unit, div in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= div:
            return f"{ns / div:.3g} {unit}"
    return f"{ns:.3g} ns"


GOAL_KERNELS = ["pair_32B_1t", "pair_32B_2t", "nested_50k", "nested_500k"]
BEST = {}  # (kernel, config, stat) -> fastest estimate seen in this invocation


def remember():
    for k in GOAL_KERNELS:
        d = os.path.join(CRIT, k)
        for cfg in os.listdir(d) if os.path.isdir(d) else []:
            for stat in ("slope", "median"):
                v = estimate(k, cfg, stat)
                if v is not None:
                    key = (k, cfg, stat)
                    BEST[key] = min(BEST.get(key, v), v)


def best(k, cfg, stat="slope"):
    return BEST.get((k, cfg, stat)) or estimate(k, cfg, stat)


def run(args):
    warm, meas = ("0.3", "0.6") if "--quick" in args else ("1", "2")
    subprocess.run(["cargo", "bench", "-p", "heapsight-dev", "--no-run", "--quiet"], cwd=ROOT, check=True)
    os.makedirs(CRIT, exist_ok=True)
    log = open(os.path.join(CRIT, "compare.log"), "w")
    t0 = time.time()
    for b in [] if "--skip-full" in args else BINARIES:
        t = time.time()
        print(f"running {b} ...", end=" ", flush=True)
        subprocess.run(
            ["cargo", "bench", "-p", "heapsight-dev", "--quiet", "--bench", b, "--", "--warm-up-time", warm, "--measurement-time", meas, "--noplot"],
            cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT,
        )
        print(f"{time.time() - t:.0f} s", flush=True)
    if "--skip-full" not in args:
        print(f"all benchmarks: {time.time() - t0:.0f} s (warm-up {warm} s, measurement {meas} s per benchmark)")
        remember()
    rounds = int(args[args.index("--rounds") + 1]) if "--rounds" in args else 0
    pattern = "^(" + "|".join(GOAL_KERNELS) + ")/"
    for r in range(rounds):
        t = time.time()
        for b in BINARIES:
            subprocess.run(
                ["cargo", "bench", "-p", "heapsight-dev", "--quiet", "--bench", b, "--", "--warm-up-time", warm, "--measurement-time", meas, "--noplot", pattern],
                cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT,
            )
            remember()
        print(f"round {r + 1} of the goal kernels: {time.time() - t:.0f} s", flush=True)


def table():
    lines = []
    out = lines.append
    head = f"| {'kernel':<14} | {'system':>9} | {'mimalloc':>9} | " + " | ".join(f"{c[0]:>11}" for c in COLUMNS) + " |"
    out(head)
    out("|" + "|".join("-" * (len(cell) + 0) for cell in head.split("|")[1:-1]) + "|")
    for k in KERNELS:
        cells = [fmt_time(estimate(k, "system")), fmt_time(estimate(k, "mimalloc"))]
        for _, cfg, base in COLUMNS:
            a, b = estimate(k, cfg), estimate(k, base)
            cells.append(f"{a / b:.2f}x" if a and b else "-")
        out(f"| {k:<14} | {cells[0]:>9} | {cells[1]:>9} | " + " | ".join(f"{c:>11}" for c in cells[2:]) + " |")
    return lines


def goals():
    res = []

    def ratio(k, a, b):
        x, y = best(k, a), best(k, b)
        return x / y if x and y else float("nan")

    def check(label, value, ok, unit="x"):
        res.append(f"- {label}: {value:.3g}{unit} ({'meets' if ok(value) else 'MISSES'})")

    r = ratio("pair_32B_1t", "hs_system_r512k", "system")
    check("32 B pair, 1 thread, HeapSight<System> 512 KiB / System <= 1.10", r, lambda v: v <= 1.10)
    r = ratio("pair_32B_1t", "hs_mimalloc_r512k", "mimalloc")
    check("32 B pair, 1 thread, HeapSight<MiMalloc> 512 KiB / mimalloc <= 1.20", r, lambda v: v <= 1.20)
    r = ratio("pair_32B_2t", "hs_system_r512k", "system")
    check("32 B pair, 2 threads (per thread), HeapSight<System> 512 KiB / System <= 1.15", r, lambda v: v <= 1.15)
    r = ratio("nested_500k", "hs_system_r512k", "system")
    check("nested-map 500k, HeapSight<System> 512 KiB / System <= 1.02", r, lambda v: v <= 1.02)
    r = ratio("nested_500k", "hs_mimalloc_r512k", "mimalloc")
    check("nested-map 500k, HeapSight<MiMalloc> 512 KiB / mimalloc <= 1.02", r, lambda v: v <= 1.02)
    r = ratio("nested_500k", "tracking", "hs_system_r512k")
    check("nested-map 500k, tracking-allocator / HeapSight<System> >= 2", r, lambda v: v >= 2)
    r = ratio("nested_50k", "dhat", "hs_system_r512k")
    check("nested-map 50k, dhat / HeapSight<System> >= 50", r, lambda v: v >= 50)
    # Every pair sampled at rate 1: criterion's median over samples of the per-pair time.
    fp = best("pair_32B_1t", "hs_system_r1", "median")
    if fp:
        check("sampled 32 B alloc+free, frame pointers (median) <= 0.3 us", fp / 1e3, lambda v: v <= 0.3, " us")
    dw = best("pair_32B_1t", "hs_system_r1_dwarf", "median")
    if dw:
        check("sampled 32 B alloc+free, DWARF (median) <= 4 us", dw / 1e3, lambda v: v <= 4, " us")
    return res


def memory():
    res = []
    for cfg in ("hs_system_r512k", "hs_mimalloc_r512k"):
        try:
            with open(os.path.join(CRIT, f"profiler_memory_{cfg}.json")) as f:
                m = json.load(f)
        except FileNotFoundError:
            continue
        res.append(
            f"- {cfg}: nested-map 500k heap {m['heap_inuse_bytes'] / 1e6:.1f} MB live; {m['samples']} samples, "
            f"{m['sites']} sites, {m['live_samples']} live samples; profiler memory "
            f"{m['profiler_bytes_before_profile'] / 1e3:.0f} KB before the first profile(), "
            f"{m['profiler_bytes'] / 1e6:.1f} MB while a symbolized profile is held "
            f"(heapsight's symbol cache {m['symbol_cache_bytes'] / 1e3:.0f} KB of it; the rest is the "
            f"snapshot and the debug info `backtrace` loads on first symbolization)"
        )
    return res


def main():
    args = sys.argv[1:]
    if "--report-only" not in args:
        run(args)
    report = ["Ratios (time per iteration; `_2t` = per thread, 2 threads):", ""]
    report += table()
    rounds = "fastest of the full run and the --rounds reruns" if BEST and "--rounds" in args else "this run"
    report += ["", f"Goals ({rounds}):"] + goals()
    mem = memory()
    if mem:
        report += ["", "Profiler memory on the nested-map workload (default rate):"] + mem
    text = "\n".join(report)
    print(text)
    with open(os.path.join(CRIT, "ratio_table.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()

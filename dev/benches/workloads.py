#!/usr/bin/env python3
"""Real workloads: heapsight at the default rate against the same binary over its inner allocator
alone, with the peers side by side, in one run.

    python3 dev/benches/workloads.py                    # the whole table (see docs/benches.md)
    python3 dev/benches/workloads.py --only json,syn    # some workloads
    python3 dev/benches/workloads.py --skip-wall --skip-wrk     # callgrind only

One binary per global allocator (`dev/benches/wl_*.rs`, all running `workloads/mod.rs`): System,
HeapSight<System>, mimalloc, HeapSight<MiMalloc>, stats_alloc, tracking-allocator and dhat.

1. Instructions and D1 misses (deterministic): each binary runs each workload under
   `valgrind --tool=callgrind --cache-sim=yes` at two iteration counts; the difference divided by
   the difference in iterations is the cost of one iteration (one request for `axum`), so start-up,
   input generation and the runtime's threads cancel. dhat is left out (a backtrace per allocation
   under callgrind takes hours); its wall-clock ratio is in step 2.
2. Wall clock, interleaved (not axum, see 3): `--rounds` rounds; each round runs every binary once per workload,
   starting with a different binary each round; the binary times its own loop. Reported: the
   median of the per-round ratios and their range.
3. Throughput of the axum service under `wrk` on 127.0.0.1 (`--wrk-seconds` per run), interleaved
   the same way: requests per second, ratio to the inner allocator per round, median and range.

Writes nothing outside target/workloads/ and the system temporary directory (callgrind's output
goes to /dev/null).
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

# The workspace root (this file is dev/benches/workloads.py): cargo runs there, target/ is there.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
OUT = os.path.join(TARGET, "workloads")

CONFIGS = [  # (binary, label, inner binary for the ratio)
    ("wl_system", "System", None),
    ("wl_hs_system", "HeapSight<System>", "wl_system"),
    ("wl_mimalloc", "mimalloc", None),
    ("wl_hs_mimalloc", "HeapSight<MiMalloc>", "wl_mimalloc"),
    ("wl_stats_alloc", "stats_alloc", "wl_system"),
    ("wl_tracking", "tracking-allocator", "wl_system"),
    ("wl_dhat", "dhat", "wl_system"),
]
# workload: (callgrind iteration counts (low, high), wall-clock iterations, dhat's wall iterations)
WORKLOADS = {
    "json": ((1, 2), 10, 1),
    "syn": ((1, 2), 6, 1),
    "seed": ((1, 2), 3, 1),
    "axum": ((200, 700), 4000, 400),
}
UNIT = {"json": "iteration", "syn": "iteration", "seed": "iteration", "axum": "request"}


def build(names=None):
    """Builds the benches `names` (default: every configuration's) and returns {name: executable}."""
    names = names or [c[0] for c in CONFIGS]
    benches = [a for n in names for a in ("--bench", n)]
    out = subprocess.run(
        ["cargo", "bench", "-p", "heapsight-dev", "--no-run", "--message-format=json", *benches],
        cwd=ROOT, check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    exes = {}
    for line in out.splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue
        if m.get("reason") == "compiler-artifact" and m.get("executable"):
            exes[m["target"]["name"]] = m["executable"]
    missing = [n for n in names if n not in exes]
    if missing:
        sys.exit(f"not built: {missing}")
    return exes


def run(cmd, timeout):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def callgrind(exe, workload, n, cache_sim):
    p = run(["valgrind", "--tool=callgrind", f"--cache-sim={'yes' if cache_sim else 'no'}",
             "--callgrind-out-file=/dev/null", exe, workload, str(n)], timeout=3600)
    def field(name):
        m = re.search(r"==\d+== " + re.escape(name) + r":\s+([\d,]+)", p.stderr)
        if not m:
            raise RuntimeError(f"no '{name}' in callgrind's output:\n{p.stderr[-2000:]}")
        return int(m.group(1).replace(",", ""))
    return field("I   refs"), (field("D1  misses") if cache_sim else 0)


def elapsed_ns(exe, workload, n):
    p = run([exe, workload, str(n)], timeout=900)
    m = re.search(r"elapsed_ns=(\d+)", p.stdout)
    return int(m.group(1)) / n


def fmt_ratio(values):
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.3f}x"
    return f"{med:.3f}x ({min(values):.3f}-{max(values):.3f})"


def wrk_round(exe, port, seconds, script):
    srv = subprocess.Popen([exe, "serve", str(port), str(seconds + 30)], stdout=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"{exe} serve: {line!r}")
        p = run(["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", script, f"http://127.0.0.1:{port}/orders"],
                timeout=seconds + 60)
        m = re.search(r"Requests/sec:\s+([\d.]+)", p.stdout)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", p.stdout)
        if non2xx or not m:
            raise RuntimeError(f"wrk: {p.stdout}")
        return float(m.group(1))
    finally:
        srv.terminate()
        srv.wait(timeout=30)


RESULTS = os.path.join(OUT, "results.json")


def save(results):
    """Kept up to date after every measurement, so an interrupted run leaves what it measured."""
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)


def main():
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved wall-clock rounds")
    ap.add_argument("--wrk-rounds", type=int, default=3)
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--skip-callgrind", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="callgrind runs at a time")
    ap.add_argument("--cache-sim", default=",".join(WORKLOADS),
                    help="workloads whose callgrind runs also simulate the caches (about twice as slow)")
    ap.add_argument("--skip-wall", action="store_true")
    ap.add_argument("--skip-wrk", action="store_true")
    ap.add_argument("--results", default=RESULTS, help="where the raw numbers go (JSON)")
    args = ap.parse_args()
    RESULTS = args.results
    workloads = [w for w in args.only.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS:
            sys.exit(f"unknown workload {w}; known: {', '.join(WORKLOADS)}")
    start = time.time()
    os.makedirs(OUT, exist_ok=True)
    exes = build()
    print(run([exes["wl_system"], "inputs"], timeout=120).stdout, end="")
    results = {"callgrind": {}, "wall": {}, "wrk": {}}

    if not args.skip_callgrind:
        print("\n## Instructions and D1 misses per iteration (callgrind, slope between two iteration counts; "
              f"cache simulation for {args.cache_sim})\n")
        # Every (binary, workload, iterations) run is independent: `--jobs` of them at a time.
        cache = {w: w in args.cache_sim.split(",") for w in workloads}
        jobs = [(exe, w, n) for w in workloads for exe, _, _ in CONFIGS if exe != "wl_dhat"
                for n in WORKLOADS[w][0]]
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = {job: pool.submit(callgrind, exes[job[0]], job[1], job[2], cache[job[1]]) for job in jobs}
            for w in workloads:
                (lo, hi), _, _ = WORKLOADS[w]
                per = {}
                for exe, label, _ in CONFIGS:
                    if exe == "wl_dhat":
                        continue
                    i_lo, d_lo = futures[(exe, w, lo)].result()
                    i_hi, d_hi = futures[(exe, w, hi)].result()
                    per[exe] = ((i_hi - i_lo) / (hi - lo), (d_hi - d_lo) / (hi - lo))
                    print(f"  {w:5} {label:20} {per[exe][0]:>16,.0f} instr/{UNIT[w]}  {per[exe][1]:>12,.0f} D1 misses",
                          flush=True)
                    results["callgrind"][w] = per
                    save(results)
        print()
        head = "| workload (per) | System instr | HeapSight<System> | mimalloc instr | HeapSight<MiMalloc> | stats_alloc | tracking-allocator |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for w, per in results["callgrind"].items():
            def r(exe, base, k=0):
                return f"{per[exe][k] / per[base][k]:.3f}x" if per[base][k] else "-"
            print(f"| {w} ({UNIT[w]}) | {per['wl_system'][0]:,.0f} | {r('wl_hs_system', 'wl_system')} "
                  f"| {per['wl_mimalloc'][0]:,.0f} | {r('wl_hs_mimalloc', 'wl_mimalloc')} "
                  f"| {r('wl_stats_alloc', 'wl_system')} | {r('wl_tracking', 'wl_system')} |")
        print()
        head = "| workload (per) | System D1 misses | HeapSight<System> | mimalloc D1 misses | HeapSight<MiMalloc> | stats_alloc | tracking-allocator |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for w, per in results["callgrind"].items():
            if not cache[w]:
                continue
            def r(exe, base):
                return f"{per[exe][1] / per[base][1]:.3f}x" if per[base][1] else "-"
            print(f"| {w} ({UNIT[w]}) | {per['wl_system'][1]:,.0f} | {r('wl_hs_system', 'wl_system')} "
                  f"| {per['wl_mimalloc'][1]:,.0f} | {r('wl_hs_mimalloc', 'wl_mimalloc')} "
                  f"| {r('wl_stats_alloc', 'wl_system')} | {r('wl_tracking', 'wl_system')} |")

    if not args.skip_wall:
        print(f"\n## Wall clock, {args.rounds} interleaved rounds: ratio to the inner allocator, median (range)\n")
        # Not axum: one request's latency in process is mostly thread wake-ups, which measure the
        # scheduler of a loaded machine; its wall-clock figure is the throughput under wrk below.
        for w in [w for w in workloads if w != "axum"]:
            _, iters, dhat_iters = WORKLOADS[w]
            times = {exe: [] for exe, _, _ in CONFIGS}
            for rnd in range(args.rounds):
                order = CONFIGS[rnd % len(CONFIGS):] + CONFIGS[:rnd % len(CONFIGS)]
                for exe, _, _ in order:
                    n = dhat_iters if exe == "wl_dhat" else iters
                    times[exe].append(elapsed_ns(exes[exe], w, n))
            results["wall"][w] = times
            save(results)
            print(f"  {w}: " + ", ".join(
                f"{label} {statistics.median(times[exe]) / 1e6:.2f} ms" for exe, label, _ in CONFIGS), flush=True)
        print()
        head = "| workload | " + " | ".join(f"{label}/{'System' if base == 'wl_system' else 'mimalloc'}"
                                           for exe, label, base in CONFIGS if base) + " |"
        print(head)
        print("|" + "---|" * (head.count("|") - 1))
        for w, times in results["wall"].items():
            cells = []
            for exe, _, base in CONFIGS:
                if base:
                    cells.append(fmt_ratio([a / b for a, b in zip(times[exe], times[base])]))
            print(f"| {w} | " + " | ".join(cells) + " |")

    if not args.skip_wrk and "axum" in workloads:
        script = os.path.join(OUT, "post.lua")
        body = run([exes["wl_system"], "body"], timeout=60).stdout
        with open(script, "w") as f:
            f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = {json.dumps(body)}\n")
        print(f"\n## axum service under wrk (-t1 -c16 -d{args.wrk_seconds}s, POST /orders), "
              f"{args.wrk_rounds} interleaved rounds\n")
        rps = {exe: [] for exe, _, _ in CONFIGS}
        for rnd in range(args.wrk_rounds):
            order = CONFIGS[rnd % len(CONFIGS):] + CONFIGS[:rnd % len(CONFIGS)]
            for i, (exe, _, _) in enumerate(order):
                rps[exe].append(wrk_round(exes[exe], 18_300 + i, args.wrk_seconds, script))
        results["wrk"] = rps
        print("| configuration | requests/s (median) | throughput vs inner, median (range) |")
        print("|---|---|---|")
        for exe, label, base in CONFIGS:
            ratio = fmt_ratio([a / b for a, b in zip(rps[exe], rps[base])]) if base else "-"
            print(f"| {label} | {statistics.median(rps[exe]):,.0f} | {ratio} |")

    save(results)
    print(f"\n(run time {time.time() - start:.0f} s; raw numbers in {os.path.relpath(RESULTS, ROOT)})")


if __name__ == "__main__":
    main()

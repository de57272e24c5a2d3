#!/usr/bin/env python3
"""Per-operation cost of heapsight through the real entry points, with valgrind's callgrind.

    python3 dev/entry/callgrind.py [N1 N2] [--only KERNEL,...] [--fresh] [--jobs J]

Builds this package (release), then for every binary (allocator configuration) and kernel runs
`valgrind --tool=callgrind --cache-sim=yes`, collecting only inside the kernel function
(`--toggle-collect`), at N1 and N2 iterations (fewer for `vec` and `seed`, see ITERS). The slope
(count(N2) - count(N1)) / (N2 - N1) is the cost of one iteration: start-up, thread set-up,
first-call costs and the warm-up cancel. Prints instructions (Ir) and D1 misses (D1mr + D1mw)
per iteration, and heapsight's addition over the inner allocator alone. Instruction counts do
not depend on machine load.

Every kernel is measured after a warm-up that allocates 8 MiB through it (about 16 samples at
the default rate, taken and freed): the state of a program's hot loop after its first seconds,
not a fresh process. `--fresh` skips the warm-up (ENTRY_NO_WARMUP=1).

Configurations: glibc (System), mimalloc and jemalloc (tikv-jemallocator), each alone, and
HeapSight over each at rate 0 and at the default rate, with the `#[global_allocator]` declared
in the binary crate (`heapsight_*`) or in a library crate that the binary links (`lib_heapsight_*`,
dev/entry/alloc/*). The inner allocator alone is declared in the binary crate.

Kernels (src/lib.rs): pair = alloc + free of 32 B; zeroed = alloc_zeroed + free; realloc =
alloc + realloc + free (minus `pair` gives one realloc); vec = a `Vec<u64>` grown by 64 pushes
from empty and dropped (6 allocator calls); churn = free + alloc in a heap of 20,000 live blocks
of 16..1024 B (addresses spread as in a real heap); seed = the seed workload at a tenth of its
size (`HashMap<String, Vec<String>>`, 50,000 appends over 1,000 keys).
"""
import argparse
import concurrent.futures
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import callgrind_slope  # noqa: E402  (dev/callgrind_slope.py)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))

INNERS = ["system", "mimalloc", "jemalloc"]
# (binary, inner binary it is compared with)
BINS = [(i, None) for i in INNERS] + [
    (f"{decl}heapsight_{i}_{rate}", i)
    for i in INNERS
    for decl in ("", "lib_")
    for rate in ("rate0", "default")
]
KERNELS = ["pair", "zeroed", "realloc", "vec", "churn", "seed"]  # pair4k: threads.py
# Allocator calls per iteration, for the per-call column.
CALLS = {"pair": 2, "zeroed": 2, "realloc": 3, "vec": 6, "churn": 2}


def iters(kernel, n1, n2):
    """The two iteration counts of `kernel`: `vec` does 6 calls per iteration, `seed` ~200,000."""
    if kernel == "seed":
        return 1, 2
    if kernel == "vec":
        return n1 // 4, n2 // 4
    return n1, n2


def per_iteration(exe, kernel, n1, n2, tmp, env):
    """(Ir, D1 misses) per iteration inside `kernel_<kernel>`, inclusive (dev/callgrind_slope)."""
    a, b = iters(kernel, n1, n2)
    d = callgrind_slope.slope_in(
        tmp, exe, [kernel], f"heapsight_entry_bench::kernel_{kernel}", a, b, cache_sim=True, env=env
    )
    return d["Ir"], d.get("D1mr", 0) + d.get("D1mw", 0)


def build():
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bins"],
        cwd=HERE,
        check=True,
        env=dict(os.environ, CARGO_TARGET_DIR=TARGET),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="*", type=int, default=[20_000, 60_000])
    ap.add_argument("--only", default=",".join(KERNELS))
    ap.add_argument("--bins", default="", help="comma-separated subset of the binaries")
    ap.add_argument("--fresh", action="store_true", help="no warm-up (a fresh process)")
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args()
    n1, n2 = a.n
    kernels = a.only.split(",")
    bins = BINS
    if a.bins:
        want = set(a.bins.split(","))
        inners = {inner for b, inner in BINS if b in want and inner}
        bins = [b for b in BINS if b[0] in want or b[0] in inners]
    env = dict(os.environ)
    if a.fresh:
        env["ENTRY_NO_WARMUP"] = "1"
    build()
    per = {}
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        futs = {
            (b, k): ex.submit(per_iteration, os.path.join(TARGET, "release", b), k, n1, n2, tmp, env)
            for b, _ in bins
            for k in kernels
        }
        for key, f in futs.items():
            per[key] = f.result()
    print(f"per iteration, slope between N={n1} and N={n2} (vec: N/4; seed: 1 and 2), "
          f"{'fresh process' if a.fresh else 'after an 8 MiB warm-up'} (callgrind --cache-sim=yes)")
    print(f"{'binary':32} {'kernel':8} {'Ir':>11} {'+Ir':>9} {'+Ir/call':>8} {'+%':>6} {'D1miss':>9} {'+D1':>8}")
    for b, inner in bins:
        for k in kernels:
            ir, d1 = per[b, k]
            if inner:
                bir, bd1 = per[inner, k]
                calls = CALLS.get(k)
                pc = f"{(ir - bir) / calls:+8.1f}" if calls else f"{'':8}"
                print(f"{b:32} {k:8} {ir:11.1f} {ir - bir:+9.1f} {pc} {100 * (ir - bir) / bir:+5.1f}% "
                      f"{d1:9.3f} {d1 - bd1:+8.3f}")
            else:
                print(f"{b:32} {k:8} {ir:11.1f} {'':9} {'':8} {'':6} {d1:9.3f}")
    if "realloc" in kernels and "pair" in kernels:
        print()
        print("realloc alone (realloc kernel minus pair kernel):")
        for b, inner in bins:
            r = per[b, "realloc"][0] - per[b, "pair"][0]
            extra = ""
            if inner:
                extra = f"  ({r - (per[inner, 'realloc'][0] - per[inner, 'pair'][0]):+.1f} over {inner})"
            print(f"  {b:32} {r:7.1f}{extra}")


if __name__ == "__main__":
    main()

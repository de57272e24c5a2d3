#!/usr/bin/env python3
"""Per-operation cost of heapsight through the real entry points, with valgrind's callgrind.

    python3 dev/entry/callgrind.py [N1 N2]

Builds this package (release), then for every binary (allocator configuration) and kernel runs
`valgrind --tool=callgrind --cache-sim=yes`, collecting only inside the kernel function
(`--toggle-collect`), at N1 and N2 iterations. The slope (count(N2) - count(N1)) / (N2 - N1) is
the cost of one iteration: start-up, thread set-up and first-call costs cancel. Prints
instructions (Ir) and D1 misses (D1mr + D1mw) per iteration, and heapsight's addition over the
inner allocator alone. Instruction counts do not depend on machine load.

Kernels (src/lib.rs): pair = alloc + free of 32 B; zeroed = alloc_zeroed + free; realloc =
alloc + realloc + free (minus `pair` gives one realloc); churn = free + alloc in a heap of
20,000 live blocks of 16..1024 B (addresses spread as in a real heap).
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import callgrind_slope  # noqa: E402  (dev/callgrind_slope.py)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))

BINS = [
    ("system", None),
    ("heapsight_system_rate0", "system"),
    ("heapsight_system_default", "system"),
    ("mimalloc", None),
    ("heapsight_mimalloc_rate0", "mimalloc"),
    ("heapsight_mimalloc_default", "mimalloc"),
]
KERNELS = ["pair", "zeroed", "realloc", "churn"]  # pair4k: threads.py


def per_iteration(exe, kernel, n1, n2, tmp):
    """(Ir, D1 misses) per iteration inside `kernel_<kernel>`, inclusive (dev/callgrind_slope)."""
    d = callgrind_slope.slope_in(
        tmp, exe, [kernel], f"heapsight_entry_bench::kernel_{kernel}", n1, n2, cache_sim=True
    )
    return d["Ir"], d.get("D1mr", 0) + d.get("D1mw", 0)


def main():
    n1, n2 = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (100_000, 300_000)
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bins"],
        cwd=HERE,
        check=True,
        env=dict(os.environ, CARGO_TARGET_DIR=TARGET),
    )
    per = {}
    with tempfile.TemporaryDirectory() as tmp:
        for b, _ in BINS:
            exe = os.path.join(TARGET, "release", b)
            for k in KERNELS:
                per[b, k] = per_iteration(exe, k, n1, n2, tmp)
    print(f"per iteration, slope between N={n1} and N={n2} (callgrind --cache-sim=yes)")
    print(f"{'binary':28} {'kernel':8} {'Ir':>8} {'+Ir':>7} {'D1miss':>7} {'+D1':>6}")
    for b, inner in BINS:
        for k in KERNELS:
            ir, d1 = per[b, k]
            if inner:
                bir, bd1 = per[inner, k]
                add = f"{ir - bir:+7.1f} {d1 - bd1:+6.3f}"
            else:
                add = f"{'':7} {'':6}"
            print(f"{b:28} {k:8} {ir:8.1f} {add.split()[0] if inner else '':>7} {d1:7.3f} {add.split()[1] if inner else '':>6}")
    print()
    print("realloc alone (realloc kernel minus pair kernel):")
    for b, inner in BINS:
        r = per[b, "realloc"][0] - per[b, "pair"][0]
        extra = ""
        if inner:
            extra = f"  (+{r - (per[inner, 'realloc'][0] - per[inner, 'pair'][0]):.1f} over {inner})"
        print(f"  {b:28} {r:7.1f}{extra}")


if __name__ == "__main__":
    main()

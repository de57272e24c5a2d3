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


def counts(exe, kernel, n, tmp):
    """(Ir, D1 misses) inside `kernel_<kernel>`, inclusive, from callgrind's totals line."""
    out = os.path.join(tmp, f"cg.{os.path.basename(exe)}.{kernel}.{n}")
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--cache-sim=yes",
            f"--toggle-collect=heapsight_entry_bench::kernel_{kernel}",
            "--callgrind-out-file=" + out,
            exe,
            kernel,
            str(n),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    events = None
    with open(out) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            if line.startswith("totals:") or line.startswith("summary:"):
                vals = dict(zip(events, map(int, line.split()[1:])))
                return vals["Ir"], vals.get("D1mr", 0) + vals.get("D1mw", 0)
    sys.exit(f"no totals in {out}")


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
                i1, d1 = counts(exe, k, n1, tmp)
                i2, d2 = counts(exe, k, n2, tmp)
                per[b, k] = ((i2 - i1) / (n2 - n1), (d2 - d1) / (n2 - n1))
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

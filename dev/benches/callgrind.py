#!/usr/bin/env python3
"""Deterministic instruction counts of heapsight's hot path, with valgrind's callgrind.

    python3 dev/benches/callgrind.py [N] [SAMPLED]

Builds `dev/examples/hotpath.rs` (release, frame pointers), runs it under
`valgrind --tool=callgrind` per case, collecting only inside that case's `case_*` function
(`--toggle-collect`), at N and 2N 32 B alloc+free pairs (SAMPLED for the rate-1 cases, a tenth
of that with DWARF): the slope of the instruction count (Ir) is the cost of one pair (see
dev/callgrind_slope.py), and the difference with the inner allocator's case is what heapsight
adds. Instruction counts do not depend on machine load, unlike the criterion timings. Target:
<= 20 added instructions per unsampled pair.
"""
import os
import subprocess
import sys
import tempfile

# The workspace root (this file is dev/benches/X.py): cargo runs there, target/ is there.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "dev"))
import callgrind_slope  # noqa: E402


CASES = [
    # (label, case, inner-allocator case it is compared with, pairs to run)
    ("System (glibc) alone", "system", None, "n"),
    ("HeapSight<System>, rate 0", "heapsight_system_rate0", "system", "n"),
    ("HeapSight<System>, rate 512 KiB", "heapsight_system_default", "system", "n"),
    ("mimalloc alone", "mimalloc", None, "n"),
    ("HeapSight<MiMalloc>, rate 0", "heapsight_mimalloc_rate0", "mimalloc", "n"),
    ("HeapSight<MiMalloc>, rate 512 KiB", "heapsight_mimalloc_default", "mimalloc", "n"),
    ("HeapSight<System>, rate 1, fp", "sampled_fp", "system", "s"),
    ("HeapSight<System>, rate 1, DWARF", "sampled_dwarf", "system", "d"),
]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    sampled = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    counts = {"n": n, "s": sampled, "d": max(1, sampled // 10)}
    subprocess.run(["cargo", "build", "-p", "heapsight-dev", "--release", "--example", "hotpath", "--quiet"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    exe = os.path.join(target, "release", "examples", "hotpath")
    per = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _, case, _, k in CASES:
            n1 = counts[k]
            per[case] = callgrind_slope.slope_in(
                tmp, exe, [case], f"hotpath::case_{case}", n1, 2 * n1
            )["Ir"]
    print(f"valgrind --tool=callgrind, 32 B alloc+free pairs, slope between N and 2N (N={n:,} "
          f"unsampled; {sampled:,} sampled with frame pointers, {counts['d']:,} with DWARF)")
    print(f"{'case':<36} {'instructions/pair':>18} {'added vs inner':>15}")
    worst = 0.0
    for label, case, base, k in CASES:
        added = "" if base is None else f"{per[case] - per[base]:+.1f}"
        print(f"{label:<36} {per[case]:>18.1f} {added:>15}")
        if base is not None and k == "n":
            worst = max(worst, per[case] - per[base])
    verdict = "meets" if worst <= 20 else "MISSES"
    print(f"most instructions added per unsampled pair: {worst:.1f} ({verdict} the <= 20 target)")


if __name__ == "__main__":
    main()

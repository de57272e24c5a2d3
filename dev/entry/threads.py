#!/usr/bin/env python3
"""One thread's 4 KiB alloc+free with 0, 1,000 and 4,000 idle threads, with valgrind's callgrind.

    python3 dev/entry/threads.py [N1 N2]
    python3 dev/entry/threads.py --wall [ROUNDS [N1 N2]]


Every idle thread allocated once, so it owns a counter slot. Runs the `pair4k` kernel of the
heapsight binaries (rate 0 and default rate, over System) and prints instructions per pair as
the slope between N1 and N2 pairs (start-up and thread creation cancel). A cost that grows with
the thread count shows here as a growing slope; goal: within 10% of each other.

`--wall`: wall-clock nanoseconds per pair (slope between N1 and N2 pairs, default 4M and 40M;
whole processes) for
the same configurations, in interleaved rounds (every configuration once per round), printed as
the ratio to 0 idle threads of the same round: median and spread (min-max) over the rounds.
"""
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import callgrind  # noqa: E402
from callgrind import callgrind_slope  # noqa: E402  (dev/callgrind_slope.py)


def per_pair(exe, n1, n2, idle, tmp):
    """Instructions per pair inside `kernel_pair4k` with `idle` idle threads (dev/callgrind_slope)."""
    return callgrind_slope.slope_in(
        tmp,
        exe,
        ["pair4k"],
        "heapsight_entry_bench::kernel_pair4k",
        n1,
        n2,
        valgrind_args=["--max-threads=5000"],
        env=dict(os.environ, ENTRY_IDLE_THREADS=str(idle)),
    )["Ir"]


def wall_ns(exe, n, idle):
    t = time.perf_counter()
    subprocess.run(
        [exe, "pair4k", str(n)],
        check=True,
        env=dict(os.environ, ENTRY_IDLE_THREADS=str(idle)),
    )
    return time.perf_counter() - t


def wall(rounds, n1, n2):
    bins = ["heapsight_system_rate0", "heapsight_system_default"]
    ratios = {(b, k): [] for b in bins for k in (1000, 4000)}
    for _ in range(rounds):
        for b in bins:
            exe = os.path.join(callgrind.TARGET, "release", b)
            per = {}
            for k in (0, 1000, 4000):
                per[k] = (wall_ns(exe, n2, k) - wall_ns(exe, n1, k)) / (n2 - n1) * 1e9
            for k in (1000, 4000):
                ratios[b, k].append(per[k] / per[0])
    print(f"wall clock, ratio to 0 idle threads, {rounds} interleaved rounds: median (min-max)")
    for (b, k), r in ratios.items():
        r.sort()
        print(f"{b:28} {k:5} idle  {r[len(r) // 2]:.3f} ({r[0]:.3f}-{r[-1]:.3f})")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--wall":
        a = [int(x) for x in sys.argv[2:5]]
        return wall(a[0] if a else 5, *(a[1:3] if len(a) == 3 else (4_000_000, 40_000_000)))
    n1, n2 = (int(a) for a in sys.argv[1:3]) if len(sys.argv) > 2 else (20_000, 60_000)
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bins"],
        cwd=callgrind.HERE,
        check=True,
        env=dict(os.environ, CARGO_TARGET_DIR=callgrind.TARGET),
    )
    print(f"instructions per 4 KiB alloc+free, slope between N={n1} and N={n2}")
    print(f"{'binary':28} {'0 idle':>9} {'1000 idle':>10} {'4000 idle':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for b in ["system", "heapsight_system_rate0", "heapsight_system_default"]:
            exe = os.path.join(callgrind.TARGET, "release", b)
            row = [per_pair(exe, n1, n2, k, tmp) for k in (0, 1000, 4000)]
            print(f"{b:28} {row[0]:9.1f} {row[1]:10.1f} {row[2]:10.1f}")


if __name__ == "__main__":
    main()

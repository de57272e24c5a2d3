#!/usr/bin/env python3
"""One thread's 4 KiB alloc+free with 0, 1,000 and 4,000 idle threads, with valgrind's callgrind.

    python3 dev/entry/threads.py [N1 N2]

Every idle thread allocated once, so it owns a counter slot. Runs the `pair4k` kernel of the
heapsight binaries (rate 0 and default rate, over System) and prints instructions per pair as
the slope between N1 and N2 pairs (start-up and thread creation cancel). A cost that grows with
the thread count shows here as a growing slope; goal: within 10% of each other.
"""
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import callgrind  # noqa: E402


def ir(exe, n, idle, tmp):
    out = os.path.join(tmp, f"cg.{os.path.basename(exe)}.{idle}.{n}")
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--max-threads=5000",
            "--toggle-collect=heapsight_entry_bench::kernel_pair4k",
            "--callgrind-out-file=" + out,
            exe,
            "pair4k",
            str(n),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, ENTRY_IDLE_THREADS=str(idle)),
    )
    with open(out) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    sys.exit(f"no totals in {out}")


def main():
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
            row = [(ir(exe, n2, k, tmp) - ir(exe, n1, k, tmp)) / (n2 - n1) for k in (0, 1000, 4000)]
            print(f"{b:28} {row[0]:9.1f} {row[1]:10.1f} {row[2]:10.1f}")


if __name__ == "__main__":
    main()

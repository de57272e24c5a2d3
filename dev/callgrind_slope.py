"""Per-iteration costs from valgrind's callgrind, shared by the benchmark scripts
(dev/benches/callgrind.py; dev/entry/callgrind.py and dev/entry/threads.py can import it the same
way: put this folder on `sys.path`, then `import callgrind_slope`).

A program runs under `valgrind --tool=callgrind`, collecting only inside one function
(`--toggle-collect`), at two iteration counts; the cost of one iteration is the slope
(count(N2) - count(N1)) / (N2 - N1), so start-up, thread set-up and first-call costs cancel.
Instruction counts do not depend on machine load.
"""
import os
import subprocess
import sys


def totals(cmd, function, out, cache_sim=False, valgrind_args=(), env=None):
    """Runs `cmd` under callgrind collecting inside `function` (inclusive), writing `out`, and
    returns callgrind's totals line as {event: count} (Ir; with `cache_sim`, D1mr, D1mw, ...)."""
    subprocess.run(
        ["valgrind", "--tool=callgrind"]
        + (["--cache-sim=yes"] if cache_sim else [])
        + list(valgrind_args)
        + [f"--toggle-collect={function}", "--callgrind-out-file=" + out]
        + list(cmd),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    events = ["Ir"]
    with open(out) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            if line.startswith("totals:") or line.startswith("summary:"):
                return dict(zip(events, map(int, line.split()[1:])))
    sys.exit(f"no totals in {out}")


def slope(count, n1, n2):
    """The per-iteration cost (count(n2) - count(n1)) / (n2 - n1), for a `count(n)` that returns
    a number or an {event: number} dict (then a dict of slopes)."""
    c1, c2 = count(n1), count(n2)
    if isinstance(c1, dict):
        return {k: (c2[k] - c1.get(k, 0)) / (n2 - n1) for k in c2}
    return (c2 - c1) / (n2 - n1)


def slope_in(tmp, exe, args, function, n1, n2, **kw):
    """`slope` of `exe *args N` under callgrind inside `function`, output files in `tmp`."""
    def count(n):
        out = os.path.join(tmp, f"cg.{os.path.basename(exe)}.{'.'.join(args)}.{n}")
        return totals([exe, *args, str(n)], function, out, **kw)

    return slope(count, n1, n2)

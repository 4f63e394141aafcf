"""Throughput of the code sandbox on this machine, through the judging path the reward uses.

    python scripts/bench_sandbox.py [--programs 200] [--slots N] [--allow-unisolated]

Three workloads through a pool of N slots (default: two per CPU, as the reward uses), side by side:
  trivial: a one-line function and one assert test (the sandbox's own cost per program);
  mix:     correct, wrong and looping-to-the-1-s-CPU-limit solutions, four assert tests each;
  stdio:   a program reading stdin, three stdin/stdout tests (a fresh run per test).
Prints programs/s for each, the per-run overhead (wall time of one trivial program, run
alone) and the isolation mode. Last line: one JSON object with the figures.
"""
import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewards.sandbox import Limits, SandboxPool  # noqa: E402

TRIVIAL = ("def f(x):\n    return 2 * x\n", ["assert f(2) == 4"])
SOLUTION = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n): a, b = b, a + b\n    return a\n"
WRONG = "def fib(n):\n    return n\n"
LOOPS = "def fib(n):\n    while True: pass\n"
TESTS = ["assert fib(0) == 0", "assert fib(1) == 1", "assert fib(10) == 55", "assert fib(30) == 832040"]
STDIO = ("a, b = map(int, input().split())\nprint(a + b)\n",
         [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in ((1, 2), (40, 2), (-5, 5))])


def timed(pool, jobs, limits, allow):
    start = time.perf_counter()
    results = pool.map(jobs, limits, allow)
    wall = time.perf_counter() - start
    return {"programs": len(jobs), "programs_per_s": len(jobs) / wall, "wall_s": wall,
            "statuses": dict(Counter(r.status for r in results)),
            "mean_fraction_passed": sum(r.fraction for r in results) / len(results)}


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--slots", type=int, default=2 * (os.cpu_count() or 1))
    parser.add_argument("--allow-unisolated", action="store_true",
                        help="run even where the sandbox cannot isolate (resource limits only)")
    args = parser.parse_args(argv)
    pool = SandboxPool(args.slots)
    limits = Limits(wall_s=5, cpu_s=1)
    overheads = []
    for _ in range(10):
        start = time.perf_counter()
        pool.run(*TRIVIAL, limits, args.allow_unisolated)
        overheads.append(time.perf_counter() - start)
    mix = [(LOOPS if i % 50 == 49 else (WRONG if i % 4 == 3 else SOLUTION), TESTS)
           for i in range(args.programs)]
    figures = {"slots": args.slots, "isolation": pool.isolation.mode,
               "per_run_overhead_ms": 1000 * sorted(overheads)[len(overheads) // 2],
               "trivial": timed(pool, [TRIVIAL] * args.programs, limits, args.allow_unisolated),
               "mix": timed(pool, mix, limits, args.allow_unisolated),
               "stdio": timed(pool, [STDIO] * (args.programs // 4), limits, args.allow_unisolated)}
    figures["programs_per_s"] = figures["trivial"]["programs_per_s"]
    print(f"sandbox pool, {args.slots} slots, isolation {pool.isolation.mode}:")
    print(f"  per-run overhead    {figures['per_run_overhead_ms']:.0f} ms (one trivial program, median of 10)")
    for name, what in (("trivial", "one-line function, 1 assert"),
                       ("mix", "3/4 correct, 1/4 wrong, 1/50 looping to the 1 s CPU limit; 4 asserts"),
                       ("stdio", "stdin/stdout program, 3 tests = 3 runs")):
        f = figures[name]
        print(f"  {name:8s} {f['programs_per_s']:6.1f} programs/s  ({f['programs']} programs: {what}; "
              f"statuses {f['statuses']})")
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

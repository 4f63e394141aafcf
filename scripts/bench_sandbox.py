"""Throughput of the code sandbox on this machine.

    python scripts/bench_sandbox.py [--programs 200] [--slots N]

Runs a mix of programs through a pool of N slots (default: CPU count): correct solutions,
wrong ones, and a few that loop until their CPU limit. Prints programs/s for the pool, the
per-run overhead (wall time of an empty program, run alone) and the mix's statuses. Last
line: one JSON object with programs_per_s and per_run_overhead_ms.
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

SOLUTION = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n): a, b = b, a + b\n    return a\n"
WRONG = "def fib(n):\n    return n\n"
LOOPS = "def fib(n):\n    while True: pass\n"
TESTS = ["assert fib(0) == 0", "assert fib(1) == 1", "assert fib(10) == 55", "assert fib(30) == 832040"]


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    pool = SandboxPool(args.slots)
    limits = Limits(wall_s=5, cpu_s=1)
    overheads = []
    for _ in range(10):
        start = time.perf_counter()
        pool.run("", ["pass"], limits)
        overheads.append(time.perf_counter() - start)
    overhead = sorted(overheads)[len(overheads) // 2]
    jobs = []
    for i in range(args.programs):
        code = LOOPS if i % 50 == 49 else (WRONG if i % 4 == 3 else SOLUTION)
        jobs.append((code, TESTS))
    start = time.perf_counter()
    results = pool.map(jobs, limits)
    wall = time.perf_counter() - start
    statuses = Counter(r.status for r in results)
    figures = {"programs": args.programs, "slots": args.slots,
               "programs_per_s": args.programs / wall, "per_run_overhead_ms": 1000 * overhead,
               "wall_s": wall, "statuses": dict(statuses),
               "mean_fraction_passed": sum(r.fraction for r in results) / len(results)}
    print(f"sandbox pool, {args.slots} slots, {args.programs} programs "
          f"(3/4 correct, 1/4 wrong, 1/50 looping to the 1 s CPU limit):")
    print(f"  programs/s          {figures['programs_per_s']:.1f}")
    print(f"  per-run overhead    {figures['per_run_overhead_ms']:.0f} ms (empty program, median of 10)")
    print(f"  statuses            {dict(statuses)}")
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

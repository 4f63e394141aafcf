"""The asynchronous pipeline against the lock-step one, side by side in one run.

    python scripts/bench_async.py [--steps N] [key=value ...]

(a) A slow judge. A real HTTP judge (scripts/serve.py around a one-layer tiny model, every
    completion delayed by --judge-latency-s, default 0.5 s) joins the reward. Throughput
    (samples/s) with it, divided by throughput with no judge, two ways:
      labeler: reward=oni, the ONI labeler asks the judge in the background and the reward
               reads whatever labels exist (actors/labeler.py); this run and the no-judge
               one it is divided by run in async mode, as (b)'s async run, each twice, in
               the order no judge, labeler, labeler, no judge (the box's speed drifts);
      sync:    the judge as an ordinary reward source (soft_verifier, weight 0: it only
               informs, so learning is the same), lock-step, each reward call waiting for
               its answers.
(b) steps/s with scheduler.mode=async, buffer.max_staleness=1, divided by steps/s of the
    lock-step scheduler, same config (async: the learner at niceness 0 with a torch thread per
    core, the rollout worker with one thread at Ray's niceness 15, so the learner computes at
    full speed and generation fills the cores it leaves). Each run's cores busy say how much
    idle capacity overlap had left to use.
(c) with --trl-python PY (a scratch venv with TRL, see scripts/bench_trl.py): TRL's
    GRPOTrainer on the same model, prompts and batch, and our best samples/s over its
    (always uncompiled; with model.dtype=bfloat16 in both precisions, the faster counts),
    TRL run once before (b)'s two runs and once after, pooled.

Every run is the main job (scripts/bench_pipeline.py: warm start from the cache, the first
step left out). A run from which a hypervisor took more than --max-steal cores (default 0.15;
other guests' load, which says nothing about ours) is measured again, at most --tries times
(default 3), and the least-stolen one kept. Extra key=value overrides apply to every run. The last line is one JSON
object: slow_judge_ratio_labeler, slow_judge_ratio_sync, async_over_sync, over_trl (with --trl-python) and each run's figures (with the cores
busy and stolen: a hypervisor's steal makes runs incomparable).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench_pipeline  # noqa: E402
from orchestrator.metrics import HostCpu  # noqa: E402

SOFT_JUDGE = ("reward.sources=[{name:correct,fn:toy_exact},"
              "{name:soft,fn:soft_verifier,weight:0.0,timeout_s:600,"
              "kwargs:{url:'${judge.url}',top_k:100}}]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_judge(model: str, latency_s: float) -> tuple[subprocess.Popen, str]:
    """scripts/serve.py on a free port, every completion `latency_s` late; (process, URL)."""
    port = free_port()
    # one torch thread: the judge stands for a remote one, whose wait costs this box no compute
    process = subprocess.Popen([sys.executable, str(REPO / "scripts" / "serve.py"), "--model",
                                model, "--port", str(port), "--latency-s", str(latency_s),
                                "--threads", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return process, url
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the judge server exited at start")
            time.sleep(0.5)
    raise RuntimeError("the judge server did not answer in 300 s")


def judge_model() -> Path:
    """The served judge: a one-layer model (random weights, so its verdicts are noise), whose
    own compute stays small next to the run's. The benchmark is about a judge's latency: a
    remote judge costs this box none of its compute, a colocated one every cycle it runs."""
    from core.models import build_tiny_policy
    arch = {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
            "max_position_embeddings": 2048}
    return build_tiny_policy(REPO / ".cache" / "rewardmill" / "bench-judge", arch, seed=0)


def measure(name: str, steps: int, overrides: list[str]) -> dict:
    print(f"\n=== {name}: {' '.join(overrides)}", flush=True)
    figures = bench_pipeline.main([f"steps={steps}", f"run_name=bench_{name}", *overrides])
    return {k: figures[k] for k in ("samples_per_s", "step_time_s", "median_step_time_s",
                                    "steps_measured", "busy_cores", "steal_cores")}


def measure_trl(python: str, steps: int, overrides: list[str]) -> dict:
    print(f"\n=== trl: scripts/bench_trl.py {' '.join(overrides)}", flush=True)
    host = HostCpu()
    out = subprocess.run([python, str(REPO / "scripts" / "bench_trl.py"), "--steps", str(steps),
                          "--project-python", sys.executable, *overrides],
                         capture_output=True, text=True, check=True)
    trl = json.loads(out.stdout.strip().splitlines()[-1])
    return {**{k: trl[k] for k in ("samples_per_s", "step_time_s", "steps_measured")},
            "steal_cores": host.since_last().get("host/cpu_steal_cores", 0.0)}


def least_stolen(run, max_steal: float, tries: int) -> dict:
    """`run()` again while a hypervisor took more than `max_steal` cores from it (other guests
    on the host: those timings say nothing about ours), at most `tries` times in all; the run
    with the least steal. The retries are in the figures: `tries_stolen`."""
    results = []
    while True:
        results.append(run())
        if results[-1]["steal_cores"] <= max_steal or len(results) >= tries:
            break
        print(f"--- {results[-1]['steal_cores']:.2f} cores stolen (over {max_steal}): "
              "measured again", flush=True)
    best = min(results, key=lambda r: r["steal_cores"])
    return {**best, "tries_stolen": [round(r["steal_cores"], 2) for r in results]}


def pooled(runs: list[dict]) -> dict:
    """Several runs of one config as one: samples/s over all their measured steps."""
    steps = sum(r["steps_measured"] for r in runs)
    seconds = sum(r["step_time_s"] * r["steps_measured"] for r in runs)
    samples = sum(r["samples_per_s"] * r["step_time_s"] * r["steps_measured"] for r in runs)
    out = {"samples_per_s": samples / seconds, "step_time_s": seconds / steps,
           "steps_measured": steps, "each_samples_per_s": [round(r["samples_per_s"], 1) for r in runs],
           "tries_stolen": [r.get("tries_stolen") for r in runs]}
    if all("median_step_time_s" in r for r in runs):
        out["median_step_time_s"] = statistics.median(r["median_step_time_s"] for r in runs)
    for k in ("busy_cores", "steal_cores"):
        if all(k in r for r in runs):
            out[k] = sum(r[k] * r["step_time_s"] * r["steps_measured"] for r in runs) / seconds
    return out


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6, help="RL steps per run (the first is "
                        "left out of the figures)")
    parser.add_argument("--sync-judge-steps", type=int, default=3,
                        help="steps of the slow synchronous-judge run (each waits for the judge)")
    parser.add_argument("--judge-latency-s", type=float, default=0.5)
    parser.add_argument("--trl-python", help="python of a scratch venv with TRL: also run "
                        "scripts/bench_trl.py and compare")
    parser.add_argument("--max-steal", type=float, default=0.15, help="cores a hypervisor may "
                        "take from a run before it is measured again")
    parser.add_argument("--tries", type=int, default=3, help="runs of one measurement at most")
    args, overrides = parser.parse_known_args()
    ours = lambda name, steps, config: least_stolen(   # noqa: E731
        lambda: measure(name, steps, config), args.max_steal, args.tries)
    theirs = lambda config: least_stolen(   # noqa: E731
        lambda: measure_trl(args.trl_python, args.steps, config), args.max_steal, args.tries)

    # the learner takes every core when it computes; the rollout worker, one torch thread at
    # Ray's niceness 15, works in what the learner leaves
    asynchronous = ["scheduler.mode=async", "rollout.threads=1", f"learner.threads={os.cpu_count()}",
                    "learner.nice=0", "buffer.max_staleness=1"]
    # TRL uncompiled: its Trainer compiles the whole model, which recompiles for each new padded
    # shape (one 66 s recompile at its second step) and ran no faster after. Its runs come
    # before and after ours (T S A T) and are pooled, as the labeler pair below
    trl = {}
    if args.trl_python:
        trl["trl"] = [*overrides, "learner.compile=false"]
        if any(o == "model.dtype=bfloat16" for o in overrides):   # and TRL's other precision
            trl["trl_fp32"] = [*trl["trl"], "model.dtype=float32"]
    trl_parts: dict[str, list] = {name: [] for name in trl}
    for name in trl:
        trl_parts[name].append(theirs(trl[name]))
    runs = {"sync": ours("sync", args.steps, ["scheduler.mode=sync", *overrides]),
            "async": ours("async", args.steps, [*asynchronous, *overrides])}
    for name in reversed(trl):
        trl_parts[name].append(theirs(trl[name]))
    judge, url = start_judge(str(judge_model()), args.judge_latency_s)
    try:
        judged = [f"judge.url={url}", *overrides]
        # the labeler pair runs asynchronously, the mode the labeler is built for, twice each in
        # the order A B B A: this box's speed drifts within minutes, and a drift that is linear
        # over the four runs falls equally on both
        pair = {"no_judge": ["reward=verifier", *asynchronous, *overrides],
                # a verdict of at most 2 tokens ("yes"/"no"), as the soft verifier reads 1 token
                "labeler": ["reward=oni", "reward.sources.1.kwargs.max_tokens=2", *asynchronous,
                            *judged]}
        parts: dict[str, list] = {"no_judge": [], "labeler": []}
        for name in ("no_judge", "labeler", "labeler", "no_judge"):
            parts[name].append(ours(f"{name}{len(parts[name]) + 1}", args.steps, pair[name]))
        runs.update({name: pooled(found) for name, found in parts.items()})
        # today's synchronous judge path: lock-step, each reward call waits for its verdicts
        runs["sync_judge"] = measure("sync_judge", args.sync_judge_steps, [SOFT_JUDGE, *judged])
    finally:
        judge.terminate()
    runs.update({name: pooled(found) for name, found in trl_parts.items()})
    base = runs["no_judge"]["samples_per_s"]
    figures = {
        "slow_judge_ratio_labeler": runs["labeler"]["samples_per_s"] / base,
        "slow_judge_ratio_sync": runs["sync_judge"]["samples_per_s"] / base,
        "async_over_sync": runs["sync"]["step_time_s"] / runs["async"]["step_time_s"],
        "async_over_sync_median": (runs["sync"]["median_step_time_s"]
                                   / runs["async"]["median_step_time_s"]),
        "judge_latency_s": args.judge_latency_s, "runs": runs}
    if "trl" in runs:
        best = max(runs["sync"]["samples_per_s"], runs["async"]["samples_per_s"])
        trl = max(r["samples_per_s"] for name, r in runs.items() if name.startswith("trl"))
        figures["over_trl"] = best / trl   # against TRL's faster precision
    print("\nrun                      samples/s   s/step   cores busy   stolen")
    for name, r in runs.items():
        print(f"  {name:<22} {r['samples_per_s']:9.1f} {r['step_time_s']:8.2f}"
              f" {r.get('busy_cores', float('nan')):11.2f} {r.get('steal_cores', float('nan')):8.2f}")
    print(f"slow judge / no judge:   labeler {figures['slow_judge_ratio_labeler']:.2f}   "
          f"synchronous judge {figures['slow_judge_ratio_sync']:.2f}   (target >= 0.9)")
    print(f"async / sync steps per s: {figures['async_over_sync']:.2f}, of median steps "
          f"{figures['async_over_sync_median']:.2f}   (target >= 1.5; sync kept "
          f"{runs['sync']['busy_cores']:.2f} of {os.cpu_count()} cores busy)")
    if "over_trl" in figures:
        print(f"our best samples/s / TRL GRPOTrainer's: {figures['over_trl']:.2f}   (target >= 2)")
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main()

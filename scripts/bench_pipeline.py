"""End-to-end throughput of the RL loop for the default config (or any Hydra overrides).

    python scripts/bench_pipeline.py [key=value ...]

Runs `bench.steps` RL steps of the main job (warm start reused from the cache), skips the
first step (actor start-up, first calls), and prints samples/s, generated tokens/s, each
phase's share of the step time, the cores busy and those stolen (a hypervisor running other
guests: runs under different steal are not comparable) and the scheduler's own overhead: the
part of a step spent outside the workers' phases (rollout, reward, train, weight sync), i.e.
driver-side glue, batch preparation and buffer round trips. Last line: one JSON object of the
figures.
"""
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

from orchestrator.main import run  # noqa: E402
from orchestrator.metrics import read_history  # noqa: E402

WORKER_PHASES = ("rollout", "reward", "train", "sync")
SKIP = 1  # warm-up steps left out of the figures


def main(argv: list[str]) -> dict:
    defaults = ["steps=11", "eval.num_prompts=0", "checkpoint.every=0", "run_name=bench",
                "logging.wandb_mode=disabled", "logging.plot=false", "logging.tensorboard=false",
                "logging.progress_bar=false"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=defaults + argv)
    run(cfg)
    rows = [m for m in read_history(Path(cfg.run_dir) / "metrics.jsonl").values()
            if "time/step" in m][SKIP:]
    total = sum(m["time/step"] for m in rows)
    phases = sorted({k[5:] for m in rows for k in m if k.startswith("time/")} -
                    {"step", "scheduler_overhead", "eval", "checkpoint"})
    share = {p: sum(m.get(f"time/{p}", 0.0) for m in rows) / total for p in phases}
    figures = {
        "cluster": cfg.cluster.mode,
        "steps_measured": len(rows),
        "samples_per_s": sum(m["rollout/samples"] for m in rows) / total,
        "tokens_per_s": sum(m["rollout/response_tokens"] for m in rows) / total,
        "step_time_s": total / len(rows),
        # robust to a neighbour on the host stretching single steps several-fold
        "median_step_time_s": statistics.median(m["time/step"] for m in rows),
        "phase_share": {p: round(v, 4) for p, v in share.items()},
        "scheduler_overhead_share": 1.0 - sum(share.get(p, 0.0) for p in WORKER_PHASES),
        "loop_glue_share": sum(m["time/scheduler_overhead"] for m in rows) / total,
        # this machine's cores in use, and those a hypervisor took (steal): figures measured
        # under different steal are not comparable
        **{name: sum(m.get(f"host/cpu_{name}", 0.0) * m["time/step"] for m in rows) / total
           for name in ("busy_cores", "steal_cores")},
    }
    print(f"\nRL loop, {len(rows)} steps measured ({cfg.cluster.mode}):")
    print(f"  samples/s                {figures['samples_per_s']:.1f}")
    print(f"  generated tokens/s       {figures['tokens_per_s']:.0f}")
    print(f"  step time (s)            {figures['step_time_s']:.3f}")
    for p, v in share.items():
        print(f"  phase {p:<18} {100 * v:5.1f}%")
    print(f"  cores busy / stolen      {figures['busy_cores']:.2f} / {figures['steal_cores']:.2f}")
    print(f"  scheduler overhead       {100 * figures['scheduler_overhead_share']:5.2f}%"
          f"  (target < 5%; loop glue alone {100 * figures['loop_glue_share']:.2f}%)")
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

"""Run several algorithms on the toy task with the same steps and seeds, and compare them.

    python scripts/compare_algorithms.py --algorithms grpo,dr_grpo,lite_ppo,w_reinforce,ppo \
        [--seeds 0,1] [--steps 100] [hydra overrides ...]

Each run is the main job with `algorithm=<name> seed=<seed>` (in one process, cluster=inline,
unless overridden). Writes, under outputs/compare/<tag>/: table.md (one row per algorithm,
means over seeds), compare.png (held-out accuracy, reward, response length and entropy
against step) and results.json. The last line printed is one JSON object:
{algorithm: final held-out accuracy (mean over seeds)}.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402

from orchestrator.main import run  # noqa: E402
from orchestrator.metrics import read_history  # noqa: E402

CURVES = [("eval/accuracy", "held-out accuracy (greedy)"), ("reward/combined", "train reward"),
          ("rollout/response_len", "response length (tokens)"), ("train/entropy", "entropy")]


def run_one(algorithm: str, seed: int, steps: int, tag: str, overrides: list[str]) -> dict:
    args = ["cluster=inline", f"algorithm={algorithm}", f"seed={seed}", f"steps={steps}",
            f"run_name={tag}-{algorithm}-seed{seed}", "logging.progress_bar=false",
            "logging.wandb_mode=disabled", *overrides]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=args)
    summary = run(cfg)
    summary["history"] = read_history(Path(cfg.run_dir) / "metrics.jsonl")
    return summary


def mean(values):
    values = [v for v in values if v == v]
    return sum(values) / len(values) if values else float("nan")


def curve(runs: list[dict], key: str) -> list[tuple[int, float]]:
    steps = sorted({s for r in runs for s, m in r["history"].items() if key in m})
    return [(s, mean([r["history"][s][key] for r in runs if key in r["history"].get(s, {})]))
            for s in steps]


def plot(results: dict[str, list[dict]], png: Path, curves=CURVES) -> None:
    """One panel per (metric, title) of `curves`, a line per entry of `results` (mean over its runs)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.8))
    for ax, (key, title) in zip(axes, curves):
        for algorithm, runs in results.items():
            points = curve(runs, key)
            if points:
                ax.plot(*zip(*points), label=algorithm, marker="o" if key.startswith("eval") else None,
                        markersize=3)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| algorithm | accuracy before | accuracy after | best accuracy | train reward, last | "
             "mean step time (s) |", "|---|---|---|---|---|---|"]
    for algorithm, runs in results.items():
        best = mean([max((m["eval/accuracy"] for m in r["history"].values() if "eval/accuracy" in m),
                         default=float("nan")) for r in runs])
        lines.append(f"| {algorithm} | {mean([r['accuracy_before'] for r in runs]):.3f} | "
                     f"{mean([r['accuracy_after'] for r in runs]):.3f} | {best:.3f} | "
                     f"{mean([r['reward_last'] for r in runs]):.3f} | "
                     f"{mean([r['step_time_mean_s'] for r in runs]):.2f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithms", default="grpo,dr_grpo,lite_ppo,w_reinforce,ppo")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tag", default="compare")
    args, overrides = parser.parse_known_args(argv)
    algorithms = args.algorithms.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {a: [run_one(a, s, args.steps, args.tag, overrides) for s in seeds]
               for a in algorithms}
    out = REPO / "outputs" / "compare" / args.tag
    out.mkdir(parents=True, exist_ok=True)
    text = table(results)
    (out / "table.md").write_text(text + "\n")
    plot(results, out / "compare.png")
    final = {a: mean([r["accuracy_after"] for r in runs]) for a, runs in results.items()}
    (out / "results.json").write_text(json.dumps(
        {a: [{k: v for k, v in r.items() if k != "history"} for r in runs]
         for a, runs in results.items()}, indent=1))
    print(f"\n{text}\n\nwrote {out}/table.md, compare.png, results.json")
    print(json.dumps(final), flush=True)
    return final


if __name__ == "__main__":
    main(sys.argv[1:])

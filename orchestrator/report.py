"""End-of-run report: a PNG of the curves that matter and a short summary table."""
from __future__ import annotations

from pathlib import Path

PANELS = [
    ("reward/combined", "reward (train, mean)"),
    ("eval/accuracy", "held-out accuracy (greedy)"),
    ("rollout/response_len", "response length (tokens)"),
]

# the step's phases in pipeline order, then the occasional ones
PHASE_ORDER = ("rollout", "reward", "buffer", "prepare", "train", "sync", "scheduler_overhead",
               "eval", "checkpoint")


def plot_run(history: dict[int, dict], png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 3.8))
    for ax, (key, title) in zip(axes, PANELS):
        points = [(s, m[key]) for s, m in history.items() if key in m]
        if points:
            ax.plot(*zip(*points), marker="o" if key.startswith("eval") else None)
        ax.set_title(title)
        ax.set_xlabel("step")
    ax = axes[-1]
    seen = {k[5:] for m in history.values() for k in m if k.startswith("time/")} - {"step"}
    phases = [f"time/{p}" for p in PHASE_ORDER if p in seen]
    phases += sorted(f"time/{p}" for p in seen - set(PHASE_ORDER))
    steps = [s for s, m in history.items() if "time/step" in m]
    bottom = [0.0] * len(steps)
    for key in phases:
        values = [history[s].get(key, 0.0) for s in steps]
        ax.bar(steps, values, bottom=bottom, label=key[5:], width=1.0)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_title("time per phase (s)")
    ax.set_xlabel("step")
    if phases:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def summary_table(summary: dict) -> str:
    rows = [
        ("held-out accuracy before RL", f"{summary['accuracy_before']:.3f}"),
        ("held-out accuracy after RL", f"{summary['accuracy_after']:.3f}"),
        ("RL steps", str(summary["steps"])),
        ("train reward, first -> last step",
         f"{summary['reward_first']:.3f} -> {summary['reward_last']:.3f}"),
        ("mean step time (s)", f"{summary['step_time_mean_s']:.2f}"),
        ("wall time (s)", f"{summary['wall_s']:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)

"""Checkpoint folders: written whole under a temporary name, then renamed into place.

run_dir/checkpoints/step_000010/
    policy/              HF folder (from_pretrained loads it) + optimizer.pt + learner_state.json
    trainer_state.json   step, prompt-stream position, evaluation so far
    buffer.pt            replay buffer contents and counters
    components.pt        state of stateful reward sources (per reward and rollout worker)
                         and of the scheduler's reward-side state (Lagrange multipliers, filters)
A folder without the `.tmp` suffix is complete; a crash mid-write leaves only a `.tmp`.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

_NAME = re.compile(r"^step_(\d+)$")


class Checkpoints:
    def __init__(self, run_dir: Path, keep: int):
        self.root = Path(run_dir) / "checkpoints"
        self.keep = keep

    def complete(self) -> list[Path]:
        if not self.root.exists():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and _NAME.match(p.name)]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def staging(self, step: int) -> Path:
        """An empty temporary folder to write the checkpoint of `step` into."""
        tmp = self.root / f"step_{step:06d}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, trainer_state: dict, buffer_state: dict,
               components: dict | None = None) -> Path:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        torch.save(buffer_state, tmp / "buffer.pt")
        torch.save(components or {}, tmp / "components.pt")
        final = tmp.with_name(tmp.name.removesuffix(".tmp"))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in self.complete()[:-self.keep]:
            shutil.rmtree(old)
        return final

    @staticmethod
    def read(folder: Path) -> tuple[dict, dict, dict]:
        state = json.loads((folder / "trainer_state.json").read_text())
        buffer_state = torch.load(folder / "buffer.pt", weights_only=False)
        extra = folder / "components.pt"
        components = torch.load(extra, weights_only=False) if extra.exists() else {}
        return state, buffer_state, components

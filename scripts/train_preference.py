"""Offline preference training: `python scripts/train_preference.py [loss=simpo ...]` (Hydra)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.entry import hydra_entry  # noqa: E402
from orchestrator.preference import run_preference  # noqa: E402

if __name__ == "__main__":
    hydra_entry("preference", run_preference)

"""The main job: `python scripts/train.py [group=option ...] [key=value ...]` (Hydra)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.entry import hydra_entry  # noqa: E402
from orchestrator.main import run  # noqa: E402

if __name__ == "__main__":
    hydra_entry("config", run)

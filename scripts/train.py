"""The main job: `python scripts/train.py [group=option ...] [key=value ...]` (Hydra)."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from orchestrator.config import ConfigError  # noqa: E402
from orchestrator.main import run  # noqa: E402


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        summary = run(cfg)
    except ConfigError as err:
        sys.exit(f"error: {err}")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

"""Write the tiny chat model (conf/model/tiny_chat.yaml) as a standalone Hugging Face folder.

    python scripts/make_tiny_chat_model.py OUT_DIR [--vocab-size 2048] [--seed 0]

The folder looks like a hub chat model's (config, weights, generation_config, a Qwen2 BPE
tokenizer with the ChatML template in tokenizer_config.json), so a test or a lab can point
`model.path=OUT_DIR` at it exactly as at a hub id, with nothing downloaded. Building again with
the same spec leaves the folder as it is. Prints one JSON line: path, vocab_size, seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tiny_chat_arch(vocab_size: int | None = None) -> dict:
    """model.tiny of `model=tiny_chat`, composed as a run would compose it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import orchestrator.schema  # noqa: F401  registers the config schema conf/ extends
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        arch = OmegaConf.to_container(compose("model/tiny_chat").model.tiny)
    if vocab_size is not None:
        arch["vocab_size"] = vocab_size
    return arch


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (model.path points here)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="exact vocabulary size (default: conf/model/tiny_chat.yaml)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)

    from core.models import build_tiny_policy

    start = time.perf_counter()
    arch = tiny_chat_arch(args.vocab_size)
    folder = build_tiny_policy(args.out_dir, arch, args.seed).resolve()
    print(json.dumps({"path": str(folder), "vocab_size": arch["vocab_size"],
                      "seconds": round(time.perf_counter() - start, 2)}))
    return folder


if __name__ == "__main__":
    main()

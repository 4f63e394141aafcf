"""Peak memory of one rollout and one learner step with a 151,936-token vocabulary (Qwen's).

    python scripts/bench_memory.py [--prompts 64 --responses 4 --new-tokens 512]
                                   [--learner-rows 16 --learner-tokens 1024] [--chunk 1024]

A narrow Qwen2 (hidden 64, 2 layers) with Qwen's vocabulary fits a CPU box, and its memory is
dominated by what scales with vocabulary x length: the per-step logits of the rollout and
the logits, log-softmax and entropy of the learner. Each phase runs in a fresh process
whose address space is capped at --limit-gib (a MemoryError there is reported as needing
more, instead of waking the kernel's OOM killer); the figure is that process's peak
resident memory (ru_maxrss), Python and torch included. Random weights rarely emit EOS, so
every response runs to --new-tokens. Last line: one JSON object with rollout_peak_gib and
learner_peak_gib (null where the phase ran out of memory).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VOCAB = 151_936
ARCH = dict(model_type="qwen2", hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=128, max_position_embeddings=4096,
            tie_word_embeddings=True)


def build_model(folder: Path) -> str:
    """The tiny policy's folder, with its output layer widened to VOCAB (the character
    tokenizer names the first ids; the rest decode to nothing, as unused hub ids do)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from core.tiny_tokenizers import build_char_tokenizer
    tok = build_char_tokenizer()
    fields = dict(ARCH)
    config = AutoConfig.for_model(fields.pop("model_type"), vocab_size=VOCAB,
                                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                  bos_token_id=tok.eos_token_id, **fields)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "rewardmill_tokenizer.json").write_text(json.dumps({"bench": "memory"}))
    return str(folder)


def rollout(model: str, args) -> dict:
    from actors.rollout import HFEngine
    from core.records import Prompt, SamplingParams
    engine = HFEngine(model, max_batch_prompts=args.prompts, threads=2)
    prompts = [Prompt(f"p{i}", f"{i}+{i}=", str(2 * i)) for i in range(args.prompts)]
    samples = engine.generate(prompts, SamplingParams(n=args.responses, temperature=1.0,
                                                      max_new_tokens=args.new_tokens, seed=0))
    return {"responses": len(samples),
            "tokens": sum(len(s.response_ids) for s in samples)}


def learner(model: str, args) -> dict:
    import random

    from core.records import Sample
    from learners.prepare import BatchRecipe, build_train_batch
    from learners.worker import LearnerSettings, LearnerWorker
    rng = random.Random(0)
    n, rows = args.learner_tokens, args.learner_rows
    samples = [Sample(prompt_id=str(i // 4), group_id=str(i // 4),
                      prompt_ids=[rng.randrange(3, 90) for _ in range(16)],
                      response_ids=[rng.randrange(3, VOCAB) for _ in range(n)],
                      behaviour_logprobs=[-10.0] * n, policy_version=0, reward=float(i % 2))
               for i in range(rows)]
    batch, _ = build_train_batch(samples, BatchRecipe(mini_batch_size=rows, max_new_tokens=n), 0)
    settings = dict(lr=1e-5, mini_batch_size=rows, micro_batch_size=rows, strategy="none",
                    threads=2)
    if "logit_chunk_tokens" in LearnerSettings.__dataclass_fields__:
        settings["logit_chunk_tokens"] = args.chunk
    worker = LearnerWorker(0, 1, model, settings, use_reference=False)
    worker.setup(*LearnerWorker.rendezvous_address())
    metrics = worker.train_step(batch)
    return {"rows": rows, "tokens_per_row": n, "loss": metrics.get("loss")}


def _child(phase: str, model: str, args, queue) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (args.limit_gib << 30, args.limit_gib << 30))
    start = time.perf_counter()
    try:
        result = {"ok": True, **(rollout if phase == "rollout" else learner)(model, args)}
    except (MemoryError, RuntimeError) as err:
        if "memory" not in str(err).lower() and not isinstance(err, MemoryError):
            raise
        result = {"ok": False, "error": f"{type(err).__name__}: {str(err)[:120]}"}
    result["wall_s"] = time.perf_counter() - start
    result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    queue.put(result)


def measure(phase: str, model: str, args) -> dict:
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_child, args=(phase, model, args, queue))
    proc.start()
    proc.join()
    return queue.get() if not queue.empty() else {"ok": False, "error": f"exit {proc.exitcode}"}


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--responses", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--learner-rows", type=int, default=16)
    parser.add_argument("--learner-tokens", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=1024, help="learner.logit_chunk_tokens")
    parser.add_argument("--limit-gib", type=int, default=20, help="address-space cap per phase")
    parser.add_argument("--only", choices=["rollout", "learner"])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "narrow-qwen-vocab")
        results = {phase: measure(phase, model, args) for phase in ("rollout", "learner")
                   if args.only in (None, phase)}
    print(f"vocabulary {VOCAB}, narrow Qwen2 (hidden {ARCH['hidden_size']}, "
          f"{ARCH['num_hidden_layers']} layers), address space capped at {args.limit_gib} GiB")
    for phase, what in (("rollout", f"{args.prompts} prompts x {args.responses} responses x "
                                    f"{args.new_tokens} new tokens"),
                        ("learner", f"one train step, {args.learner_rows} rows x "
                                    f"{args.learner_tokens} response tokens, chunk {args.chunk}")):
        if phase in results:
            r = results[phase]
            peak = f"{r['peak_gib']:.2f} GiB peak" if r["ok"] else f"out of memory ({r['error']})"
            print(f"  {phase:8s} {peak}, {r.get('wall_s', 0):.0f} s  ({what})")
    figures = {f"{phase}_peak_gib": (r["peak_gib"] if r["ok"] else None) for phase, r in results.items()}
    figures.update(vocab=VOCAB, prompts=args.prompts, responses=args.responses,
                   new_tokens=args.new_tokens, learner_rows=args.learner_rows,
                   learner_tokens=args.learner_tokens, chunk=args.chunk, phases=results)
    print(json.dumps(figures), flush=True)
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])

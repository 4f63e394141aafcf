"""TRL's GRPOTrainer on the main job's task, model and batch: its samples/s beside ours.

TRL is no dependency of rewardmill: run this with the python of a scratch venv that has it.

    python3 -m venv /tmp/trlenv
    /tmp/trlenv/bin/pip install torch==2.13.0 trl==1.16.0 transformers==5.19.0 tokenizers==0.23.3
    /tmp/trlenv/bin/python scripts/bench_trl.py [--steps 6] [--model PATH] [key=value ...]

(Pin torch: an unpinned one pulls a multi-GB CUDA build. transformers/tokenizers are pinned to
the project's versions so both loops run the same model code.) No `pip install -e .` is needed:
the script puts the repo on sys.path and imports only modules that need nothing beyond
torch/transformers (core/models.py, core/records.py, the verifier: rewards/toy.py for the toy
task; a verifier with more dependencies, e.g. math-verify, needs them in the venv too).

What "the main job's setup" is comes from the project itself, not from this file: the script
asks the project's python (--project-python, default .venv/bin/python of this repo) to compose
the main job's config (conf/config.yaml plus the key=value Hydra overrides given here, as
bench_pipeline.py does) and to print a spec: the prompts the main job's scheduler would draw
for each step (PromptStream over the rendered train prompts), the verifier of data.verifier.fn,
and the rollout / learner / algorithm settings. That process also finds the main job's SFT
warm start (orchestrator/warm_start.py warm_start_folder, under cache_dir: .cache/rewardmill of
the repo) and, when it is missing, builds it by running the main job with steps=0
in-process (cluster=inline), a one-off of a few minutes on a 2-core box; the cache key
ignores the cluster mode, so later main jobs reuse it). --model PATH uses that HF folder
instead (it must load with core.models.load_tokenizer, e.g. a char-tokenizer tiny model).

How the main job's batch maps onto GRPOConfig (TRL 1.16; per_device_train_batch_size and
generation_batch_size count completions, not prompts):
    num_generations             = rollout.responses_per_prompt           (G = 8)
    generation_batch_size       = data.prompts_per_step * G              (64 x 8 = 512 per RL step)
    per_device_train_batch_size = learner.micro_batch_size               (128 rows per fwd/bwd)
    gradient_accumulation_steps = learner.mini_batch_size / micro        (512 / 128 = 4)
 => steps_per_generation = 512 / 128 = 4 = gradient_accumulation_steps: one generation per
    optimizer step, i.e. one TRL global step = one RL step (64 prompts x 8 completions, ONE
    optimizer step). A mini batch smaller than the rollout batch gives several optimizer steps
    per RL step here as in the main job, and then TRL also recomputes the old log-probs.
    max_completion_length = rollout.max_new_tokens, temperature/top_p/top_k = rollout's,
    learning_rate = learner.lr (constant schedule), beta = algorithm.kl_coef (0: no reference
    model), epsilon/epsilon_high = clip_low/clip_high, num_iterations = learner.epochs,
    loss_type from algorithm.loss_aggregation, scale_rewards from norm_by_std,
    gradient_checkpointing = learner.gradient_checkpointing (TRL's default is True; ours False),
    fp32 weights, bf16 autocast when model.dtype=bfloat16 (TRL's bf16=True), torch_compile =
    learner.compile (the Trainer compiles the whole model; generation runs uncompiled), CPU, no
    vLLM, torch threads = learner.threads, no logging/saving,
    prompts in the main job's order (shuffle_dataset off).

Timing: an RL step is the wall time between two consecutive ends of TRL optimizer-step groups
(on_step_end), so it covers data loading, generation, reward, advantages and the update; the
first `--skip` steps (start-up, first calls) are left out. Phase shares: rollout =
generate (`_generate_single_turn`), reward = `_calculate_rewards`, score_other = the rest of
`_generate_and_score_completions` (tokenising, padding, advantages, any log-prob recompute),
train = the remainder. samples/s = completions / summed time of the measured steps (as in
bench_pipeline.py); the median step time is printed too, since on a shared 2-core box one busy
neighbour can stretch single steps several-fold (the work itself is the same from run to run:
the prompts and the sampling seed are fixed). Last line: one JSON object of the figures.

From another benchmark (rewardmill's python), side by side with bench_pipeline.py:
    out = subprocess.run(["/tmp/trlenv/bin/python", "scripts/bench_trl.py", "--project-python",
                          sys.executable, *overrides], capture_output=True, text=True, check=True)
    trl_figures = json.loads(out.stdout.strip().splitlines()[-1])

Caveats of the comparison: TRL generates with plain HF `generate` on the 512 prompt copies
(our rollout: `generate` with num_return_sequences=8 plus a logits processor that records the
behaviour log-probs); it records no sampler log-probs and, with one generation per optimizer
step, takes pi_old from the training forward itself (no separate log-prob pass); generation and
training run in one process, one after the other, with no weight sync; TRL also computes
per-token entropies in the training forward. Only the task's verifier is scored (the main
job's reward=toy also computes zero-weight oracle sources).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SPEC_MARK = "BENCH_TRL_SPEC "
# Hydra overrides of the spec process, as bench_pipeline.py sets them: no eval, no files.
QUIET = ["eval.num_prompts=0", "checkpoint.every=0", "logging.wandb_mode=disabled",
         "logging.plot=false", "logging.tensorboard=false", "logging.progress_bar=false"]
# algorithm.loss_aggregation -> TRL loss_type
LOSS_TYPES = {"seq-mean-token-mean": "grpo", "token-mean": "dapo",
              "seq-mean-token-sum-norm": "dr_grpo"}


# --- spec: runs in the project's environment --------------------------------------------------

def print_spec(overrides: list[str], steps: int, model: str | None) -> None:
    """Compose the main job's config and print what the TRL run needs as one JSON line."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from core.models import load_tokenizer
    from core.registry import lookup
    from orchestrator.main import base_model, run
    from orchestrator.paths import resolve_output_paths
    from orchestrator.warm_start import warm_start_folder
    from tasks.datasets import PromptStream
    from tasks.sources import load_prompts

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=QUIET + overrides)
    resolve_output_paths(cfg)
    if model is None:
        base = base_model(cfg)
        model = base
        if cfg.warm_start.steps:
            model = str(warm_start_folder(cfg, base))
            if not Path(model).exists():
                print(f"bench_trl: no warm start at {model}; building it with the main job "
                      "(steps=0, cluster=inline)", file=sys.stderr, flush=True)
                # In-process: the cache key ignores the cluster mode, and SFT needs no Ray.
                keep = [o for o in overrides if not o.lstrip("+~").startswith("cluster")]
                with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                    run(compose("config", overrides=QUIET + keep + [
                        "cluster=inline", "steps=0", "run_name=bench_trl_warm_start"]))
            if not Path(model).exists():
                raise SystemExit(f"bench_trl: the main job left no warm start at {model}")
    tokenizer = load_tokenizer(model)
    task = load_prompts(OmegaConf.to_container(cfg.data, resolve=True), cfg.seed, 0, tokenizer, 0)
    stream = PromptStream(task.train, cfg.seed, cfg.data.shuffle)
    prompts = [[{"text": p.text, "answer": p.answer} for p in stream.next(cfg.data.prompts_per_step)]
               for _ in range(steps)]
    verifier = lookup("reward", cfg.data.verifier.fn)
    r, l, a = cfg.rollout, cfg.learner, cfg.algorithm
    spec = {
        "model": str(model), "seed": cfg.seed, "prompts": prompts,
        "add_special_tokens": task.renderer.add_special_tokens,
        "verifier": f"{verifier.__module__}.{verifier.__qualname__}",
        "verifier_kwargs": OmegaConf.to_container(cfg.data.verifier.kwargs, resolve=True),
        "algorithm": a.name, "estimator": a.estimator, "loss": a.loss,
        "recompute_old_logprobs": a.recompute_old_logprobs,
        "loss_aggregation": a.loss_aggregation, "kl_coef": a.kl_coef,
        "norm_by_std": bool(OmegaConf.to_container(a.estimator_options).get("norm_by_std", True)),
        "clip_low": a.loss_options.get("clip_low", 0.2),
        "clip_high": a.loss_options.get("clip_high", 0.2),
        "responses_per_prompt": r.responses_per_prompt, "max_new_tokens": r.max_new_tokens,
        "temperature": r.temperature, "top_p": r.top_p, "top_k": r.top_k,
        "lr": l.lr, "weight_decay": l.weight_decay, "warmup_steps": l.warmup_steps,
        "max_grad_norm": l.max_grad_norm, "mini_batch_size": l.mini_batch_size,
        "micro_batch_size": l.micro_batch_size, "micro_batch_tokens": l.micro_batch_tokens,
        "epochs": l.epochs, "gradient_checkpointing": l.gradient_checkpointing,
        "threads": l.threads, "dtype": cfg.model.dtype, "compile": l.compile,
    }
    print(SPEC_MARK + json.dumps(spec), flush=True)


def fetch_spec(python: str, overrides: list[str], steps: int, model: str | None) -> dict:
    cmd = [python, str(Path(__file__).resolve()), "--print-spec", "--steps", str(steps),
           *(["--model", model] if model else []), *overrides]
    # cwd = the repo: relative cache_dir resolves there, as for the main job launched from it.
    out = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True).stdout
    lines = [x for x in out.splitlines() if x.startswith(SPEC_MARK)]
    if not lines:
        raise SystemExit(f"bench_trl: {python} printed no spec:\n{out[-2000:]}")
    return json.loads(lines[-1][len(SPEC_MARK):])


# --- the TRL run: runs in the scratch venv ----------------------------------------------------

def import_dotted(path: str):
    import importlib
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def bench(spec: dict, steps: int, skip: int, threads: int | None) -> dict:
    import torch
    threads = threads if threads is not None else spec["threads"]
    if threads:
        torch.set_num_threads(threads)
    import tempfile

    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from core.models import load_tokenizer
    from core.records import Sample

    if spec["micro_batch_tokens"]:
        print("bench_trl: learner.micro_batch_tokens is set; TRL packs by rows, using "
              f"micro_batch_size={spec['micro_batch_size']}", flush=True)
    if spec["loss_aggregation"] not in LOSS_TYPES:
        print(f"bench_trl: no TRL loss for loss_aggregation={spec['loss_aggregation']}; "
              "using grpo (sequence-mean)", flush=True)
    if not spec["add_special_tokens"]:
        print("bench_trl: the prompts are chat-rendered; TRL tokenises plain-text prompts with "
              "special tokens added", flush=True)

    G, P = spec["responses_per_prompt"], len(spec["prompts"][0])
    rollout_batch, micro, mini = P * G, spec["micro_batch_size"], spec["mini_batch_size"]
    if rollout_batch % mini or mini % micro:
        raise SystemExit(f"bench_trl: mini batch {mini} must divide the rollout batch "
                         f"{rollout_batch} and be a multiple of the micro batch {micro}")
    updates_per_step = rollout_batch // mini * spec["epochs"]   # optimizer steps per RL step

    verifier, kwargs = import_dotted(spec["verifier"]), spec["verifier_kwargs"]
    rewards_seen: list[float] = []
    tokens: dict[int, int] = {}
    trainer_ref: list = []

    def reward(prompts, completions, completion_ids, answer, **_):
        """rewardmill's verifier (rewards/toy.py toy_exact by default) in TRL's signature."""
        out = [float(verifier(Sample(prompt_id="", group_id="", prompt_ids=[], response_ids=ids,
                                     behaviour_logprobs=[], policy_version=0, prompt_text=p,
                                     response_text=c, answer=a), **kwargs))
               for p, c, ids, a in zip(prompts, completions, completion_ids, answer)]
        rewards_seen.extend(out)
        step = trainer_ref[0].state.global_step // updates_per_step
        tokens[step] = tokens.get(step, 0) + sum(len(ids) for ids in completion_ids)
        return out
    reward.__name__ = spec["verifier"].rsplit(".", 1)[1]

    rows = [p for step in spec["prompts"] for p in step]
    dataset = Dataset.from_dict({"prompt": [p["text"] for p in rows],
                                 "answer": [p["answer"] for p in rows]})
    tokenizer = load_tokenizer(spec["model"])
    # model.dtype=bfloat16: TRL's mixed precision (bf16=True: fp32 weights, autocast), as ours
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    scheduler = "constant_with_warmup" if spec["warmup_steps"] else "constant"
    out_dir = tempfile.mkdtemp(prefix="bench_trl_")
    args = GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=spec["dtype"] == "bfloat16", fp16=False, seed=spec["seed"],
        report_to="none", logging_strategy="no", save_strategy="no", disable_tqdm=True,
        max_steps=steps * updates_per_step, shuffle_dataset=False, dataloader_num_workers=0,
        num_generations=G, generation_batch_size=rollout_batch,
        per_device_train_batch_size=micro, gradient_accumulation_steps=mini // micro,
        num_iterations=spec["epochs"], max_completion_length=spec["max_new_tokens"],
        temperature=spec["temperature"], top_p=spec["top_p"], top_k=spec["top_k"],
        learning_rate=spec["lr"], lr_scheduler_type=scheduler, warmup_steps=spec["warmup_steps"],
        weight_decay=spec["weight_decay"], max_grad_norm=spec["max_grad_norm"],
        beta=spec["kl_coef"], epsilon=spec["clip_low"], epsilon_high=spec["clip_high"],
        loss_type=LOSS_TYPES.get(spec["loss_aggregation"], "grpo"),
        scale_rewards="group" if spec["norm_by_std"] else "none",
        gradient_checkpointing=spec["gradient_checkpointing"], use_vllm=False,
        torch_compile=spec["compile"],
    )
    assert args.steps_per_generation * args.per_device_train_batch_size == rollout_batch

    ends: list[tuple[int, float]] = []
    phases: dict[str, dict[int, float]] = {"rollout": {}, "reward": {}, "score": {}}

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            ends.append((0, time.perf_counter()))

        def on_step_end(self, args, state, control, **kw):
            if state.global_step % updates_per_step == 0:
                ends.append((state.global_step // updates_per_step, time.perf_counter()))

    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[StepClock()])
    trainer_ref.append(trainer)

    generated_rows: list[int] = []     # completions per generate call

    def counted(fn):
        def wrapper(prompt_ids, *a, **k):
            generated_rows.append(len(prompt_ids))
            return fn(prompt_ids, *a, **k)
        return wrapper

    def timed(name: str, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                step = trainer.state.global_step // updates_per_step
                phases[name][step] = phases[name].get(step, 0.0) + time.perf_counter() - start
        return wrapper
    trainer._generate_single_turn = timed("rollout", counted(trainer._generate_single_turn))
    trainer._calculate_rewards = timed("reward", trainer._calculate_rewards)
    trainer._generate_and_score_completions = timed("score", trainer._generate_and_score_completions)

    if threads:
        torch.set_num_threads(threads)   # in case anything on the way reset it
    print(f"bench_trl: TRL {trl.__version__}, transformers {transformers.__version__}, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads); model {spec['model']}",
          flush=True)
    print(f"bench_trl: {steps} RL steps of {P} prompts x {G} = {rollout_batch} completions, "
          f"{updates_per_step} optimizer step(s) each (micro {micro} x accumulation "
          f"{mini // micro}), max {spec['max_new_tokens']} new tokens, T={spec['temperature']}, "
          f"lr {spec['lr']}, beta {spec['kl_coef']}, loss_type {args.loss_type}", flush=True)
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)   # save_strategy "no": nothing to keep
    if trainer.state.global_step != steps * updates_per_step or generated_rows != [rollout_batch] * steps:
        raise SystemExit(f"bench_trl: expected {steps * updates_per_step} optimizer steps and "
                         f"{steps} generate calls of {rollout_batch}, got "
                         f"{trainer.state.global_step} and {generated_rows}")

    times = {k: ends[i][1] - ends[i - 1][1] for i, (k, _) in enumerate(ends) if i}
    measured = [k for k in sorted(times) if k > skip]     # RL steps are 1-based here
    if not measured:
        raise SystemExit(f"bench_trl: no step left to measure ({steps} steps, skip {skip})")
    total = sum(times[k] for k in measured)
    share = {}
    for name in phases:   # phases are keyed by 0-based step: step k+1 ran while global = k
        share[name] = sum(phases[name].get(k - 1, 0.0) for k in measured) / total
    share = {"rollout": share["rollout"], "reward": share["reward"],
             "score_other": share["score"] - share["rollout"] - share["reward"],
             "train": 1.0 - share["score"]}
    figures = {
        "trl_version": trl.__version__, "transformers_version": transformers.__version__,
        "torch_version": torch.__version__, "threads": torch.get_num_threads(),
        "steps_measured": len(measured),
        "samples_per_s": rollout_batch * len(measured) / total,
        "tokens_per_s": sum(tokens.get(k - 1, 0) for k in measured) / total,
        "step_time_s": total / len(measured),
        "step_time_median_s": statistics.median(times[k] for k in measured),
        "step_times_s": [round(times[k], 3) for k in measured],
        "skipped_step_times_s": [round(times[k], 3) for k in sorted(times) if k <= skip],
        "phase_share": {k: round(v, 4) for k, v in share.items()},
        "reward_mean": sum(rewards_seen) / max(len(rewards_seen), 1),
        "prompts_per_step": P, "responses_per_prompt": G,
        "optimizer_steps_per_rl_step": updates_per_step,
        "optimizer_steps": trainer.state.global_step, "generate_calls": len(generated_rows),
        "load_avg_before": load_before, "load_avg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(f"\nTRL GRPOTrainer, {len(measured)} steps measured (first {skip} skipped):")
    print(f"  samples/s                {figures['samples_per_s']:.1f}")
    print(f"  generated tokens/s       {figures['tokens_per_s']:.0f}")
    print(f"  step time (s)            {figures['step_time_s']:.3f}"
          f"  (median {figures['step_time_median_s']:.3f})")
    for name, v in share.items():
        print(f"  phase {name:<18} {100 * v:5.1f}%")
    print(f"  reward mean (all steps)  {figures['reward_mean']:.3f}")
    print(f"  step times (s)           {figures['step_times_s']}")
    print(f"  load average 1/5/15 min  before {load_before}, after {figures['load_avg_after']}")
    print(json.dumps(figures), flush=True)
    return figures


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="RL steps to run (default 6)")
    ap.add_argument("--skip", type=int, default=1, help="warm-up steps left out (default 1)")
    ap.add_argument("--model", help="HF policy folder (default: the main job's SFT warm start)")
    ap.add_argument("--threads", type=int, help="torch threads (default: learner.threads)")
    default_python = REPO / ".venv" / "bin" / "python"
    ap.add_argument("--project-python", default=str(default_python) if default_python.exists()
                    else "python3", help="python with rewardmill's dependencies (default: the "
                    "repo's .venv); it composes the config and prints the spec")
    ap.add_argument("--print-spec", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the main job's config")
    a = ap.parse_args(argv)
    if a.print_spec:
        print_spec(a.overrides, a.steps, a.model)
        return
    model = str(Path(a.model).resolve()) if a.model else None   # the spec runs in the repo
    spec = fetch_spec(a.project_python, a.overrides, a.steps, model)
    bench(spec, a.steps, a.skip, a.threads)


if __name__ == "__main__":
    main(sys.argv[1:])

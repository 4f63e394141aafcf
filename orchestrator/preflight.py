"""Before any model is trained: do the reward sources apply to this data at all?

A source written for another task fails on every sample (the toy step checker on a GSM8K
question raises `int('Find x…')`); with `exclude_flagged_from_loss` such a run would train on
no token while looking busy. So the cheap rule sources score a few of the task's own reference
solutions (its answers when it has none) in this process, and the run refuses to start when a
source the training signal reads flags all of them (one that only informs gets a warning). Sources that need a model, a judge server or the policy are left to
the first step's check in the scheduler (`require_trainable`).
"""
from __future__ import annotations

import logging

from omegaconf import OmegaConf

from actors.reward import RewardWorker
from core.records import Sample
from core.registry import lookup
from orchestrator.config import ConfigError
from orchestrator.judge_server import sources_using_judge
from orchestrator.scheduler import masking_sources

log = logging.getLogger("rewardmill")

PROBES = 8   # reference solutions scored


def probe_samples(task, count: int = PROBES) -> tuple[list[Sample], bool]:
    """Samples whose responses are reference solutions (True), else the reference answers."""
    prompts = [task.sft[i] for i in range(count)] if task.sft.__len__() != 0 else []
    solved = bool(prompts)
    if not solved:
        size = task.train.__len__()
        prompts = [task.train[i] for i in range(count if size is None else min(count, size))]
    return [Sample(prompt_id=p.prompt_id, group_id="preflight", prompt_ids=[], response_ids=[],
                   behaviour_logprobs=[], policy_version=0, prompt_text=p.text,
                   response_text=str(p.metadata["solution"] if solved else p.answer),
                   answer=p.answer, metadata=dict(p.metadata))
            for p in prompts], solved


def probed(source: dict, judged: list[str]) -> bool:
    """Plain rule functions on the reward worker: no model to load, no server, no policy."""
    if source.get("runs_on", "reward") != "reward" or source.get("granularity") == "step":
        return False
    if source["name"] in judged:   # its judge is served later (judge.url is still null here)
        return False
    if any(isinstance(v, str) and v.startswith("http") for v in (source.get("kwargs") or {}).values()):
        return False
    return not isinstance(lookup("reward", source["fn"]), type)


def preflight(cfg, task) -> None:
    sources = OmegaConf.to_container(cfg.reward.sources, resolve=True)
    judged = sources_using_judge(cfg)
    chosen = [(i, s) for i, s in enumerate(sources) if probed(s, judged)]
    # a source reading another's score (kwargs naming it) is probed only with that one
    names = {s["name"] for s in sources}
    while True:
        kept = {s["name"] for _, s in chosen}
        narrowed = [(i, s) for i, s in chosen
                    if all(v in kept for v in (s.get("kwargs") or {}).values()
                           if isinstance(v, str) and v in names)]
        if len(narrowed) == len(chosen):
            break
        chosen = narrowed
    if not chosen:
        return
    samples, solved = probe_samples(task)
    worker = RewardWorker([{**s, "gate": None} for _, s in chosen], threads_per_source=2)
    worker.score(samples, learn=False)
    counted = set(masking_sources(cfg))
    for i, s in chosen:
        flagged = [x.flags[s["name"]] for x in samples if s["name"] in x.flags]
        if len(flagged) < len(samples):
            continue
        what = (f"reward.sources[{i}] ({s['name']}: fn {s['fn']}) fails on every "
                f"{'reference solution' if solved else 'reference answer'} of data.source="
                f"{cfg.data.source} (first: {flagged[0]})")
        if s["name"] not in counted:   # informs only: its flags mask nothing, so say it loudly
            log.warning("preflight: %s; it informs only (weight 0, read by nothing), so the run "
                        "goes on", what)
            continue
        raise ConfigError(
            f"config {what}; it does not apply to this data. Fix: use the task's own check "
            "(reward=verifier, data.verifier) or a source written for this data, or drop it")
    accuracy = cfg.eval.accuracy_source
    if solved and any(s["name"] == accuracy for _, s in chosen):
        mean = sum(x.rewards[accuracy] for x in samples) / len(samples)
        level = logging.INFO if mean == 1.0 else logging.WARNING
        log.log(level, "preflight: %s scores %.2f on %d reference solutions%s", accuracy, mean,
                len(samples), "" if mean == 1.0 else " (expected 1.00: check data.answer_format "
                "and data.verifier against the data's answers)")
